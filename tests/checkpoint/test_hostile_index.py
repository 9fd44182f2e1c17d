"""Hostile bundle indexes and shards (issue 14): every index entry is validated before anything
reads it, and only regular files are opened.

Each case is a checkpoint that TensorFlow wrote, then edited as a hostile or broken copy would
be (an entry whose shape, dtype, size, offset or shard says what TensorFlow's C++ reader aborts
on or reads past; a header with 0 or 10^9 shards; a named pipe or a folder where a file should
be). ``list``, ``stats`` and ``diff`` run on each case through the CLI in one child process (an
abort or a hang there fails the test instead of killing pytest): one ``error:`` line, exit 1,
within seconds, and no file changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hostile_files import rewrite_entries, tree_hashes, write_index

from tpuckpt_viz.checkpoint import bundle
from tpuckpt_viz.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
KEY = "w/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    from tpuckpt_viz.tfcompat import tf

    folder = tmp_path_factory.mktemp("hostile_src")
    ckpt = tf().train.Checkpoint(w=tf().Variable(np.arange(4, dtype=np.float32)),
                                 b=tf().Variable(np.ones(3, np.float32)))
    return ckpt.write(str(folder / "ckpt-1"))


def _copy(prefix: str, folder: Path) -> str:
    folder.mkdir(parents=True)
    for p in Path(prefix).parent.iterdir():
        if p.name.startswith(Path(prefix).name + "."):
            shutil.copy(p, folder / p.name)
    return str(folder / Path(prefix).name)


def _entry_case(prefix: str, edit) -> str:
    def change(key, proto):
        if key == KEY:
            edit(proto)
    return rewrite_entries(prefix, change)


def _header_case(prefix: str, num_shards: int) -> str:
    index = bundle.read_index(prefix)
    index.header.num_shards = num_shards
    entries = [(k.encode(), p.SerializeToString()) for k, p in index.entries.items()]
    write_index(prefix + ".index", index.header.SerializeToString(), entries)
    return prefix


def _shard(prefix: str) -> Path:
    return Path(bundle.data_path(prefix, 0, 1))


def _many_dims(proto):
    del proto.shape.dim[:]
    for _ in range(100):
        proto.shape.dim.add().size = 1


def _fifo_shard(prefix: str) -> str:
    _shard(prefix).unlink()
    os.mkfifo(_shard(prefix))
    return prefix


def _dir_shard(prefix: str) -> str:
    _shard(prefix).unlink()
    _shard(prefix).mkdir()
    return prefix


def _fifo_index(prefix: str) -> str:
    Path(prefix + ".index").unlink()
    os.mkfifo(prefix + ".index")
    return prefix


# case -> (how to damage a copy, what the error line must say)
CASES = {
    "negative_dim": (lambda p: _entry_case(p, lambda e: setattr(e.shape.dim[0], "size", -4)),
                     "negative dimension"),
    "hundred_dims": (lambda p: _entry_case(p, _many_dims), "100 dimensions"),
    "unknown_dtype": (lambda p: _entry_case(p, lambda e: setattr(e, "dtype", 77)),
                      "unknown dtype number 77"),
    "size_mismatch": (lambda p: _entry_case(p, lambda e: setattr(e, "size", 12)),
                      "size 12 bytes but shape [4] float32 needs 16"),
    "offset_past_end": (lambda p: _entry_case(p, lambda e: setattr(e, "offset", 1 << 20)),
                        "holds only"),
    "negative_offset": (lambda p: _entry_case(p, lambda e: setattr(e, "offset", -8)),
                        "offset -8"),
    "shard_id_too_big": (lambda p: _entry_case(p, lambda e: setattr(e, "shard_id", 3)),
                         "shard number 3 but the checkpoint has 1"),
    "zero_shards": (lambda p: _header_case(p, 0), "says 0 data shards"),
    "billion_shards": (lambda p: _header_case(p, 10**9), "says 1000000000 data shards"),
    "fifo_shard": (_fifo_shard, "named pipe"),
    "dir_shard": (_dir_shard, "is a folder"),
    "fifo_index": (_fifo_index, "named pipe"),
}

_CHILD = r"""
import contextlib, io, json, sys, time
from tpuckpt_viz import cli
out = {}
runs = json.loads(sys.argv[1])
with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
    cli.main(runs.pop("warm-up"))  # imports (TensorFlow's, where a path needs it) not timed
for name, argv in runs.items():
    err, std = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        code = cli.main(argv)
    out[name] = [code, err.getvalue(), std.getvalue(), time.monotonic() - start]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def results(original, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    good = _copy(original, base / "good")
    runs, made = {"warm-up": ["stats", good, "--format", "json"]}, {}
    for name, (damage, _) in CASES.items():
        prefix = damage(_copy(original, base / name))
        made[name] = prefix
        runs[f"{name}/list"] = ["list", prefix, "--format", "json"]
        runs[f"{name}/stats"] = ["stats", prefix, "--format", "json"]
        runs[f"{name}/diff"] = ["diff", good, prefix, "--format", "json"]
    before = tree_hashes(base)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(runs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]  # an abort (134) or a crash fails here
    assert tree_hashes(base) == before
    return json.loads(proc.stdout.strip().splitlines()[-1]), made


# Bytes past the end of the shard: the checkpoint still lists (as test_corpus's truncated
# shard does, and a checkpoint with a missing shard), but no read of the entry is attempted.
LISTS = {"offset_past_end"}


@pytest.mark.parametrize("command", ["list", "stats", "diff"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_case_is_one_clear_error(results, case, command):
    got, _ = results
    code, err, out, seconds = got[f"{case}/{command}"]
    if command == "list" and case in LISTS:
        assert code == 0 and err == "" and KEY in out, (code, err)
        return
    lines = err.strip("\n").splitlines()
    assert code == 1 and out == "", (code, out[:300], err[:300])
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert CASES[case][1] in lines[0], lines[0]
    assert "Traceback" not in err and "unexpected" not in err
    assert seconds < 10, seconds


def test_corrupt_entry_names_the_entry_and_what_to_do(results):
    _, made = results
    with pytest.raises(UserError) as err:
        bundle.read_index(made["size_mismatch"])
    assert str(err.value) == (
        f"corrupt entry {KEY!r} in {made['size_mismatch']}.index: size 12 bytes but shape [4] "
        "float32 needs 16: the checkpoint is damaged; re-copy it")


def test_validation_passes_every_real_checkpoint():
    shared = ROOT.parent / "shared" / "checkpoints"
    indexes = sorted(shared.rglob("*.index"))
    assert len(indexes) > 10
    for index in indexes:
        try:
            bundle.read_index(str(index)[:-len(".index")])
        except UserError as e:  # only what the corpus documents: nothing may read as corrupt
            assert "corrupt" not in str(e), (index, e)
