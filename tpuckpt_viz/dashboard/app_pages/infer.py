"""Infer: run test inputs through a SavedModel, or a checkpoint restored into the server's
model builder, on TPU, GPU or CPU; compare two steps of a run on the same inputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import streamlit as st

from tpuckpt_viz import config
from tpuckpt_viz.dashboard import charts, inferdata
from tpuckpt_viz.dashboard.access import check_path
from tpuckpt_viz.checkpoint.paths import resolve_checkpoint
from tpuckpt_viz.dashboard.app_pages.common import (
    is_allowed,
    pick_path,
    pick_step,
    run_steps_of,
    set_current,
    show_error,
    step_label,
    sync_url,
)
from tpuckpt_viz.errors import UserError
from tpuckpt_viz.inference import api as inf

SMALL_OUTPUT = 200  # outputs with at most this many values also show as a table
FILL_LABELS = {"random normal": "random", "zeros": "zeros", "ones": "ones"}
JSON, UPLOAD, FORM, GENERATED_EXAMPLES = ("JSON", "upload .npy/.npz/.csv", "tf.Example form",
                                          "generated tf.Examples")

st.title("Quick test inference")
path = pick_path("SavedModel folder, checkpoint or training run", "infer_path")
sync_url(ckpt=path, a=None, b=None, run=None, tensor=None)


def _source():
    """(kind, path to run, run or []) for the typed path, resolved exactly as Browse does and
    checked against the allowed roots."""
    checked = check_path(path)
    source = inf.resolve_source(checked)
    if source.kind == "saved_model":
        return source.kind, check_path(source.path), []
    prefix = resolve_checkpoint(checked if source.path == path else check_path(source.path)).prefix
    return source.kind, check_path(prefix), run_steps_of(path)


inf.warm_up()  # TensorFlow's worker process starts now, so that Run does not wait for it

try:
    kind, target, members = _source()
except Exception as exc:  # never a traceback in the page
    show_error(exc)
    st.stop()

left, right = st.columns(2)
device = left.radio("Device", ["auto", "cpu", "gpu", "tpu"], horizontal=True, key="infer_device",
                    help="auto tries a TPU, then a GPU, then the CPU, and says why it skipped one")
batch = int(right.number_input("Batch size of generated inputs", 1, 4096, 4, key="infer_batch",
                               help="Replaces the unknown (-1) dimensions of generated inputs"))
tags = signature = None
features: dict[str, str] = {}
if kind == "saved_model":
    st.caption(f"SavedModel `{target}` — SavedModels run on GPU or CPU, not on TPU (serving "
               "graphs that parse tf.Example strings do not run there).")
    try:
        meta_graphs = inf.describe_saved_model(target)
        st.dataframe(inferdata.signatures_table(meta_graphs), hide_index=True, width="stretch",
                     key="infer_signatures")
        try:
            default_mg, default_sig = inf.pick(meta_graphs)
        except UserError:
            default_mg, default_sig = meta_graphs[0], None
        c1, c2 = st.columns(2)
        tag_names = [inf.fmt_tags(m.tags) for m in meta_graphs]
        tag_name = c1.selectbox("Tag set", tag_names, key="infer_tags",
                                index=tag_names.index(inf.fmt_tags(default_mg.tags)))
        mg = meta_graphs[tag_names.index(tag_name)]
        names = [s.name for s in mg.signatures]
        if not names:
            raise UserError(f"tag set {tag_name} has no signature to run: pick another tag set")
        default = default_sig.name if default_sig is not None and default_sig.name in names \
            else names[0]
        signature = c2.selectbox("Signature", names, index=names.index(default),
                                 key=f"infer_signature_{tag_name}")
        tags, sig = mg.tags, mg.signature(signature)
        st.dataframe(pd.concat([inferdata.tensors_table(sig.inputs, "input"),
                                inferdata.tensors_table(sig.outputs, "output")]),
                     hide_index=True, width="stretch", key="infer_tensors")
        specs = sig.inputs
        if any(t.dtype == "string" for t in specs):
            features = inf.example_features(target, tags, signature)
    except Exception as exc:
        show_error(exc)
        st.stop()
else:
    builder = inf.builder_spec()
    st.caption(f"Checkpoint restored into the model builder `{builder}` (chosen by whoever "
               "started the server: `serve --model` or TPUCKPT_MODEL).")
    if len(members) > 1:
        target = check_path(pick_step(path, "infer_step"))
    try:
        specs = inf.model_specs(target, None, device)
    except Exception as exc:
        # Stop here: a Run button could only fail the same way again.
        show_error(exc)
        exports = inferdata.saved_model_exports(os.path.dirname(target))
        allowed = [e for e in exports if is_allowed(e)]
        if allowed:
            st.info("This run folder also holds a SavedModel export, which runs without a "
                    "model builder: open it instead.")
            for i, export in enumerate(allowed[:5]):
                st.button(f"Open the SavedModel {export}", key=f"infer_export_{i}",
                          on_click=set_current, args=(export,))
        else:
            st.info("To run this checkpoint, start the server with the builder that made it: "
                    "`serve --model package.module:function` (or TPUCKPT_MODEL), or open a "
                    "SavedModel export of the model.")
        st.stop()
    specs = specs or [inf.TensorInfo("input", "", "float32", None)]
scope = signature or "model"

st.subheader("Inputs")


def _input_widget(t: inf.TensorInfo):
    """(mode, value or None): the widgets for one input. None means: generated by the core."""
    examples = t.dtype == "string" and bool(features)
    modes = ([GENERATED_EXAMPLES, FORM, JSON, UPLOAD] if examples else
             ["empty strings", JSON, UPLOAD] if t.dtype == "string" else
             [*FILL_LABELS, JSON, UPLOAD])
    c1, c2 = st.columns([1, 3])
    mode = c1.selectbox(f"`{t.name}`: {t.dtype} {inf.fmt_shape(t.shape)}", modes,
                        key=f"infer_mode_{scope}_{t.name}")
    if mode == JSON:
        example = ('{"' + '": [1], "'.join(features) + '": [1]}') if examples \
            else inf.json_template(t)
        text = c2.text_area("JSON", example, key=f"infer_json_{scope}_{t.name}", height=80,
                            help="A JSON list (strings for string inputs; for tf.Example "
                                 "inputs an object feature -> values, one per example)")
        return mode, ("json", text)
    if mode == UPLOAD:
        upload = c2.file_uploader(f"File ({config.get_int('upload_mb')} MB at most)",
                                  type=["npy", "npz", "csv"], key=f"infer_file_{scope}_{t.name}")
        return mode, ("file", upload)
    if mode == FORM:
        cols = c2.columns(3)
        form = {}
        for i, (name, dtype) in enumerate(features.items()):
            form[name] = (dtype, cols[i % 3].text_input(
                f"{name} ({dtype})", "a" if dtype == "string" else "1",
                key=f"infer_feature_{scope}_{t.name}_{name}",
                help="Comma-separated values, one per example; empty leaves it out"))
        return mode, ("form", form)
    return mode, None


def _value(t: inf.TensorInfo, given):
    """The value to pass to the core for one input (text is parsed here, never read as a path)."""
    what, value = given
    if what == "json":
        return inf.parse_input_value(value, t.dtype, t.shape, name=t.name, files=False,
                                     example_spec=features)
    if what == "file":
        if value is None:
            raise UserError(f"input {t.name!r}: upload a .npy, .npz or .csv file, or pick "
                            "another mode")
        if value.size > config.get_int("upload_mb") << 20:
            raise UserError(f"input {t.name!r}: {value.name} is larger than "
                            f"{config.get_int('upload_mb')} MB (TPUCKPT_UPLOAD_MB)")
        return inf.read_array_bytes(value.getvalue(), value.name, t.name, t.dtype)
    columns = {name: inf.parse_feature_text(text, dtype, name)
               for name, (dtype, text) in value.items()}
    return {k: v for k, v in columns.items() if v is not None}


widgets = {t.name: _input_widget(t) for t in specs}
fill = {name: FILL_LABELS.get(mode, "random") for name, (mode, _) in widgets.items()}


def _inputs() -> dict:
    return {t.name: _value(t, widgets[t.name][1]) for t in specs
            if widgets[t.name][1] is not None}


state_key = (kind, target, tags, signature, device)
if st.button("Run", key="infer_run", type="primary"):
    try:
        with st.spinner("Loading the model and running it..."):
            result = inf.run_inference(target, tags=tags, signature=signature, inputs=_inputs(),
                                       device=device, batch=batch, fill=fill, files=False)
        st.session_state["infer_result"] = (state_key, result)
    except Exception as exc:
        st.session_state.pop("infer_result", None)
        show_error(exc)

saved = st.session_state.get("infer_result")
if saved is not None and saved[0] == state_key:
    result = saved[1]
    c1, c2, c3 = st.columns(3)
    c1.metric("Device", result.device)
    c2.metric("Latency (ms)", f"{result.latency_ms:.2f}",
              help=f"Median of {result.runs - 1} runs after a warm-up" if result.runs > 1
              else "One run (the signature changes state), tracing included")
    if result.restore:
        c3.metric("Restore", result.restore["status"])
    else:
        c3.metric("Signature", result.signature, help=f"Tag set {inf.fmt_tags(result.tags)}")
    for reason in result.device_reasons:
        st.caption(f"Skipped — {reason}")
    if result.restore:
        r = result.restore
        st.caption(f"Restore: {r['matched']} variables matched, "
                   f"{len(r['unmatched_model'])} model variables got no value, "
                   f"{len(r['unused_checkpoint'])} checkpoint values unused "
                   "(optimizer slots are expected there).")
        for label, names in (("Model variables without a value", r["unmatched_model"]),
                             ("Checkpoint values left unused", r["unused_checkpoint"])):
            if names:
                with st.expander(f"{label} ({len(names)})"):
                    st.dataframe(pd.DataFrame({"name": names}), hide_index=True,
                                 width="stretch", key=f"infer_restore_{label}")
    st.subheader("Outputs")
    st.dataframe(inferdata.summary_table(result.outputs), hide_index=True, width="stretch",
                 key="infer_summary", column_config={
                     c: st.column_config.NumberColumn(format="%.4g")
                     for c in ("min", "max", "mean", "std")})
    for name, value in result.outputs.items():
        value = np.asarray(value)
        st.markdown(f"**{name}** — {value.dtype} {list(value.shape)}")
        if value.size <= SMALL_OUTPUT:  # small: every value, as a table
            left, right = st.columns([2, 3])
            left.dataframe(inferdata.output_table(value), width="stretch",
                           key=f"infer_out_{name}")
        else:
            left, right = st.columns([1, 4])
            left.caption(f"{value.size:,} values: statistics above, every value in the "
                         "downloads below.")
        n = inferdata.examples_of(value)
        example = value
        if value.ndim >= 2 and value.size == n:  # one number per example: chart the batch
            value = example = value.reshape(-1)
        elif value.ndim >= 2:
            i = int(left.number_input("Example", 0, max(n - 1, 0), 0, key=f"infer_ex_{name}",
                                      help="Which example of the batch the chart shows")) \
                if n > 1 else 0
            example = value[i] if value.ndim >= 2 else value
        figure = charts.example_chart(name if example is value else f"{name}, example {i}",
                                      example)
        if figure is not None and example is value and value.ndim == 1:
            figure.update_xaxes(title="example")
        if figure is not None:
            right.plotly_chart(figure, width="stretch", key=f"infer_chart_{name}")
    with st.expander("Inputs that ran"):
        st.dataframe(inferdata.summary_table(result.inputs), hide_index=True, width="stretch",
                     key="infer_inputs_summary")
        for name, value in result.inputs.items():
            if np.asarray(value).size <= SMALL_OUTPUT:
                st.markdown(f"**{name}** — {value.dtype} {list(value.shape)}")
                st.dataframe(inferdata.output_table(value), width="stretch",
                             key=f"infer_in_{name}")
    d1, d2, d3 = st.columns(3)
    d1.download_button("Download JSON", json.dumps(inf.result_to_json(result), indent=1),
                       file_name="inference.json", mime="application/json",
                       key="infer_json_download")
    d2.download_button("Download outputs (.npz)", inferdata.npz_bytes(result.outputs),
                       file_name="outputs.npz", mime="application/octet-stream",
                       key="infer_npz_download")
    d3.download_button("Download inputs (.npz)", inferdata.npz_bytes(result.inputs),
                       file_name="inputs.npz", mime="application/octet-stream",
                       key="infer_inputs_download")

if kind == "checkpoint" and len(members) > 1:
    st.subheader("Compare with another step")
    labels = {d["checkpoint"]: step_label(d) for d in members}
    others = [d["checkpoint"] for d in members if d["checkpoint"] != target]
    current_index = [d["checkpoint"] for d in members].index(target) \
        if target in labels else len(members) - 1
    other = st.selectbox("Second checkpoint", others, key="infer_other",
                         format_func=labels.get,
                         index=max(0, current_index - 1) if current_index > 0 else 0)
    pair_key = (state_key, other)
    if st.button("Run both on the same inputs", key="infer_compare"):
        try:
            with st.spinner("Running both checkpoints..."):
                a, b, diffs = inf.run_pair(target, other, inputs=_inputs(), device=device,
                                           batch=batch, fill=fill, files=False)
            st.session_state["infer_pair"] = (pair_key, diffs)
        except Exception as exc:
            st.session_state.pop("infer_pair", None)
            show_error(exc)
    pair = st.session_state.get("infer_pair")
    if pair is not None and pair[0] == pair_key:
        st.dataframe(pd.DataFrame([{"output": k, **v} for k, v in pair[1].items()]),
                     hide_index=True, width="stretch", key="infer_diff")
        st.caption(f"Absolute difference {labels.get(other, other)} − "
                   f"{labels.get(target, target)} per output.")
