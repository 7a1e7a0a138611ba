"""Dashboard latency in a real browser (headless Chromium + Playwright).

1. Live latency: a fake *running* run whose epochs this script commits to the store with
   ``RunStore.write_epoch``; for each epoch, the time from the commit returning until the new epoch's
   point is in the Train page's chart (plotly's data in the DOM). The panel polls the store every
   ``LIVE_REFRESH_S`` (1 s), so the expected median is about half of that plus render time.
2. Runs page render: a store with R runs x E epochs (created with the store API); time from
   navigation to both chart SVGs (the curves overlay and the config-vs-final-metric scatter) being
   present, in-app (sidebar link) and cold (a new document); then the switch to the WebGL parallel
   coordinates view.
3. Idle server CPU: the share of one core the Streamlit server uses while one tab sits idle on each
   page, with the shipped ``.streamlit/config.toml`` (no file watcher) against Streamlit's own default
   (``--server.fileWatcherType auto``: without watchdog it polls every file under the project folder,
   ``.venv`` included). Read from the server process's CPU time in ``/proc`` (aim: < 5% of a core).

    python bench/bench_app.py            # 10 live epochs; 200 runs x 50 epochs
    python bench/bench_app.py --smoke    # 3 live epochs; 20 runs x 10 epochs (CI)

Needs /usr/bin/chromium (``apt-get install chromium``) and the ``playwright`` package.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_browser import CHROMIUM, CHROMIUM_ARGS, free_port, start_server, stop_server  # noqa: E402

from workbench import names as N  # noqa: E402
from workbench.config import Config  # noqa: E402
from workbench.store import RunStore  # noqa: E402

RANKS = ["level0", "level1", "level2"]
POINTS_JS = """() => {
  const g = [...document.querySelectorAll('.js-plotly-plot')]
    .find(g => (g._fullData || []).some(t => t.name === 'val partial-chain'));
  if (!g || !g.querySelector('svg.main-svg')) return -1;
  return g._fullData.find(t => t.name === 'val partial-chain').x.length;
}"""
RUNS_READY_JS = """() => ['.st-key-ru_overlay', '.st-key-ru_scatter']
  .every(k => document.querySelector(k + ' .js-plotly-plot svg.main-svg'))"""


def fake_metrics(epoch: int, rng: np.random.Generator, w: float = 0.3) -> dict[str, float]:
    acc = 1 - 0.6 * np.exp(-epoch / 8) - 0.2 * (1 - w) + 0.02 * rng.standard_normal()
    m = {
        N.TRAIN_LOSS: 2 * np.exp(-epoch / 10) + 0.3, N.VAL_LOSS: 2 * np.exp(-epoch / 10) + 0.4,
        N.TRAIN_CHAIN_ACC: acc * 0.7, N.VAL_CHAIN_ACC: acc * 0.65,
        N.TRAIN_PARTIAL_CHAIN_ACC: acc, N.VAL_PARTIAL_CHAIN_ACC: acc * 0.97,
        N.NULL_INCLUSION_PROB: min(epoch / 10, 1.0), N.VAL_CONSISTENCY: 0.9, N.VAL_SEVERITY: 1.2,
        N.VAL_HDIST: 0.4, N.EPOCH_SECONDS: 0.1,
    }
    for r in RANKS:
        m[N.val_acc(r)], m[N.rank_key("train", N.ACC, r)] = acc, acc + 0.02
        m[N.rank_key("val", N.LOSS, r)], m[N.rank_key("train", N.LOSS, r)] = 1 - acc, 0.9 - acc
        m[N.best_tau(r)] = 0.4
    return m


def fake_curves() -> pd.DataFrame:
    tau = np.linspace(0, 1, 101)
    return pd.concat([pd.DataFrame({"split": "val", "rank": r, "curve": c, "tau": tau, "value": v})
                      for r in RANKS for c, v in (("coverage", 1 - tau ** 2), ("selective_accuracy", 0.6 + 0.4 * tau),
                                                  ("accuracy", 0.7 - 0.3 * tau), ("null_false_positive_rate", 1 - tau))],
                     ignore_index=True)


def bench_live(page, url: str, store: RunStore, epochs: int) -> list[float]:
    rng = np.random.default_rng(0)
    run_id = store.create_run(Config().to_dict(), name="bench-live", status="running")
    store.update_run(run_id, pid=os.getpid())  # alive; no launcher log, so reconcile leaves it alone
    curves = fake_curves()
    store.write_epoch(run_id, 0, fake_metrics(0, rng), curves)
    page.goto(f"{url}/train?run={run_id}")
    page.wait_for_function(f"() => ({POINTS_JS})() >= 1", timeout=120_000)
    latencies = []
    for epoch in range(1, epochs + 1):
        time.sleep(random.uniform(0.2, 1.2))  # commit at a random phase of the page's 1 s poll
        store.write_epoch(run_id, epoch, fake_metrics(epoch, rng), curves)
        t0 = time.perf_counter()
        page.wait_for_function(f"() => ({POINTS_JS})() >= {epoch + 1}", polling=20, timeout=60_000)
        latencies.append(time.perf_counter() - t0)
    store.update_run(run_id, status="finished")
    return latencies


def fill_store(store: RunStore, runs: int, epochs: int) -> float:
    t0 = time.perf_counter()
    rng = np.random.default_rng(1)
    for i in range(runs):
        w = [0.1, 0.3, 0.5, 0.7, 0.9][i % 5]
        cfg = Config().with_overrides({"LOSS.W": w, "TRAIN.SEED": i // 5, "TRAIN.EPOCHS": epochs}).to_dict()
        run_id = store.create_run(cfg, name=f"w{w}-s{i // 5}", status="running")
        for e in range(epochs):
            store.write_epoch(run_id, e, fake_metrics(e, rng, w))
        store.update_run(run_id, status="finished")
    return time.perf_counter() - t0


def bench_runs_page(page, url: str, repeats: int) -> dict[str, list[float]]:
    """Seconds from navigation to the Runs page's two chart SVGs (overlay, parallel coordinates).

    ``in-app``: a click on the sidebar link from the Train page (the app's own navigation: one
    websocket session, plotly.js already loaded). ``cold``: a new document (``page.goto``), which also
    loads and parses Streamlit's and plotly.js's bundles; ``cold title``: the same until the title shows.
    """
    out: dict[str, list[float]] = {"in-app": [], "in-app title": [], "cold": [], "cold title": []}
    for _ in range(repeats):
        page.goto("about:blank")
        t0 = time.perf_counter()
        page.goto(f"{url}/runs")
        page.wait_for_selector("h1:has-text('Runs')", timeout=120_000)
        out["cold title"].append(time.perf_counter() - t0)
        page.wait_for_function(RUNS_READY_JS, polling=20, timeout=120_000)
        out["cold"].append(time.perf_counter() - t0)
    for _ in range(repeats):
        page.locator('[data-testid="stSidebarNav"] a', has_text="Train").click()
        page.wait_for_selector(".st-key-live_chain .js-plotly-plot svg.main-svg", timeout=120_000)
        t0 = time.perf_counter()
        page.locator('[data-testid="stSidebarNav"] a', has_text="Runs").click()
        page.wait_for_selector("h1:has-text('Runs')", timeout=120_000)
        out["in-app title"].append(time.perf_counter() - t0)
        page.wait_for_function(RUNS_READY_JS, polling=20, timeout=120_000)
        out["in-app"].append(time.perf_counter() - t0)
    # the WebGL parallel coordinates, on demand (software-rendered in a headless browser without a GPU)
    out["parcoords"] = []
    for view in ["Parallel coordinates", "Scatter"] * repeats:
        t0 = time.perf_counter()
        page.locator(".st-key-ru_view").get_by_text(view).click()
        key = "ru_parcoords" if view != "Scatter" else "ru_scatter"
        page.wait_for_selector(f".st-key-{key} .js-plotly-plot svg.main-svg", timeout=120_000)
        if view != "Scatter":
            out["parcoords"].append(time.perf_counter() - t0)
    return out


IDLE_PAGES = ["data", "train", "runs", "sweeps"]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_idle_cpu(browser, store_path: Path, tmp: Path, flags: list[str], seconds: float,
                   settle: float = 2.0) -> dict[str, float]:
    """Per page: % of one core the server uses over ``seconds`` while one tab sits idle on that page."""
    port = free_port()
    server = start_server(store_path, port, tmp / f"idle{len(flags)}.log", flags)
    out = {}
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        for name in IDLE_PAGES:
            page.goto(f"http://127.0.0.1:{port}/{name}")
            page.wait_for_selector("h1", timeout=120_000)
            time.sleep(settle)  # let the first render and its charts settle
            c0, t0 = process_cpu_seconds(server.pid), time.monotonic()
            time.sleep(seconds)
            out[name] = 100 * (process_cpu_seconds(server.pid) - c0) / (time.monotonic() - t0)
        page.close()
    finally:
        stop_server(server)
    return out


def summary(name: str, values: list[float], target: float) -> str:
    med, worst = statistics.median(values), max(values)
    verdict = "ok" if worst < target else f"over the {target:g} s target"
    return f"{name:<44} n={len(values):<3} median {med:6.3f} s   max {worst:6.3f} s   ({verdict})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="small sizes, for CI")
    ap.add_argument("--live-epochs", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    live_epochs = args.live_epochs or (3 if args.smoke else 10)
    n_runs, n_epochs = args.runs or (20 if args.smoke else 200), args.epochs or (10 if args.smoke else 50)
    repeats = args.repeats or (2 if args.smoke else 3)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: apt-get install chromium")
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        tmp = Path(tmp)
        store_path = tmp / "runs" / "workbench.db"
        store = RunStore(store_path)
        port = free_port()
        server = start_server(store_path, port, tmp / "streamlit.log")
        url = f"http://127.0.0.1:{port}"
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1440, "height": 1400})
                live = bench_live(page, url, store, live_epochs)
                fill_s = fill_store(store, n_runs, n_epochs)
                runs = bench_runs_page(page, url, repeats)
                idle_s, settle = (1.0, 1.0) if args.smoke else (10.0, 2.0)
                idle_before = bench_idle_cpu(browser, store_path, tmp, ["--server.fileWatcherType", "auto"], idle_s, settle)
                idle_after = bench_idle_cpu(browser, store_path, tmp, [], idle_s, settle)
                browser.close()
        finally:
            stop_server(server)
    print(f"bench_app: streamlit + headless chromium on {os.cpu_count()} CPU cores "
          f"(load average {os.getloadavg()[0]:.1f}){' [smoke]' if args.smoke else ''}")
    print(summary("(1) epoch commit -> point in browser chart", live, 2.0))
    print(summary(f"(2) Runs page, {n_runs} runs x {n_epochs} epochs: in-app nav", runs["in-app"], 2.0))
    print(summary("    in-app nav -> page title", runs["in-app title"], 2.0))
    print(summary("    cold load (new document) -> charts", runs["cold"], 2.0))
    print(summary("    cold load (new document) -> page title", runs["cold title"], 2.0))
    print(summary("    switch to parallel coordinates (WebGL)", runs["parcoords"], 2.0))
    print(f"    (store filled with the store API in {fill_s:.1f} s; the live page polls every 1 s)")
    print(f"(3) server CPU, one idle tab per page ({idle_s:g} s each; % of one core; aim < 5%)")
    print(f"    {'page':<10} {'watcher auto (before)':>22} {'shipped config (after)':>23}  ratio")
    for name in IDLE_PAGES:
        b, a = idle_before[name], idle_after[name]
        print(f"    {name:<10} {b:>21.1f}% {a:>22.1f}%  {b / max(a, 0.1):5.0f}x"
              f"  ({'ok' if a < 5 else 'over the 5% aim'})")
    print("    live latencies: " + " ".join(f"{v:.2f}" for v in live))
    for k, v in runs.items():
        print(f"    runs page {k}: " + " ".join(f"{x:.2f}" for x in v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
