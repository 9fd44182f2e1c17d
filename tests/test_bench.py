"""The benchmark script still runs: ``benchmarks/bench.py --quick`` prints its JSON.

Only the shape of the output is checked (every key, finite numbers): timings on a shared
machine are not the test suite's business, and the quick sizes are too small to mean much.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATIOS = ("stats_vs_read", "diff_vs_read", "peak_rss_mb_over_base", "list_vs_raw",
          "bf16_stats_vs_read", "list_process_vs_import_tf",
          "stats_process_vs_read_process")


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def test_quick_benchmark_prints_every_figure(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    for key in RATIOS:
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]), key
        assert result[key] >= 0, key
    assert set(result["targets"]) <= set(RATIOS)
    for key in ("stats", "read", "diff", "read_both", "bf16_stats", "bf16_read", "list",
                "list_raw"):
        assert result["seconds"][key] > 0, key
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["numpy"]
    assert result["inputs"]["mode"] == "quick" and result["inputs"]["repetitions"] >= 3
    assert all(math.isfinite(v) for v in _numbers(result))
    assert list(tmp_path.iterdir()) == []  # its temporary folder is gone
