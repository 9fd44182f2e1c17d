"""Command line: ``python -m tpuckpt_viz COMMAND ...`` (contract: docs/reference.md).

Errors print one line ``error: ...`` on stderr and exit 1; bad usage exits 2 (argparse).
Heavy imports (TensorFlow, pandas, Streamlit) happen inside the commands that need them.
"""

from __future__ import annotations

import argparse
import os
import sys

FORMATS = ("table", "json", "csv")
LIST_COLUMNS = ("key", "name", "shape", "dtype", "numel", "nbytes", "kind", "layer", "slot_of",
                "slot")
STATS_COLUMNS = ("key", "name", "dtype", "numel", "min", "max", "mean", "std", "l2", "zeros",
                 "nan", "inf")
DIFF_COLUMNS = ("name", "key_a", "key_b", "status", "shape_a", "shape_b", "l2_a", "l2_b",
                "delta_l2", "rel_change", "cosine", "max_abs_delta")
STEPS_COLUMNS = ("step", "checkpoint", "name", "kind", "l2", "delta_l2", "update_ratio", "nan",
                 "inf")
KIND_CHOICES = ("weight", "bias", "norm", "stat", "slot", "optimizer", "counter", "metric",
                "other")


# Tables lead with the readable name and end with the raw key (JSON and CSV keep the
# contract's order above).
LIST_TABLE = ("name", "kind", "layer", "shape", "dtype", "numel", "nbytes", "slot", "slot_of",
              "key")
STATS_TABLE = ("name", "dtype", "numel", "min", "max", "mean", "std", "l2", "zeros", "nan",
               "inf", "key")
DIFF_TABLE = ("name", "status", "shape_a", "shape_b", "l2_a", "l2_b", "delta_l2", "rel_change",
              "cosine", "max_abs_delta", "key_a", "key_b")
STEPS_TABLE = ("step", "name", "kind", "l2", "delta_l2", "update_ratio", "nan", "inf",
               "checkpoint")

PATH_HELP = ("checkpoint: a folder (its latest checkpoint), a prefix, an .index or .data-* "
             "file, or a SavedModel folder; local, gs:// or any tf.io.gfile path")
MATCH_HELP = ("only variables whose readable name or raw key contains a match of this regular "
              "expression (RE2 syntax: Python's, without lookarounds or backreferences)")
KIND_HELP = "only variables of this kind (repeatable)"


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="output format: table (wraps to the terminal), json (a list of "
                        "objects, null for NaN/Inf) or csv (default: table)")


def _add_settings(p: argparse.ArgumentParser, command: str) -> None:
    """The flags of every setting whose row names ``command`` (config.SETTINGS)."""
    from tpuckpt_viz import config

    for row in config.SETTINGS:
        if command not in row.commands:
            continue
        extra = f" (environment: {row.env}" + (f"; default: {row.default})" if row.default
                                                else ")")
        if row.kind == "bool":
            p.add_argument(row.flag, dest=row.name, action="store_true", default=None,
                           help=row.help + extra)
        elif row.kind == "paths":
            p.add_argument(row.flag, dest=row.name, action="append", metavar=row.metavar,
                           help=row.help + extra)
        elif row.kind == "choice":
            p.add_argument(row.flag, dest=row.name, choices=row.choices, help=row.help + extra)
        else:
            p.add_argument(row.flag, dest=row.name, metavar=row.metavar, type=_checked(row),
                           help=row.help + extra)


def _checked(row):
    def parse(text: str):
        from tpuckpt_viz.errors import UserError

        try:
            return row.parse(text, source=repr(text))
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = row.name
    return parse


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return number


