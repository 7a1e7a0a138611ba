"""Every benchmark has a smoke mode, and CI runs it (DESIGN.md 7): the scripts must not rot.

Only that they run and print their table is checked here; speed is reported by `make bench`
(BENCHMARKS.md), never asserted in a test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (REPO / "bench").glob("bench_*.py"))
EXPECTED = {  # a line each script prints with its result table
    "bench_metrics.py": "speed-up",
    "bench_trainer.py": "overhead",
    "bench_sweep.py": "speed-up",
    "bench_scaling.py": "load average",
    "bench_app.py": "Runs page",
    "bench_cli.py": "x torch import",
    "bench_images.py": "trainer / bare",
    "bench_embeddings.py": "wall-time ratio images / embeddings",
    "bench_store.py": "write_epoch / raw",
    "bench_gpu.py": "Trainer / bare",  # --smoke runs on the CPU; without --smoke and CUDA it measures nothing, exit 0
}


def test_every_script_is_covered():
    assert set(SCRIPTS) == set(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_smoke_mode_runs(script):
    if script == "bench_app.py" and not Path("/usr/bin/chromium").exists():
        pytest.skip("bench_app drives Debian chromium (/usr/bin/chromium), which `make test` installs")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert EXPECTED[script] in proc.stdout, proc.stdout[-2000:]
