"""Command line: ``python -m tpuckpt_viz COMMAND ...`` (contract: DESIGN.md section 3).

Errors print one line ``error: ...`` on stderr and exit 1; bad usage exits 2 (argparse).
Heavy imports (TensorFlow, pandas, Streamlit) happen inside the commands that need them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

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


class Progress:
    """A progress line on stderr for reads that take over a second (tensors and bytes)."""

    def __init__(self, label: str, enabled: bool = True):
        self.label = label
        self.start = time.monotonic()
        self.enabled = enabled and sys.stderr.isatty() or os.environ.get("TPUCKPT_PROGRESS") == "1"
        self.shown = False

    def __call__(self, done: int, total: int, what: str = "", nbytes: int = 0) -> None:
        if not self.enabled or time.monotonic() - self.start < 1.0:
            return
        self.shown = True
        mb = f", {nbytes / 2**20:.0f} MB" if nbytes else ""
        sys.stderr.write(f"\r{self.label}: {done}/{total} tensors{mb}   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="output format (default: table)")


def _add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="read on the Dask cluster at ADDRESS (tcp://host:8786); "
                        "environment: TPUCKPT_SCHEDULER")
    p.add_argument("--workers", type=int, metavar="N",
                   help="read on a local Dask cluster of N processes, shut down at the end; "
                        "environment: TPUCKPT_WORKERS")


def _cluster(args):
    from tpuckpt_viz.engine.cluster import connect

    return connect(args.scheduler, args.workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tpuckpt-viz",
        description="Look inside TensorFlow checkpoints: browse, compare, infer.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="one record per checkpoint entry")
    p.add_argument("path", help="checkpoint folder, prefix, .index/.data file or SavedModel")
    _add_format(p)

    p = sub.add_parser("stats", help="statistics of every tensor")
    p.add_argument("path")
    p.add_argument("--match", help="only names or keys matching this regular expression")
    _add_format(p)
    _add_cluster(p)

    p = sub.add_parser("diff", help="compare two checkpoints variable by variable")
    p.add_argument("path_a")
    p.add_argument("path_b")
    p.add_argument("--match", help="only names or keys matching this regular expression")
    p.add_argument("--kind", action="append", choices=KIND_CHOICES,
                   help="only variables of this kind (repeatable)")
    p.add_argument("--by", choices=("name", "key"), default="name",
                   help="pair variables by readable name (default) or raw key")
    _add_format(p)
    _add_cluster(p)

    p = sub.add_parser("steps", help="follow every variable across the checkpoints of a run")
    p.add_argument("run_dir")
    p.add_argument("--match", help="only names or keys matching this regular expression")
    p.add_argument("--kind", action="append", choices=KIND_CHOICES,
                   help="only variables of this kind (repeatable)")
    _add_format(p)
    _add_cluster(p)

    p = sub.add_parser("infer", help="run test inputs through a SavedModel or restored model")
    p.add_argument("path", help="SavedModel folder, or checkpoint/run to restore into --model")
    p.add_argument("--model", help="model builder package.module:function (or a .keras file)")
    p.add_argument("--tag", help="SavedModel tag set, comma-separated (default: serve)")
    p.add_argument("--signature", help="signature name (default: serving_default)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="an input: JSON literal or a .npy/.npz/.csv path (repeatable)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu", "tpu"), default="auto")
    p.add_argument("--batch", type=int, default=4, help="batch size of generated inputs")
    p.add_argument("--fill", choices=("random", "zeros", "ones"), default="random",
                   help="values of generated inputs (default: random normal)")
    p.add_argument("--allow-unsafe-ops", action="store_true",
                   help="run a SavedModel signature that uses file-system or Python ops")
    _add_format(p)

    p = sub.add_parser("demo", help="write the demo training run, print its folder")
    p.add_argument("dir", nargs="?", help="folder to write (default: the user cache folder)")

    p = sub.add_parser("serve", help="start the dashboard")
    p.add_argument("path", nargs="?", help="checkpoint to open first")
    p.add_argument("--root", action="append", default=[],
                   help="allowed root folder or gs:// URI (repeatable; replaces the default)")
    p.add_argument("--model", help="model builder package.module:function for Infer")
    p.add_argument("--address", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8501)")
    p.add_argument("--allow-unsafe-ops", action="store_true",
                   help="run SavedModels that use file-system or Python ops")
    # Every other setting of config.SETTINGS is a flag of `serve` too (passed on as its
    # environment variable), so that the README's settings table holds for both.
    from tpuckpt_viz import config

    taken = {a for action in p._actions for a in action.option_strings}
    for setting in config.SETTINGS:
        if setting.flag and setting.flag not in taken:
            p.add_argument(setting.flag, dest=f"setting_{setting.name}", metavar="VALUE",
                           help=f"{setting.help} (environment: {setting.env})")
    return parser


def _cmd_list(args) -> None:
    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.checkpoint.records import list_records
    from tpuckpt_viz.cli.output import write

    write(list_records(open_checkpoint(args.path)), args.format, LIST_COLUMNS)


def _cmd_stats(args) -> None:
    import re

    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.checkpoint.records import list_records
    from tpuckpt_viz.cli.output import write
    from tpuckpt_viz.engine.stats import iter_stats
    from tpuckpt_viz.errors import UserError

    try:
        pattern = re.compile(args.match) if args.match else None
    except re.error as exc:
        raise UserError(f"--match {args.match!r} is not a valid regular expression: {exc}")
    ckpt = open_checkpoint(args.path)
    records = [r for r in list_records(ckpt)
               if not pattern or pattern.search(r["name"]) or pattern.search(r["key"])]
    names = {r["key"]: r["name"] for r in records}
    progress = Progress("stats")
    # One engine pass: each tensor read once, the next chunks read ahead while this one is
    # reduced; progress (tensors and bytes) on stderr for reads over a second.
    out = []
    with _cluster(args) as cluster:
        for stats in iter_stats(ckpt, names, progress=progress, labels=names, cluster=cluster):
            stats["name"] = names[stats["key"]]
            out.append(stats)
    progress.close()
    write(out, args.format, STATS_COLUMNS)


def _cmd_diff(args) -> None:
    from tpuckpt_viz.checkpoint.reader import open_checkpoint
    from tpuckpt_viz.cli.output import write
    from tpuckpt_viz.engine.diff import diff_checkpoints

    progress = Progress("diff")
    with _cluster(args) as cluster:
        records = diff_checkpoints(open_checkpoint(args.path_a), open_checkpoint(args.path_b),
                                   by=args.by, match=args.match, kinds=args.kind,
                                   progress=progress, cluster=cluster)
    progress.close()
    write(records, args.format, DIFF_COLUMNS)


def _cmd_steps(args) -> None:
    from tpuckpt_viz.cli.output import write
    from tpuckpt_viz.engine.diff import run_steps

    progress = Progress("steps")
    with _cluster(args) as cluster:
        records = run_steps(args.run_dir, match=args.match, kinds=args.kind,
                            progress=progress, cluster=cluster)
    progress.close()
    write(records, args.format, STEPS_COLUMNS)


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


def _cmd_serve(args) -> None:
    from tpuckpt_viz import config

    env = dict(os.environ)
    if args.root:
        env["TPUCKPT_ROOTS"] = os.pathsep.join(args.root)
    if args.model:
        env["TPUCKPT_MODEL"] = args.model
    if args.allow_unsafe_ops:
        env["TPUCKPT_ALLOW_UNSAFE_OPS"] = "1"
    for setting in config.SETTINGS:
        value = getattr(args, f"setting_{setting.name}", None)
        if value is not None:
            env[setting.env] = value
    address = args.address or config.get("address")
    port = str(args.port or config.get("port"))
    app = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "dashboard", "app.py")
    # The server's options are passed here, not left to a .streamlit/config.toml, so that an
    # installed package started from any folder gets the same safe defaults.
    upload_mb = str(config.get("upload_mb"))
    cmd = [sys.executable, "-m", "streamlit", "run", app, "--server.headless", "true",
           "--server.address", address, "--server.port", port,
           "--server.maxUploadSize", upload_mb, "--server.runOnSave", "false",
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal"]
    if args.path:
        if not args.root and not os.environ.get("TPUCKPT_ROOTS"):
            # Whoever starts the server named this checkpoint: its folder is allowed beside
            # the default root (the working folder). --root replaces both.
            remote = "://" in args.path
            folder = args.path if remote or os.path.isdir(args.path) else (
                os.path.dirname(os.path.abspath(args.path)))
            env["TPUCKPT_ROOTS"] = os.pathsep.join([os.getcwd(), folder])
        cmd += ["--", "--ckpt", args.path]
    print(f"tpuckpt-viz: http://{address}:{port}", file=sys.stderr)
    os.execvpe(cmd[0], cmd, env)


COMMANDS = {"list": _cmd_list, "stats": _cmd_stats, "diff": _cmd_diff, "steps": _cmd_steps,
            "infer": _cmd_infer, "demo": _cmd_demo, "serve": _cmd_serve}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    from tpuckpt_viz.errors import UserError, first_line

    try:
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
    """Console-script entry point (``tpuckpt-viz``)."""
    sys.exit(main())
