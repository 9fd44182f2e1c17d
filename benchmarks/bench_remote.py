#!/usr/bin/env python3
"""Remote figures (``bench.py --remote``): ``gs://`` reads against a GCS emulator behind a
loopback proxy that adds 30 ms to every request (tests/gcsemu.py). Prints one JSON object.

- ``stats_vs_tf``: wall time of ``stats`` (the CLI's work, TensorFlow already imported) on a
  ``gs://`` checkpoint of ~1 GiB (500 float32 tensors) against a TensorFlow ``get_tensor``
  loop on the same ``gs://`` path (TensorFlow's GCS filesystem, reaching the emulator through
  the proxy's TLS tunnel). Target <= 0.5.
- ``fetched_over_needed``: per command (``list``, ``stats``, ``diff``, ``steps``), the bytes
  the proxy served over the bytes the work needs (the ``.index`` files, plus every tensor's
  bytes for stats, diff and steps), with the request count and wall time: ``list`` of the
  500-tensor checkpoint, the others on a run of two ~64 MiB checkpoints of 100 tensors
  (``--quick``: 4 MiB, 16 tensors). Target <= 1.2.
- ``--before DIR``: the same per-command figures for the code in DIR (a checkout of an older
  commit, e.g. ``git worktree add DIR fecf3a2``), read through ``tf.io.gfile``.

Each measurement runs in a fresh child process; the proxy counts the bytes of every response
body (listings and metadata included) and every request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = {"full": {"tensors": 500, "bytes": 1 << 30, "run_tensors": 100, "run_bytes": 64 << 20},
         "quick": {"tensors": 16, "bytes": 4 << 20, "run_tensors": 16, "run_bytes": 4 << 20}}

_CHILD = r"""
import contextlib, io, json, sys, time
from tpuckpt_viz.tfcompat import tf
tf()
kind, *paths = sys.argv[1:]
start = time.perf_counter()
rc = 0
if kind == "tf":
    reader = tf().train.load_checkpoint(paths[0])
    for key in reader.get_variable_to_shape_map():
        reader.get_tensor(key)
else:
    from tpuckpt_viz.cli import commands
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = commands.main([kind, *paths, "--format", "json"])
    if rc:
        print(err.getvalue(), file=sys.stderr)
print(json.dumps({"seconds": time.perf_counter() - start, "rc": rc}))
"""


def _make(folder: str, size: dict) -> dict:
    """Write the inputs (run in a child: the memory used to write them is given back)."""
    sys.path.insert(0, str(HERE))
    import bench

    tf = bench._quiet_tf()
    paths = {"big": f"{folder}/big/ckpt", "a": f"{folder}/run/ckpt-1", "b": f"{folder}/run/ckpt-2"}
    for p in paths.values():
        os.makedirs(os.path.dirname(p), exist_ok=True)
    bench._dense(tf, paths["big"], size["tensors"], size["bytes"], "float32", 1)
    bench._dense(tf, paths["a"], size["run_tensors"], size["run_bytes"], "float32", 2,
                 twin=paths["b"])
    return paths


def _needed(prefixes: list[str], tensors: bool) -> int:
    """Bytes the work needs: the .index files, plus every tensor's bytes."""
    sys.path.insert(0, str(ROOT))
    from tpuckpt_viz.checkpoint.reader import open_checkpoint

    total = 0
    for prefix in prefixes:
        total += os.path.getsize(prefix + ".index")
        if tensors:
            total += sum(e.nbytes for e in open_checkpoint(prefix).entries.values())
    return total


def _measure(bed, env: dict, code_root: Path, kind: str, *paths: str) -> dict:
    bed.fs().invalidate_cache()
    bed.proxy.reset()
    child_env = dict(os.environ, **env, PYTHONPATH=str(code_root), TF_CPP_MIN_LOG_LEVEL="3",
                     PYTHONDONTWRITEBYTECODE="1")
    if kind == "tf":  # the baseline runs with TensorFlow's own defaults (64 MB read-ahead)
        child_env["GCS_READ_CACHE_BLOCK_SIZE_MB"] = "64"
    out = subprocess.run([sys.executable, "-c", _CHILD, kind, *paths], capture_output=True,
                         text=True, env=child_env, cwd=tempfile.gettempdir(), timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed: {out.stderr.strip()[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"]:
        raise RuntimeError(f"{kind} exited {result['rc']}: {out.stderr.strip()[-2000:]}")
    return {"seconds": round(result["seconds"], 2), "requests": bed.proxy.requests,
            "bytes": bed.proxy.bytes}


def _commands(bed, env, code_root: Path, big_url: str, run_url: str, needed: dict) -> dict:
    figures = {}
    for kind, args in (("list", [big_url]), ("stats", [f"{run_url}/ckpt-2"]),
                       ("diff", [f"{run_url}/ckpt-1", f"{run_url}/ckpt-2"]),
                       ("steps", [run_url])):
        m = _measure(bed, env, code_root, kind, *args)
        m["needed"] = needed[kind]
        m["fetched_over_needed"] = round(m["bytes"] / needed[kind], 3)
        figures[kind] = m
    return figures


def run_remote(mode: str, before: str | None = None, delay: float = 0.03) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from gcsemu import Testbed

    size = SIZES[mode]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tpuckpt-remote-") as folder:
        made = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--make", folder,
                               mode], capture_output=True, text=True, timeout=1800,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if made.returncode != 0:
            raise RuntimeError(made.stderr[-2000:])
        paths = json.loads(made.stdout.strip().splitlines()[-1])
        bed = Testbed(Path(folder))
        try:
            big = bed.upload(paths["big"], "bench/big/ckpt")
            run = bed.upload(os.path.dirname(paths["a"]), "bench/run")
            env = dict(bed.tf_env, STORAGE_EMULATOR_HOST=bed.proxy.url, NO_GCE_CHECK="true",
                       GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
            bed.proxy.delay = delay
            needed = {"list": _needed([paths["big"]], False), "stats": _needed([paths["b"]], True),
                      "diff": _needed([paths["a"], paths["b"]], True),
                      "steps": _needed([paths["a"], paths["b"]], True)}
            result = {"delay_ms_per_request": delay * 1000,
                      "stats_bytes": _needed([paths["big"]], True)}
            stats = _measure(bed, env, ROOT, "stats", big)
            tf_loop = _measure(bed, env, ROOT, "tf", big)
            result.update(stats=stats, tf_get_tensor=tf_loop,
                          stats_vs_tf=round(stats["seconds"] / tf_loop["seconds"], 3),
                          stats_fetched_over_needed=round(
                              stats["bytes"] / result["stats_bytes"], 3))
            result["after"] = _commands(bed, env, ROOT, big, run, needed)
            if before:
                result["before"] = _commands(bed, env, Path(before).resolve(), big, run,
                                             needed)
            result["targets"] = {"stats_vs_tf": 0.5, "fetched_over_needed": 1.2}
        finally:
            bed.stop()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--before", metavar="DIR")
    parser.add_argument("--make", nargs=2, metavar=("DIR", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make:
        print(json.dumps(_make(args.make[0], SIZES[args.make[1]])))
        return 0
    print(json.dumps(run_remote("quick" if args.quick else "full", args.before), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
