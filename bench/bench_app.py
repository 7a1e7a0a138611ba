"""Dashboard latency in a real browser (headless Chromium + Playwright).

1. Live latency: a fake *running* run whose epochs this script commits to the store with
   ``RunStore.write_epoch``; for each epoch, the time from the commit returning until the new epoch's
   point is in the Train page's chart (plotly's data in the DOM). The panel polls the store every
   ``LIVE_REFRESH_S`` (1 s), so the expected median is about half of that plus render time.
2. Runs page render, in two stores measured in the same run: today's case (R runs x E epochs, metrics
   only) and the scale case of issue 17 (2,000 runs x 100 epochs with threshold curves; aims: the page
   in <= 1.5 s in-app, parallel coordinates in <= 1 s). Both are filled with the store API
   (``RunStore.write_epoch``, so the per-run summaries are maintained as in training), the scale case
   from several processes. Time from navigation to the run table and both chart SVGs (the curves overlay
   and the config-vs-metric scatter), in-app (sidebar link) and cold (a new document); then the switch
   to the WebGL parallel coordinates view. At scale also the live table: a running run's new epoch until
   its row in the Runs table shows it (the page re-reads the store every 1 s while a run is active).
   Curves at every epoch of every run would be 3 ranks x 4 curves x 51 taus = 612 rows per epoch, 122M
   rows (~18 GB) at 2,000 x 100: the scale store holds them at every epoch of every ``--curve-every``-th
   run and at the last epoch of every other run (what the threshold overlay reads); the printout says
   exactly what the store holds.
3. ``write_epoch`` vs a raw single-connection write (``bench/bench_store.py``'s ``write_ratio``).
4. Idle server CPU: the share of one core the Streamlit server uses while one tab sits idle on each
   page, with the shipped ``.streamlit/config.toml`` (no file watcher) against Streamlit's own default
   (``--server.fileWatcherType auto``: without watchdog it polls every file under the project folder,
   ``.venv`` included). Read from the server process's CPU time in ``/proc`` (aim: < 5% of a core).

    python bench/bench_app.py            # 10 live epochs; 200 runs x 50 epochs; 2,000 runs x 100 epochs
    python bench/bench_app.py --smoke    # 3 live epochs; 20 runs x 10 epochs; 40 runs x 10 epochs (CI)

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
from test_browser_tracker import GRID_JS  # noqa: E402

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
# the Runs page is open: its run table (a data grid) and both chart SVGs are drawn
RUNS_READY_JS = """() => document.querySelector('.st-key-ru_table [data-testid="stDataFrame"] canvas')
  && ['.st-key-ru_overlay', '.st-key-ru_scatter'].every(k => document.querySelector(k + ' .js-plotly-plot svg.main-svg'))"""
# records in window.__arrived the page's clock (ms) when an element matching the selector is first in the
# DOM (a MutationObserver runs before plotly's drawing task); returns the clock now
ELEMENT_ARRIVES_JS = """(selector) => { window.__arrived = null;
  const o = new MutationObserver(() => {
    if (document.querySelector(selector)) { window.__arrived = performance.now(); o.disconnect(); } });
  o.observe(document.body, {subtree: true, childList: true}); return performance.now(); }"""


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


LIVE_TAUS = 101  # the trainer's threshold grid (metrics.default_thresholds)


def fake_curves(taus: int) -> pd.DataFrame:
    """One epoch's threshold curves: 3 ranks x 4 curves x ``taus`` thresholds."""
    tau = np.linspace(0, 1, taus)
    return pd.concat([pd.DataFrame({"split": "val", "rank": r, "curve": c, "tau": tau, "value": v})
                      for r in RANKS for c, v in (("coverage", 1 - tau ** 2), ("selective_accuracy", 0.6 + 0.4 * tau),
                                                  ("accuracy", 0.7 - 0.3 * tau), ("null_false_positive_rate", 1 - tau))],
                     ignore_index=True)


