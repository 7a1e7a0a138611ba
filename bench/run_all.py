"""`make bench`: run every bench/bench_*.py and write BENCHMARKS.md (machine, versions, date, outputs).

    python bench/run_all.py [--smoke] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "torchmetrics", "numpy", "pandas", "ray", "wandb", "streamlit", "plotly")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}, {platform.system()}"


def versions() -> str:
    out = []
    for p in PACKAGES:
        try:
            out.append(f"{p} {md.version(p)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--smoke", action="store_true", help="tiny sizes (checks the scripts run)")
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    a = p.parse_args()
    scripts = sorted((REPO / "bench").glob("bench_*.py"))
    if a.only:
        scripts = [s for s in scripts if any(o in s.stem for o in a.only)]
    sections, failed = [], []
    for script in scripts:
        cmd = [sys.executable, str(script)] + (["--smoke"] if a.smoke else [])
        print(f"== {script.name}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        took = time.perf_counter() - t0
        body = proc.stdout.strip()
        # the scripts print their tables last; Ray's start-up chatter before them is cut
        body = "\n".join(body.splitlines()[-60:])
        if proc.returncode != 0:
            failed.append(script.name)
            body += f"\n\nFAILED (exit {proc.returncode}):\n" + proc.stderr[-2000:]
        print(body, flush=True)
        sections.append(f"## {script.stem}\n\n`{' '.join(['python', 'bench/' + script.name] + cmd[2:])}` ({took:.0f} s)\n\n```\n{body}\n```\n")
    header = (f"# Benchmarks\n\nWritten by `make bench` (bench/run_all.py) on {dt.date.today().isoformat()}"
              f"{' in smoke mode (tiny sizes: numbers are not meaningful)' if a.smoke else ''}.\n\n"
              f"- machine: {machine()}\n- versions: {versions()}\n\n"
              "Each script times the workbench against a baseline in the same run and prints the ratio.\n\n")
    Path(a.out).write_text(header + "\n".join(sections))
    print(f"wrote {a.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
