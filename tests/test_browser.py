"""The dashboard in a real headless Chromium: start a run from the Train page and watch its chart grow.

Starts ``streamlit run app.py`` on a free port with a tmp run store, drives it with Playwright, and
saves the screenshots ``train_live.png``, ``runs.png``, ``runs_evaluation.png`` and ``data_images.png`` (to ``$WORKBENCH_SCREENSHOTS``, e.g. ``docs/``). Waits for chart SVGs and for
plotly's data in the DOM, never for "page load".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from workbench.config import Config
from workbench.launch import ACTIVE, launch_run, run_alive, stop_run
from workbench.store import RunStore

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
# screenshots go to $WORKBENCH_SCREENSHOTS (e.g. docs/ when refreshing the README's images);
# by default to the test's own folder, so a test run never rewrites tracked files
SHOTS_ENV = "WORKBENCH_SCREENSHOTS"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]

# the chart whose traces include partial-chain accuracy, and its number of epochs (plotly's parsed data)
CHAIN_CHART_JS = """() => {
  const g = [...document.querySelectorAll('.js-plotly-plot')]
    .find(g => (g._fullData || []).some(t => (t.name || '').includes('partial-chain')));
  if (!g || !g.querySelector('svg.main-svg')) return -1;
  const t = g._fullData.find(t => t.name === 'val partial-chain');
  return t && t.x ? t.x.length : 0;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int, log: Path, flags: list[str] | None = None) -> subprocess.Popen:
    """``streamlit run app.py`` on 127.0.0.1:``port``; ``flags`` are extra ``--server.*`` options (default:
    none, so the shipped ``.streamlit/config.toml`` applies, as for ``make run``)."""
    env = dict(os.environ, WORKBENCH_STORE=str(store), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port), *(flags or [])]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return proc
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"streamlit did not answer on port {port}:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tiny_runs(store_path: Path) -> list[str]:
    """Three small real runs (w = 0.2, 0.5, 0.8) for the Runs page, launched in the background."""
    ids = []
    for w in (0.2, 0.5, 0.8):
        cfg = Config().with_overrides({
            "DATA.SYNTHETIC.N": 600, "MODEL.HIDDEN": [32], "TRAIN.EPOCHS": 10, "TRAIN.BATCH_SIZE": 32,
            "TRAIN.LR": 0.01, "TRAIN.NUM_THREADS": 1, "LOSS.W": w, "TRACKING.STORE": str(store_path),
            "SCHEDULE.NULL_MASKING.END_EPOCH": 5})
        ids.append(launch_run(cfg, store_path, name=f"tiny-w{w}"))
    return ids