def bench_live(page, url: str, store: RunStore, epochs: int) -> list[float]:
    rng = np.random.default_rng(0)
    run_id = store.create_run(Config().to_dict(), name="bench-live", status="running")
    store.update_run(run_id, pid=os.getpid())  # alive; no launcher log, so reconcile leaves it alone
    curves = fake_curves(LIVE_TAUS)
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


def bench_live_table(page, url: str, store: RunStore, epochs: int) -> list[float]:
    """The Runs page's live refresh: a fake *running* run whose epochs this script commits; for each, the
    time from the commit returning until the run's row in the Runs table shows the new epoch count (the
    table's fragment re-reads the store every ``LIVE_REFRESH_S``, recomputing the table after each commit)."""
    rng = np.random.default_rng(0)
    run_id = store.create_run(Config().to_dict(), name="bench-live-table", status="running")
    store.update_run(run_id, pid=os.getpid())
    store.write_epoch(run_id, 0, fake_metrics(0, rng))
    row_shows = f"(want) => {{ const g = ({GRID_JS})('ru_table'); const i = g ? g.heads.indexOf('epochs') : -1;" \
                f" return i >= 0 && g.rows.some(r => r.id === '{run_id}' && r.cells[i] === String(want)); }}"
    page.goto(f"{url}/runs")
    page.wait_for_function(row_shows, arg=1, timeout=120_000)
    latencies = []
    for epoch in range(1, epochs + 1):
        time.sleep(random.uniform(0.2, 1.2))  # commit at a random phase of the page's 1 s poll
        store.write_epoch(run_id, epoch, fake_metrics(epoch, rng))
        t0 = time.perf_counter()
        page.wait_for_function(row_shows, arg=epoch + 1, polling=20, timeout=60_000)
        latencies.append(time.perf_counter() - t0)
    store.update_run(run_id, status="finished")
    return latencies


WS = [0.1, 0.3, 0.5, 0.7, 0.9]
TAGS = {10: "baseline", 7: "bench"}  # every 10th run tagged "baseline", every 7th "bench" (when the store has tags)