def _cluster(args):
    from tpuckpt_viz.engine.cluster import connect

    return connect(args.scheduler, int(args.workers) if args.workers else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tpuckpt-viz",
        description="Look inside TensorFlow checkpoints: browse, compare, infer.",
        epilog="Reference: docs/reference.md. Settings: environment variables TPUCKPT_*.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (COMMAND --help for its options)")

    p = sub.add_parser("list", help="one record per checkpoint entry",
                       description="One record per entry of the checkpoint: raw key, readable "
                                   "name, shape, dtype, size, kind, layer, slot.")
    p.add_argument("path", metavar="PATH", help=PATH_HELP)
    _add_format(p)

    p = sub.add_parser("stats", help="statistics of every tensor",
                       description="Statistics of every tensor: min, max, mean, std "
                                   "(population) and l2 over the finite values; zeros as a "
                                   "fraction of all elements (0 to 1); nan and inf as counts.")
    p.add_argument("path", metavar="PATH", help=PATH_HELP)
    p.add_argument("--match", metavar="REGEX", help=MATCH_HELP)
    _add_settings(p, "stats")
    _add_format(p)

    p = sub.add_parser("diff", help="compare two checkpoints variable by variable",
                       description="One record per variable of either checkpoint: status, "
                                   "norms, ||b-a||, relative change, cosine, max |b-a|.")
    p.add_argument("path_a", metavar="PATH_A", help="the first checkpoint (A); " + PATH_HELP)
    p.add_argument("path_b", metavar="PATH_B", help="the second checkpoint (B), same forms")
    p.add_argument("--match", metavar="REGEX", help=MATCH_HELP)
    p.add_argument("--kind", action="append", choices=KIND_CHOICES, help=KIND_HELP)
    p.add_argument("--by", choices=("name", "key"), default="name",
                   help="pair variables by readable name (default) or raw key")
    _add_settings(p, "diff")
    _add_format(p)

    p = sub.add_parser("steps", help="follow every variable across the checkpoints of a run",
                       description="One record per (step, variable) across every checkpoint "
                                   "of a run: l2, change from the previous step, update ratio, "
                                   "NaN and Inf counts.")
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="folder holding the run's checkpoints (local, gs:// or any "
                        "tf.io.gfile path)")
    p.add_argument("--match", metavar="REGEX", help=MATCH_HELP)
    p.add_argument("--kind", action="append", choices=KIND_CHOICES, help=KIND_HELP)
    _add_settings(p, "steps")
    _add_format(p)

    p = sub.add_parser("infer", help="run test inputs through a SavedModel or restored model",
                       description="Run inputs through a SavedModel signature, or through a "
                                   "model builder restored from a checkpoint; prints the "
                                   "device, outputs, latency and restore report.")
    p.add_argument("path", metavar="PATH",
                   help="SavedModel folder, or checkpoint/run to restore into --model")
    p.add_argument("--tag", metavar="TAGS",
                   help="SavedModel tag set, comma-separated (default: serve, else the only one)")
    p.add_argument("--signature", metavar="NAME",
                   help="signature name (default: serving_default, else the only one)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="an input: JSON literal or a .npy/.npz/.csv path (repeatable); inputs "
                        "not given are generated from the signature")
    p.add_argument("--device", choices=("auto", "cpu", "gpu", "tpu"), default="auto",
                   help="where to run: auto tries TPU, then GPU, then CPU (default: auto)")
    p.add_argument("--batch", type=_positive, default=4, metavar="N",
                   help="batch size of generated inputs, at least 1 (default: 4)")
    p.add_argument("--fill", choices=("random", "zeros", "ones"), default="random",
                   help="values of generated inputs (default: random normal)")
    _add_settings(p, "infer")
    _add_format(p)

    p = sub.add_parser("demo", help="write the demo training run, print its folder",
                       description="Write the built-in demo training run (kept if complete) "
                                   "and print its folder.")
    p.add_argument("dir", nargs="?", metavar="DIR",
                   help="folder to write (default: TPUCKPT_DEMO_DIR, else "
                        "~/.cache/tpuckpt-viz/demo)")

    p = sub.add_parser("serve", help="start the dashboard",
                       description="Start the dashboard (Streamlit). Every flag below is also "
                                   "an environment variable (see docs/reference.md).")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="checkpoint to open first; its folder is allowed beside the working "
                        "folder unless --root is given")
    _add_settings(p, "serve")
    return parser


def _progress(args, title: str, unit: str):
    from tpuckpt_viz import config
    from tpuckpt_viz.cli.progress import CliProgress

    return CliProgress(title, unit, args.progress or config.value("progress"))


def _cmd_list(args) -> None:
    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.checkpoint.records import list_records
    from tpuckpt_viz.cli.output import write

    write(list_records(open_checkpoint(args.path)), args.format, LIST_COLUMNS,
          table_columns=LIST_TABLE)


def _cmd_stats(args) -> None:
    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.checkpoint.records import list_records
    from tpuckpt_viz.cli.output import write
    from tpuckpt_viz.engine.stats import iter_stats
    from tpuckpt_viz.patterns import compile_user, search_any

    pattern = compile_user(args.match, "--match") if args.match else None
    progress = _progress(args, "stats", "tensors")  # a bad setting fails before any read
    ckpt = open_checkpoint(args.path)
    records = [r for r in list_records(ckpt) if search_any(pattern, r["name"], r["key"])]
    names = {r["key"]: r["name"] for r in records}
    # One engine pass: each tensor read once, the next chunks read ahead while this one is
    # reduced; progress (tensors and bytes) on stderr.
    out = []
    with progress, _cluster(args) as cluster:
        for stats in iter_stats(ckpt, names, progress=progress, labels=names, cluster=cluster):
            stats["name"] = names[stats["key"]]
            out.append(stats)
    write(out, args.format, STATS_COLUMNS, table_columns=STATS_TABLE)


def _cmd_diff(args) -> None:
    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.cli.output import write
    from tpuckpt_viz.engine.diff import diff_checkpoints

    with _progress(args, "diff", "tensors") as progress, _cluster(args) as cluster:
        records = diff_checkpoints(open_checkpoint(args.path_a), open_checkpoint(args.path_b),
                                   by=args.by, match=args.match, kinds=args.kind,
                                   progress=progress, cluster=cluster)
    write(records, args.format, DIFF_COLUMNS, table_columns=DIFF_TABLE)