@contextmanager
def chromium_page(height: int):
    """A page of headless Chromium, 1440 px wide and ``height`` px tall; the browser closes however the test ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1440, "height": height})
        finally:
            browser.close()


def shots_folder(tmp_path: Path) -> Path:
    """Where screenshots go: ``$WORKBENCH_SCREENSHOTS`` (e.g. ``docs`` for the README's), else the test's folder."""
    folder = Path(os.environ.get(SHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sidebar(page, title: str) -> None:
    """Navigate inside the app (same session, so the Data page's choice carries over)."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()


def wait_store(store: RunStore, run_ids, statuses, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(store.run(r)["status"] in statuses for r in run_ids):
            return
        time.sleep(0.5)
    raise AssertionError({r: store.run(r)["status"] for r in run_ids})


@pytest.fixture
def server(tmp_path):
    store_path = tmp_path / "runs" / "workbench.db"
    port = free_port()
    proc = start_server(store_path, port, tmp_path / "streamlit.log")
    yield f"http://127.0.0.1:{port}", store_path
    stop_server(proc)
    store = RunStore(store_path)
    for row in store.runs().to_dict("records"):
        if row["status"] in ACTIVE and row["pid"] and run_alive(int(row["pid"]), row["id"]):
            stop_run(row["id"], store_path, force=True)


def test_live_chart_grows_without_reload(server, tmp_path):
    url, store_path = server
    store = RunStore(store_path)
    background = tiny_runs(store_path)  # they train while the browser starts
    shots_dir = shots_folder(tmp_path)
    with chromium_page(height=1000) as page:
        page.set_default_timeout(90_000)
        # Data page: a 1,500-sample synthetic set, so epochs are short on a busy 2-core machine
        page.goto(f"{url}/")  # the Data page is the default page
        page.wait_for_selector(".st-key-sunburst .js-plotly-plot svg.main-svg")
        n = page.locator(".st-key-d_n input")
        n.fill("1500")
        n.press("Enter")
        page.get_by_text("1,500 samples").wait_for()
        sidebar(page, "Train")
        page.wait_for_selector(".st-key-schedule_preview .js-plotly-plot svg.main-svg")
        assert "N=1,500" in page.inner_text("body")
        epochs = page.locator(".st-key-tr_epochs input")
        epochs.fill("400")  # long enough to watch; the test stops it
        epochs.press("Enter")
        page.wait_for_function("""() => [...document.querySelectorAll('.js-plotly-plot')].some(g =>
            (g._fullData || []).some(t => t.name === 'epoch mean (logged)' && t.x.length === 400))""")
        wait_store(store, background, ("finished", "failed", "stopped"), timeout=120)
        page.locator(".st-key-tr_start button").click()
        page.get_by_text("Started run").wait_for()
        run_id = store.runs()["id"][0]
        assert run_id not in background
        assert store.run(run_id)["config"]["TRAIN"]["EPOCHS"] == 400

        # the live chart appears with >= 2 epochs, then grows with no page reload
        page.wait_for_function(f"() => ({CHAIN_CHART_JS})() >= 2", timeout=120_000)
        page.evaluate("() => { window.__sameDocument = true; }")
        first = page.evaluate(CHAIN_CHART_JS)
        page.wait_for_function(f"() => ({CHAIN_CHART_JS})() >= {first + 3}", timeout=90_000)
        grown = page.evaluate(CHAIN_CHART_JS)
        assert grown > first
        assert page.evaluate("() => window.__sameDocument === true"), "the page reloaded"
        assert store.run(run_id)["status"] == "running"

        legend = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
            .map(g => g.querySelector('.legend') ? g.querySelector('.legend').textContent : '').join(' | ')""")
        assert "val partial-chain" in legend and "val chain" in legend
        body = page.inner_text("body")
        assert run_id in body and "val partial-chain acc" in body
        page.set_viewport_size({"width": 1440, "height": 2450})
        page.get_by_text("Watch a run").scroll_into_view_if_needed()
        page.wait_for_function(f"() => ({CHAIN_CHART_JS})() >= {max(grown + 1, 10)}", timeout=90_000)
        page.screenshot(path=str(shots_dir / "train_live.png"))

        # stop from the page: the trainer stops after its current epoch
        page.locator(".st-key-tr_stop").get_by_role("button", name="Stop").click()
        wait_store(store, [run_id], ("stopped",), timeout=60)
        page.get_by_text("stopped").first.wait_for()

        # the Runs page: table, overlay and parallel coordinates of the five runs
        page.set_viewport_size({"width": 1440, "height": 2150})
        sidebar(page, "Runs")
        page.wait_for_selector(".st-key-ru_overlay .js-plotly-plot svg.main-svg")
        page.wait_for_selector(".st-key-ru_scatter .js-plotly-plot svg.main-svg")
        page.locator(".st-key-ru_view").get_by_text("Parallel coordinates").click()
        page.wait_for_selector(".st-key-ru_parcoords .js-plotly-plot svg.main-svg")
        body = page.inner_text("body")
        assert "4 of 4 runs shown" in body, body[:2000]
        overlay = page.evaluate("""() => document.querySelector('.st-key-ru_overlay .js-plotly-plot')
            ._fullData.map(t => t.name)""")
        assert len(overlay) == 4 and "tiny-w0.2" in overlay
        page.locator("h1").first.scroll_into_view_if_needed()  # the view switch scrolled down: the table on top
        page.screenshot(path=str(shots_dir / "runs.png"))


def test_server_restart_while_a_run_trains_picks_the_run_up_again(tmp_path):
    """Kill the streamlit server mid-run: training goes on (its own process), and a new server's
    Train page shows the same run, with the epochs trained meanwhile, still growing live."""
    store_path = tmp_path / "runs" / "workbench.db"
    cfg = Config().with_overrides({
        "DATA.SYNTHETIC.N": 1500, "MODEL.HIDDEN": [32], "TRAIN.EPOCHS": 400, "TRAIN.NUM_THREADS": 1,
        "TRACKING.STORE": str(store_path)})
    run_id = launch_run(cfg, store_path, name="survives-restart")
    store = RunStore(store_path)
    port = free_port()
    server = start_server(store_path, port, tmp_path / "first.log")
    try:
        with chromium_page(height=2000) as page:
            page.set_default_timeout(90_000)
            page.goto(f"http://127.0.0.1:{port}/train")
            page.wait_for_function(f"() => ({CHAIN_CHART_JS})() >= 2", timeout=120_000)
            before = page.evaluate(CHAIN_CHART_JS)

            stop_server(server)  # the dashboard goes away ...
            time.sleep(2)
            assert store.run(run_id)["status"] == "running"  # ... the run does not
            server = start_server(store_path, port, tmp_path / "second.log")

            page.goto(f"http://127.0.0.1:{port}/train")  # a fresh session on the new server
            page.wait_for_function(f"() => ({CHAIN_CHART_JS})() > {before}", timeout=120_000)
            after = page.evaluate(CHAIN_CHART_JS)
            assert run_id in page.inner_text("body")
            page.wait_for_function(f"() => ({CHAIN_CHART_JS})() >= {after + 2}", timeout=90_000)
    finally:
        stop_server(server)
        stop_run(run_id, store_path, force=True)


LOCAL_HOSTS = ("127.0.0.1", "localhost")
INLINE_SCHEMES = ("data", "blob", "about")  # loaded from the page itself, not fetched


def test_nothing_is_fetched_from_outside(server):
    """The dashboard works offline: every request and websocket of the Data, Train, Runs and Sweeps
    pages goes to the local server (no favicon from fonts.gstatic.com, no web font, no CDN), and the
    favicon is inline. Also: the class-count bars get a readable plot area (not a 50 px sliver)."""
    from urllib.parse import urlsplit

    url, _ = server
    fetched: list[str] = []
    with chromium_page(height=1000) as page:
        page.set_default_timeout(60_000)
        page.on("request", lambda request: fetched.append(request.url))
        page.on("websocket", lambda ws: fetched.append(ws.url))
        page.goto(f"{url}/")
        page.wait_for_selector(".st-key-sunburst .js-plotly-plot svg.main-svg")
        page.get_by_role("tab", name="Class counts").click()
        page.wait_for_selector(".st-key-class_counts .js-plotly-plot svg.main-svg")
        bars, plot_h = page.evaluate("""() => { const g = document.querySelector('.st-key-class_counts .js-plotly-plot');
            return [g._fullData[0].y.length, g._fullLayout._size.h]; }""")
        assert plot_h >= 15 * bars, f"{bars} bars in a plot area {plot_h} px high"
        for title in ("Train", "Runs", "Sweeps"):
            sidebar(page, title)
            page.get_by_role("heading", name=title).first.wait_for()  # the Sweeps title has an icon
        page.wait_for_timeout(1000)  # late fetches (favicons, fonts) have had their chance
        favicon = page.evaluate("() => document.querySelector(\"link[rel='shortcut icon']\").href")
    outside = [u for u in fetched
               if urlsplit(u).scheme not in INLINE_SCHEMES and urlsplit(u).hostname not in LOCAL_HOSTS]
    assert not outside, f"fetched from outside {LOCAL_HOSTS}: {sorted(set(outside))}"
    assert any(urlsplit(u).hostname in LOCAL_HOSTS for u in fetched), "no request was recorded at all"
    assert favicon.startswith("data:image/svg+xml"), f"favicon {favicon[:100]!r} is not inline"


def test_enter_in_the_sweeps_form_does_not_start_a_sweep(server):
    """Enter in a text field of the Sweeps form used to submit it: each Enter started one more sweep,
    each with its own Ray instance. Now only the Start button starts one."""
    from workbench.launch import active_sweeps, stop_sweep
    from workbench.sweep import read_sweep_status, sweep_ids_with_records

    url, store_path = server
    try:
        with chromium_page(height=1000) as page:
            page.set_default_timeout(60_000)
            page.goto(f"{url}/sweeps")
            field = page.locator(".st-key-sw_w input")
            field.fill("0.2, 0.8")
            field.press("Enter")
            page.wait_for_timeout(3000)  # a submitted form reruns and launches within this
            assert not sweep_ids_with_records(store_path) and not (store_path.parent / "logs").exists()
            assert "Started sweep" not in page.inner_text("body")
            assert field.input_value() == "0.2, 0.8"  # the form is still there, with what was typed

            # the button does start one: Enter was the only thing that must not
            page.get_by_role("button", name="Start sweep").click()
            page.get_by_text("Started sweep").wait_for()
            started = sweep_ids_with_records(store_path)
            assert len(started) == 1 and read_sweep_status(store_path, started[0])["grid"]["LOSS.W"] == [0.2, 0.8]
    finally:
        for record in active_sweeps(RunStore(store_path)):
            stop_sweep(record["id"], store_path)


THUMBNAILS_JS = """() => {
  const g = document.querySelector('.st-key-thumbnails .js-plotly-plot');
  if (!g || !g.querySelector('svg.main-svg image') || !g._fullLayout) return null;
  const ticks = [...g.querySelectorAll('.ytick text')].map(t => t.textContent);
  const img = g.querySelector('svg.main-svg image').getBoundingClientRect();
  return {ticks, width: img.width, height: img.height, types: g._fullData.map(t => t.type)};
}"""


def test_thumbnail_grid_per_class_in_a_real_browser(server, tmp_path):
    """The Data page with the built-in animal_mnist: the thumbnail grid draws beside the sunburst as a
    real image with one labelled row per animal (and the birds' (null) row), and follows the rank picked."""
    import json

    from workbench.names import UI_STATE_FILE

    pytest.importorskip("workbench.images")
    url, store_path = server
    # the dataset a new session starts with (the app restores it from the store folder)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    (store_path.parent / UI_STATE_FILE).write_text(json.dumps(
        {"form": {}, "data": {"NAME": "animal_mnist", "VAL_FRACTION": 0.2, "SEED": 0}}))
    shots_dir = shots_folder(tmp_path)
    with chromium_page(height=1300) as page:
        page.set_default_timeout(90_000)
        page.goto(f"{url}/")
        page.wait_for_selector(".st-key-sunburst .js-plotly-plot svg.main-svg")
        page.wait_for_function(f"() => ({THUMBNAILS_JS})() !== null")
        grid = page.evaluate(THUMBNAILS_JS)
        assert grid["types"] == ["image"]
        assert "cat (1,000)" in grid["ticks"] and "zebra (1,000)" in grid["ticks"], grid["ticks"]
        assert "(null) (1,000)" in grid["ticks"]  # birds: labelled at class only
        assert grid["width"] > 200 and grid["height"] > 200, grid  # drawn, not a sliver
        page.screenshot(path=str(shots_dir / "data_images.png"))
        # another rank: the rows follow
        page.locator(".st-key-d_thumb_rank").click()
        page.get_by_role("option", name="class", exact=True).click()
        page.wait_for_function(f"() => (({THUMBNAILS_JS})() || {{ticks: []}}).ticks.includes('Aves (1,000)')")
        assert page.evaluate(THUMBNAILS_JS)["ticks"] == ["Mammalia (9,000)", "Aves (1,000)"]


EVAL_HEATMAP_JS = """() => {
  const g = document.querySelector('.st-key-ru_ev_heatmap .js-plotly-plot');
  if (!g || !g.querySelector('svg.main-svg') || !g._fullData) return null;
  const t = g._fullData[0];
  return {type: t.type, x: [...t.x]};
}"""


def test_runs_page_shows_confusions_and_predictions_of_a_trained_run(server, tmp_path):
    """The Runs page's evaluation of a real trained run (Trainer, 2 epochs): the test table, the confusion
    heatmap drawn by plotly, and the predictions table (a real data grid), then the same for another rank."""
    import json

    from workbench.plots import NULL_LABEL
    from workbench.trainer import Trainer

    url, store_path = server
    cfg = Config().with_overrides({
        "DATA.SYNTHETIC.N": 300, "MODEL.HIDDEN": [16], "TRAIN.EPOCHS": 2, "TRAIN.BATCH_SIZE": 64,
        "TRAIN.NUM_THREADS": 1, "TRACKING.STORE": str(store_path), "TRACKING.RUN_NAME": "evaluated"})
    trainer = Trainer(cfg, store=RunStore(store_path), progress=False)
    assert trainer.fit() == "finished"
    ranks = list(trainer.taxonomy.ranks)
    shots_dir = shots_folder(tmp_path)
    with chromium_page(height=2400) as page:
        page.set_default_timeout(90_000)
        page.goto(f"{url}/runs")
        page.wait_for_function(f"() => ({EVAL_HEATMAP_JS})() !== null")
        heat = page.evaluate(EVAL_HEATMAP_JS)
        finest = [NULL_LABEL, *trainer.taxonomy.vocab[-1][1:]]
        assert heat["type"] == "heatmap" and heat["x"] == finest, heat
        # the test numbers and the predictions table: real data grids with their rows
        for key in ("ru_ev_test_table", "ru_ev_confusions", "ru_ev_predictions"):
            page.wait_for_selector(f".st-key-{key} [data-testid='stDataFrame'] canvas")
        body = page.inner_text("body")
        assert "Selected epoch" in body and "samples of the test split" in body, body[-3000:]
        assert "Weights: best.pt" in body
        page.locator(".st-key-ru_ev_heatmap").scroll_into_view_if_needed()
        page.screenshot(path=str(shots_dir / "runs_evaluation.png"))
        # another rank: the heatmap follows
        page.locator(".st-key-ru_ev_rank").click()
        page.get_by_role("option", name=ranks[0], exact=True).click()
        coarse = [NULL_LABEL, *trainer.taxonomy.vocab[0][1:]]
        want = json.dumps(coarse, separators=(",", ":"))
        page.wait_for_function(f"() => JSON.stringify((({EVAL_HEATMAP_JS})() || {{x: []}}).x) === '{want}'")