def fill_runs(store_path: str, indices: list[int], epochs: int, curve_every: int = 0, taus: int = 51) -> None:
    """Write runs number ``indices`` (config LOSS.W / TRAIN.SEED from the number) with the store API: create,
    ``write_epoch`` per epoch, finish. ``curve_every`` > 0: curves of ``taus`` thresholds at every epoch of
    every ``curve_every``-th run and at the last epoch of the others; 0: no curves. A worker process's job."""
    store = RunStore(store_path)
    curves = fake_curves(taus) if curve_every else None
    rng = np.random.default_rng(indices[0] if indices else 0)
    tagging = hasattr(store, "add_tags")  # schema v3 (issue 17)
    for i in indices:
        w = WS[i % len(WS)]
        cfg = Config().with_overrides({"LOSS.W": w, "TRAIN.SEED": i // len(WS), "TRAIN.EPOCHS": epochs}).to_dict()
        run_id = store.create_run(cfg, name=f"w{w}-s{i // len(WS)}", status="running")
        tags = [tag for every, tag in TAGS.items() if i % every == 0]
        if tagging and tags:
            store.add_tags(run_id, tags)
        for e in range(epochs):
            with_curves = curves is not None and (i % curve_every == 0 or e == epochs - 1)
            store.write_epoch(run_id, e, fake_metrics(e, rng, w), curves if with_curves else None)
        store.update_run(run_id, status="finished")


def fill_store(store_path: Path, runs: int, epochs: int, curve_every: int = 0, taus: int = 51,
               workers: int = 1) -> float:
    """Fill a new store with ``runs`` x ``epochs`` (see :func:`fill_runs`) from ``workers`` processes;
    returns the wall-clock seconds. Runs are dealt round-robin, so every worker gets its share of curve runs."""
    RunStore(store_path)  # created once here, not raced by the workers
    t0 = time.perf_counter()
    if workers <= 1:
        fill_runs(str(store_path), list(range(runs)), epochs, curve_every, taus)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter per worker (no forked SQLite connection or Playwright thread)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [pool.submit(fill_runs, str(store_path), list(range(k, runs, workers)), epochs, curve_every, taus)
                    for k in range(workers)]
            for job in jobs:
                job.result()  # a worker's error ends the bench here, with its traceback
    return time.perf_counter() - t0


def store_contents(store_path: Path) -> dict[str, int]:
    """Rows and bytes the store holds (counted, not assumed): runs, metric rows, curve rows, epochs with curves."""
    import sqlite3

    con = sqlite3.connect(store_path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        out = {table: con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in ("runs", "metrics", "curves")}
        out["curve_epochs"] = con.execute("SELECT COUNT(*) FROM (SELECT DISTINCT run_id, epoch FROM curves)").fetchone()[0]
    finally:
        con.close()
    out["bytes"] = sum(f.stat().st_size for f in store_path.parent.glob(store_path.name + "*"))
    return out


def describe_store(runs: int, epochs: int, curve_every: int, taus: int, held: dict[str, int], fill_s: float,
                   workers: int) -> str:
    """What the store holds and how it was filled, in words (the printout's one home for it)."""
    if held["runs"] > runs:  # today's store also holds (1)'s live run, with its curves
        curves = f"curves only in (1)'s live run ({len(RANKS)} ranks x 4 curves x {LIVE_TAUS} taus per epoch)"
    elif curve_every:
        per_epoch = len(RANKS) * 4 * taus
        every = len(range(0, runs, curve_every))
        curves = (f"curves ({len(RANKS)} ranks x 4 curves x {taus} taus = {per_epoch} rows per epoch) at every epoch "
                  f"of every {curve_every}th run ({every} runs) and at the last epoch of the other {runs - every}")
    else:
        curves = "no curves"
    live = " + (1)'s live run" if held["runs"] > runs else ""
    return (f"{runs:,} runs x {epochs} epochs{live}: {held['metrics']:,} metric rows; {curves}: "
            f"{held['curves']:,} curve rows ({held['curve_epochs']:,} epochs); {held['bytes'] / 1e6:,.0f} MB on disk; "
            f"filled with RunStore.write_epoch from {workers} process{'es' if workers > 1 else ''} in {fill_s:.1f} s "
            f"({1000 * fill_s * workers / max(runs * epochs, 1):.2f} ms per epoch per process)")


def bench_runs_page(page, url: str, repeats: int) -> dict[str, list[float]]:
    """Seconds from navigation to the Runs page's two chart SVGs (overlay, parallel coordinates).

    ``in-app``: a click on the sidebar link from the Train page (the app's own navigation: one
    websocket session, plotly.js already loaded). ``cold``: a new document (``page.goto``), which also
    loads and parses Streamlit's and plotly.js's bundles; ``cold title``: the same until the title shows.
    ``first``: the page's first open on this server (its run table is not cached yet: the cost after every
    store change), after a visit to the Train page so the server's own start-up is not counted.
    """
    out: dict[str, list[float]] = {"first": [], "in-app": [], "in-app title": [], "cold": [], "cold title": []}
    page.goto(f"{url}/train")
    page.wait_for_selector(".st-key-live_chain .js-plotly-plot svg.main-svg", timeout=120_000)
    t0 = time.perf_counter()
    page.goto(f"{url}/runs")
    page.wait_for_function(RUNS_READY_JS, polling=20, timeout=120_000)
    out["first"].append(time.perf_counter() - t0)
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
    # the WebGL parallel coordinates, on demand (software-rendered in a headless browser without a GPU);
    # "parcoords server": until the chart's element arrives from the server, the rest is plotly drawing
    out["parcoords"], out["parcoords server"] = [], []
    for view in ["Parallel coordinates", "Scatter"] * repeats:
        js_t0 = page.evaluate(ELEMENT_ARRIVES_JS, ".st-key-ru_parcoords") if view != "Scatter" else None
        t0 = time.perf_counter()
        page.locator(".st-key-ru_view").get_by_text(view).click()
        key = "ru_parcoords" if view != "Scatter" else "ru_scatter"
        page.wait_for_selector(f".st-key-{key} .js-plotly-plot svg.main-svg", timeout=120_000)
        if view != "Scatter":
            out["parcoords"].append(time.perf_counter() - t0)
            out["parcoords server"].append((page.evaluate("() => window.__arrived") - js_t0) / 1000)
    return out


IDLE_PAGES = ["data", "train", "runs", "sweeps"]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_idle_cpu(browser, store_path: Path, tmp: Path, flags: list[str], seconds: float,
                   settle: float = 2.0) -> dict[str, float]:
    """Per page: % of one core the server uses over ``seconds`` while one tab sits idle on that page."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    port = free_port()
    server = start_server(store_path, port, tmp / f"idle{len(flags)}.log", flags)
    out = {}
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        for name in IDLE_PAGES:
            page.goto(f"http://127.0.0.1:{port}/{name}")
            try:
                page.wait_for_selector("h1", timeout=120_000)
            except PlaywrightTimeout:
                log = (tmp / f"idle{len(flags)}.log").read_text()[-3000:]
                raise RuntimeError(f"idle CPU ({' '.join(flags) or 'shipped config'}): the {name} page showed no "
                                   f"title in 120 s; server log:\n{log}") from None
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


def store_write_ratio(smoke: bool) -> str:
    """The ``write_epoch`` vs raw-write lines of ``bench/bench_store.py`` (helper module of the store's own bench)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from bench_store import write_ratio
    except ModuleNotFoundError as e:
        if e.name != "bench_store":
            raise
        return "    bench/bench_store.py is missing: no write_epoch vs raw ratio"
    result = write_ratio(epochs=10, rounds=2) if smoke else write_ratio()
    return "\n".join(f"    {k:<62} {v:>9,.0f}" if k.endswith("us/epoch") else f"    {k:<62} {v:>9.2f}x"
                     for k, v in result.items())


def print_runs_page(title: str, runs: dict[str, list[float]], page_aim: float, parcoords_aim: float) -> None:
    print(summary(f"{title}: in-app nav", runs["in-app"], page_aim))
    print(summary("    first open (new document, table not cached)", runs["first"], 2.0))
    print(summary("    in-app nav -> page title", runs["in-app title"], page_aim))
    print(summary("    cold load (new document) -> table and charts", runs["cold"], 2.0))
    print(summary("    cold load (new document) -> page title", runs["cold title"], 2.0))
    print(summary("    switch to parallel coordinates (WebGL)", runs["parcoords"], parcoords_aim))
    print(summary("      of which the server (click -> chart element)", runs["parcoords server"], parcoords_aim))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="small sizes, for CI")
    ap.add_argument("--live-epochs", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None, help="today's case: runs (default 200; smoke 20)")
    ap.add_argument("--epochs", type=int, default=None, help="today's case: epochs per run (default 50; smoke 10)")
    ap.add_argument("--scale-runs", type=int, default=None, help="scale case: runs (default 2000; smoke 40)")
    ap.add_argument("--scale-epochs", type=int, default=None, help="scale case: epochs per run (default 100; smoke 10)")
    ap.add_argument("--curve-every", type=int, default=10,
                    help="scale case: curves at every epoch of every Nth run, at the last epoch of the others")
    ap.add_argument("--taus", type=int, default=51, help="scale case: thresholds per curve")
    ap.add_argument("--workers", type=int, default=2, help="scale case: processes filling the store")
    ap.add_argument("--scale-store", type=Path, default=None,
                    help="build the scale store here (kept; reused as it is when it exists) instead of in a temp folder")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    live_epochs = args.live_epochs or (3 if args.smoke else 10)
    n_runs, n_epochs = args.runs or (20 if args.smoke else 200), args.epochs or (10 if args.smoke else 50)
    s_runs, s_epochs = args.scale_runs or (40 if args.smoke else 2000), args.scale_epochs or (10 if args.smoke else 100)
    repeats = args.repeats or (1 if args.smoke else 3)  # smoke: each path once (CI runs it inside the test suite)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: apt-get install chromium")
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        tmp = Path(tmp)
        store_path = tmp / "runs" / "workbench.db"
        # the scale store first, before any server or browser competes for the cores
        scale_path = args.scale_store or tmp / "scale" / "workbench.db"
        if scale_path.exists():
            scale_fill = None
        else:
            scale_fill = fill_store(scale_path, s_runs, s_epochs, args.curve_every, args.taus, args.workers)
        scale_held = store_contents(scale_path)
        store = RunStore(store_path)
        port = free_port()
        server = start_server(store_path, port, tmp / "streamlit.log")
        url = f"http://127.0.0.1:{port}"
        scale_server = None
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1440, "height": 1400})
                live = bench_live(page, url, store, live_epochs)
                fill_s = fill_store(store_path, n_runs, n_epochs)
                held = store_contents(store_path)
                runs = bench_runs_page(page, url, repeats)
                page.close()
                scale_port = free_port()
                scale_server = start_server(scale_path, scale_port, tmp / "streamlit_scale.log")
                page = browser.new_page(viewport={"width": 1440, "height": 1400})
                scale = bench_runs_page(page, f"http://127.0.0.1:{scale_port}", repeats)
                scale["live table"] = bench_live_table(page, f"http://127.0.0.1:{scale_port}", RunStore(scale_path),
                                                       live_epochs)
                page.close()
                stop_server(scale_server)
                scale_server = None
                # (1) and (2) printed now: (4) starts servers of its own, and its numbers come last
                print(f"bench_app: streamlit + headless chromium on {os.cpu_count()} CPU cores "
                      f"(load average {os.getloadavg()[0]:.1f}){' [smoke]' if args.smoke else ''}")
                print(summary("(1) epoch commit -> point in browser chart", live, 2.0))
                print_runs_page(f"(2) Runs page, {n_runs} runs x {n_epochs} epochs", runs, 2.0, 2.0)
                print(f"    store: {describe_store(n_runs, n_epochs, 0, 0, held, fill_s, 1)}")
                print_runs_page(f"(2b) Runs page at scale, {s_runs:,} runs x {s_epochs} epochs", scale, 1.5, 1.0)
                if scale_fill is None:
                    print(f"    store: {scale_held['runs']:,} runs, {scale_held['metrics']:,} metric rows, "
                          f"{scale_held['curves']:,} curve rows ({scale_held['curve_epochs']:,} epochs), "
                          f"{scale_held['bytes'] / 1e6:,.0f} MB: reused from {scale_path} (filled earlier)")
                else:
                    described = describe_store(s_runs, s_epochs, args.curve_every, args.taus, scale_held, scale_fill,
                                               args.workers)
                    print(f"    store: {described}")
                print(summary("    live: epoch commit -> the run's row in the table", scale["live table"], 2.0))
                print("    (aims at scale: in-app <= 1.5 s, parallel coordinates <= 1 s; the live page polls every 1 s)")
                print("    live latencies: " + " ".join(f"{v:.2f}" for v in live))
                for case, values in ((f"{n_runs}", runs), (f"{s_runs}", scale)):
                    for k, v in values.items():
                        print(f"    runs page ({case} runs) {k}: " + " ".join(f"{x:.2f}" for x in v))
                sys.stdout.flush()
                idle_s, settle = (1.0, 1.0) if args.smoke else (10.0, 2.0)
                idle_before = bench_idle_cpu(browser, store_path, tmp, ["--server.fileWatcherType", "auto"], idle_s, settle)
                idle_after = bench_idle_cpu(browser, store_path, tmp, [], idle_s, settle)
                browser.close()
        finally:
            stop_server(server)
            if scale_server is not None:
                stop_server(scale_server)
    print("(3) write_epoch vs a raw single-connection write (bench/bench_store.py)")
    print(store_write_ratio(args.smoke))
    print(f"(4) server CPU, one idle tab per page ({idle_s:g} s each; % of one core; aim < 5%)")
    print(f"    {'page':<10} {'watcher auto (before)':>22} {'shipped config (after)':>23}  ratio")
    for name in IDLE_PAGES:
        b, a = idle_before[name], idle_after[name]
        print(f"    {name:<10} {b:>21.1f}% {a:>22.1f}%  {b / max(a, 0.1):5.0f}x"
              f"  ({'ok' if a < 5 else 'over the 5% aim'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