def _cmd_steps(args) -> None:
    from tpuckpt_viz.cli.output import write
    from tpuckpt_viz.engine.diff import run_steps

    with _progress(args, "steps", "checkpoints") as progress, _cluster(args) as cluster:
        records = run_steps(args.run_dir, match=args.match, kinds=args.kind,
                            progress=progress, cluster=cluster)
    write(records, args.format, STEPS_COLUMNS, table_columns=STEPS_TABLE)


def _cmd_infer(args) -> None:
    from tpuckpt_viz.cli.output import write_object
    from tpuckpt_viz.errors import UserError
    from tpuckpt_viz.inference.api import result_to_json, run_inference

    inputs = {}
    for item in args.input:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"--input {item!r} is not NAME=VALUE: e.g. --input x=[[1],[2],[5]]")
        inputs[name] = value
    tags = [t.strip() for t in args.tag.split(",")] if args.tag is not None else None
    result = run_inference(args.path, model=args.model, tags=tags, signature=args.signature,
                           inputs=inputs or None, device=args.device, batch=args.batch,
                           fill=args.fill, allow_unsafe=args.allow_unsafe_ops or None)
    write_object(result_to_json(result), args.format)


def _cmd_demo(args) -> None:
    from tpuckpt_viz.demo import make_demo

    print(make_demo(args.dir))


def _serve_environment(args) -> dict:
    """The Streamlit process's environment: ours, with every flag given as its variable."""
    from tpuckpt_viz import config

    env = dict(os.environ)
    for row in config.SETTINGS:
        given = getattr(args, row.name, None)
        if "serve" not in row.commands or given is None:
            continue
        if row.kind == "paths":
            env[row.env] = os.pathsep.join(given)
        elif row.kind == "bool":
            env[row.env] = "1" if given else "0"
        else:
            env[row.env] = str(given)
    if args.path and not args.roots and not env.get("TPUCKPT_ROOTS", "").strip():
        # Whoever starts the server named this checkpoint: its folder is allowed beside
        # the default root (the working folder). --root replaces both.
        remote = "://" in args.path
        folder = args.path if remote or os.path.isdir(args.path) else (
            os.path.dirname(os.path.abspath(args.path)))
        env["TPUCKPT_ROOTS"] = os.pathsep.join([os.getcwd(), folder])
    config.check_all(env)  # a malformed setting stops here, not inside the server
    return env


def _cmd_serve(args) -> None:
    from tpuckpt_viz import config

    env = _serve_environment(args)

    def setting(name: str):
        row = config.setting(name)
        return row.parse(env.get(row.env, "").strip() or row.default)

    address, port = setting("address"), setting("port")
    app = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "dashboard", "app.py")
    # The server's options are passed here, not left to a .streamlit/config.toml, so that an
    # installed package started from any folder gets the same safe defaults.
    cmd = [sys.executable, "-m", "streamlit", "run", app, "--server.headless", "true",
           "--server.address", address, "--server.port", str(port),
           "--server.maxUploadSize", str(setting("upload_mb")), "--server.runOnSave", "false",
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal"]
    if args.path:
        cmd += ["--", "--ckpt", args.path]
    print(f"tpuckpt-viz: http://{address}:{port}", file=sys.stderr)
    os.execvpe(cmd[0], cmd, env)


COMMANDS = {"list": _cmd_list, "stats": _cmd_stats, "diff": _cmd_diff, "steps": _cmd_steps,
            "infer": _cmd_infer, "demo": _cmd_demo, "serve": _cmd_serve}


def _note_other_checkpoints(args) -> None:
    """One line on stderr when a folder holds several unrelated checkpoints and no state file
    says which: the one opened, and the others (pass one of them to open it)."""
    if args.command not in ("list", "stats", "diff"):
        return
    from tpuckpt_viz.checkpoint.paths import other_checkpoints, resolve_checkpoint

    for path in (getattr(args, a, None) for a in ("path", "path_a", "path_b")):
        others = other_checkpoints(path) if path else []
        if others:
            opened = resolve_checkpoint(path).prefix
            print(f"note: {path} holds {len(others) + 1} unrelated checkpoints and no state "
                  f"file: opened {opened}; pass one of the others to open it: "
                  f"{', '.join(others)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    from tpuckpt_viz.errors import UserError, first_line

    try:
        _note_other_checkpoints(args)
        COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head`: not an error of ours
        return 0
    except Exception as exc:  # never a traceback: one line, and how to get more
        print(f"error: {type(exc).__name__}: {first_line(exc)} (unexpected: please report "
              "it with the command you ran)", file=sys.stderr)
        return 1
    return 0


def main_entry() -> None:
    """Console-script entry point (``tpuckpt-viz``, ``python -m tpuckpt_viz``)."""
    # A listing makes hundreds of thousands of small objects (records, names) and no cycles
    # to speak of: with the default thresholds the collector rescans them over and over, a
    # fifth of a 20,000-variable listing. It still runs, a hundred times less often. Only for
    # a process that this entry point starts: a program calling main() keeps its settings.
    import gc

    gc.freeze()  # what the imports made stays out of every collection
    gc.set_threshold(100_000, 50, 100)
    sys.exit(main())
