"""Execute lab notebooks headless and (optionally) screenshot their key figure.

    python lab/run.py                    # every notebook, full size
    python lab/run.py 02 04 --smoke      # some notebooks, smoke mode (WORKBENCH_SMOKE=1)
    python lab/run.py 03 --png           # then docs/lab_03.png from lab/_runs/03_*/lab_03.html

Executed copies (with outputs) go to ``lab/_runs/executed/`` (git-ignored); the committed
``.ipynb`` files stay output-free. ``--png`` needs Debian's ``/usr/bin/chromium`` (plotly's kaleido
is not a dependency): each notebook writes its key figure as a self-contained HTML file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

LAB = Path(__file__).resolve().parent
DOCS = LAB.parent / "docs"
CHROMIUM = "/usr/bin/chromium"
# screenshot window per notebook (the figure's width x height plus a margin)
SIZES = {"01": "1100,380", "02": "1100,640", "03": "1100,450", "04": "1100,460", "05": "1100,480", "06": "1100,470", "08": "1100,460", "09": "1100,450", "10": "1100,520"}


def execute(name: str, smoke: bool, timeout: int) -> Path:
    import nbformat
    from nbclient import NotebookClient

    os.environ["WORKBENCH_SMOKE"] = "1" if smoke else "0"
    nb = nbformat.read(LAB / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(LAB)}}).execute()
    out = LAB / "_runs" / "executed" / f"{name}{'.smoke' if smoke else ''}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return out


def screenshot(name: str, size: str | None = None) -> Path | None:
    html = next(iter(sorted((LAB / "_runs").glob(f"{name}/lab_*.html"))), None)
    if html is None or not Path(CHROMIUM).exists():
        print(f"  no PNG for {name}: {'no figure HTML' if html is None else 'no ' + CHROMIUM}")
        return None
    DOCS.mkdir(exist_ok=True)
    png = DOCS / f"{html.stem}.png"
    size = size or SIZES.get(name[:2], "1100,500")
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--virtual-time-budget=5000", f"--screenshot={png}", f"--window-size={size}",
                    html.as_uri()], check=True, capture_output=True, timeout=120)
    return png


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebook names or number prefixes (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny runs (WORKBENCH_SMOKE=1)")
    parser.add_argument("--png", action="store_true", help="screenshot each notebook's figure to docs/lab_NN.png")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell (a full run's training cell can take 15 minutes)")
    parser.add_argument("--size", default=None, help="screenshot window size W,H (default: per notebook)")
    args = parser.parse_args(argv)
    names = sorted(p.stem for p in LAB.glob("[0-9][0-9]_*.ipynb"))
    if args.names:
        names = [n for n in names if any(n == a or n.startswith(a) for a in args.names)]
    os.chdir(LAB)
    for name in names:
        t0 = time.perf_counter()
        out = execute(name, args.smoke, args.timeout)
        print(f"{name}: {time.perf_counter() - t0:.0f} s -> {out}", flush=True)
        if args.png and (png := screenshot(name, args.size)):
            print(f"  figure -> {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
