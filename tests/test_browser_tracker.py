"""The Runs page as a tracker (issue 17) in a real headless Chromium: a filter expression, a bad one,
the diff of two selected runs, a tag with odd characters (stored exactly, shown as text, and no other run's
tags touched when the detail switches runs), delete with its confirmation (and not for a running run),
and a live update that keeps the selection.

One ``streamlit run app.py`` server on a store written with the store API (a phase-2 child, a sweep trial,
a running run, a run with files on disk). Rows are read from the data grid's own accessibility table
(``table[role=grid]`` inside the canvas: the rendered rows' cell texts and ``aria-selected``), never from
pixels. Screenshots ``tracker_filter.png``, ``tracker_diff.png``, ``tracker_delete.png`` and
``tracker_live.png`` go to :func:`test_browser.shots_folder`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_browser import CHROMIUM, chromium_page, free_port, shots_folder, start_server, stop_server

from workbench import names as N
from workbench.config import Config
from workbench.store import RunStore

pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]

# the data grid under widget key `key`: its row count, header texts and rendered rows (cell texts, selected
# or not, and the run id when a "run id" / "id" column is rendered)
GRID_JS = """(key) => {
  const t = document.querySelector(`.st-key-${key} table[role=grid]`);
  if (!t) return null;
  const heads = [...t.querySelectorAll('thead th')].map(th => th.textContent);
  const idCol = heads.findIndex(h => h === 'run id' || h === 'id');
  const rows = [...t.querySelectorAll('tbody tr')].map(tr => {
    const cells = [...tr.querySelectorAll('td')].map(td => td.textContent);
    return {selected: tr.getAttribute('aria-selected') === 'true', cells, id: idCol < 0 ? null : cells[idCol]};
  });
  return {count: Number(t.getAttribute('aria-rowcount')) - 1, heads, rows};
}"""
ODD_TAG = '<b>x</b> "q" 🌳'
FILTER = "LOSS.W >= 0.5 and tag:baseline"
BAD_FILTER = "LOSS.W >= and tag:baseline"
ROW_H = 35  # px: the data grid's row height and header height (Streamlit's default)


def config(w: float, seed: int = 0) -> dict:
    """A resolved config differing from the defaults in LOSS.W and TRAIN.SEED only (and TRAIN.EPOCHS, alike)."""
    return Config().with_overrides({"LOSS.W": w, "TRAIN.SEED": seed, "TRAIN.EPOCHS": 3}).to_dict()


def epochs(store: RunStore, run_id: str, n: int, w: float, start: int = 0) -> None:
    """Write epochs ``start`` .. ``start + n - 1`` of ``run_id`` through ``RunStore.write_epoch``."""
    for e in range(start, start + n):
        store.write_epoch(run_id, e, {N.VAL_PARTIAL_CHAIN_ACC: w + 0.01 * e, N.VAL_LOSS: 1 - w, N.TRAIN_LOSS: 1.1 - w})


def build_store(store_path: Path) -> dict[str, str]:
    """Six runs through the store API, oldest first; returns {role: run id}."""
    store = RunStore(store_path)
    ids = {}
    for role, w, seed, extra in (
        ("doomed", 0.2, 0, {}), ("base", 0.6, 1, {}), ("other", 0.9, 0, {}),
        ("trial", 0.8, 0, {"sweep_id": "sweep-x"}),
    ):
        ids[role] = store.create_run(config(w, seed), name=f"{role}-w{w}", status="running", **extra)
        epochs(store, ids[role], 3, w)
        store.update_run(ids[role], status="finished")
    ids["child"] = store.create_run(config(0.6, 1), name="base-phase2", parent_id=ids["base"], status="running")
    epochs(store, ids["child"], 2, 0.6)
    store.update_run(ids["child"], status="finished")
    for role in ("doomed", "base", "trial"):
        store.add_tags(ids[role], ["baseline"])
    # a running run: this test process is its live "trainer" (no launcher log, so reconcile leaves it alone)
    ids["live"] = store.create_run(config(0.5), name="live-w0.5", status="running")
    store.update_run(ids["live"], pid=os.getpid())
    epochs(store, ids["live"], 2, 0.5)
    # the doomed run's files: its run folder (a file in it, not a checkpoint: the page would try to load
    # one), launcher config and log
    folder = store.run_folder(ids["doomed"])
    folder.mkdir(parents=True)
    (folder / "scratch.bin").write_bytes(b"\0" * 4096)
    for sub, suffix in ((N.CONFIGS_DIR, ".yaml"), (N.LOGS_DIR, ".log")):
        path = store.run_file(sub, ids["doomed"], suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    return ids


def wait_grid(page, key: str, condition: str = "true", arg=None, timeout: float | None = None) -> dict:
    """Until the data grid ``key`` is drawn and the JS expression ``condition`` (over ``g``, the grid as
    :data:`GRID_JS` reads it, and ``arg``) holds; returns the grid."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # imported here: bench_app imports GRID_JS

    try:
        handle = page.wait_for_function(f"(arg) => {{ const g = ({GRID_JS})('{key}'); return !!g && ({condition}) && g; }}",
                                        arg=arg, timeout=timeout)
    except PlaywrightTimeout:
        typed = f"; filter field {page.locator('.st-key-ru_filter input').input_value()!r}" if key == "ru_table" else ""
        raise AssertionError(f"grid {key}: never {condition} (arg {arg}); it shows {page.evaluate(GRID_JS, key)}"
                             f"{typed}") from None
    return handle.json_value()  # the grid as the condition saw it (a rerun may redraw it right after)


def table_ids(page) -> list[str]:
    """Run ids of the rendered rows of the Runs table, top to bottom."""
    return [r["id"] for r in wait_grid(page, "ru_table")["rows"]]


def selected_ids(page) -> set[str]:
    """Run ids of the rendered rows of the Runs table that are selected."""
    return {r["id"] for r in wait_grid(page, "ru_table")["rows"] if r["selected"]}


def wait_table(page, want: set[str]) -> None:
    """Until the Runs table's rows are exactly the runs ``want``."""
    wait_grid(page, "ru_table", "g.count === arg.length && JSON.stringify(g.rows.map(r => r.id).sort()) "
              "=== JSON.stringify(arg)", sorted(want))


def wait_selected(page, run_id: str) -> None:
    """Until ``run_id``'s row of the Runs table shows as selected."""
    wait_grid(page, "ru_table", "g.rows.some(r => r.selected && r.id === arg)", run_id)


def eventually(check, timeout: float = 10.0) -> bool:
    """Poll ``check()`` until it is true or ``timeout`` seconds have passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.1)
    return bool(check())


def select_row(page, run_id: str) -> None:
    """Click the row marker (checkbox column) of ``run_id``'s row in the Runs table, then wait until the
    row is selected and the server has taken it (the caption counts the selected runs compared), as a
    user would before the next click."""
    count = len(selected_ids(page)) + 1
    row = table_ids(page).index(run_id)
    canvas = page.locator(".st-key-ru_table [data-testid='data-grid-canvas']")
    canvas.scroll_into_view_if_needed()  # the click goes to viewport coordinates
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + 15, box["y"] + ROW_H * (row + 1) + ROW_H / 2)
    wait_selected(page, run_id)
    page.get_by_text(f"comparing {count} (selected)").wait_for()


def detail_run(page, name: str) -> None:
    """Make the run named ``name`` (one of the compared runs) the Run detail's run; wait until its name shows."""
    field = page.locator(".st-key-rd_run input")
    field.click()
    field.fill(name)  # the selectbox searches its options; Enter takes the first match
    field.press("Enter")
    page.wait_for_function("(name) => (document.querySelector('.st-key-rd_name input') || {}).value === name", arg=name)


def button(page, key: str):
    """The visible button of widget ``key`` (a button with help text also has a hidden twin for sizing)."""
    return page.locator(f".st-key-{key}").get_by_role("button")


def set_filter(page, text: str) -> None:
    """Type ``text`` into the filter expression field and submit it (Enter)."""
    field = page.locator(".st-key-ru_filter input")
    field.fill(text)
    field.press("Enter")


def test_tracker_filter_diff_tag_delete_and_live(tmp_path):
    from playwright.sync_api import expect

    store_path = tmp_path / "runs" / "workbench.db"
    ids = build_store(store_path)
    store = RunStore(store_path)
    doomed_files = store.delete_plan(ids["doomed"]).paths
    assert len(doomed_files) == 3 and all(p.exists() for p in doomed_files)
    shots = shots_folder(tmp_path)
    port = free_port()
    server = start_server(store_path, port, tmp_path / "streamlit.log")
    try:
        with chromium_page(height=2400) as page:
            page.set_default_timeout(30_000)
            page.goto(f"http://127.0.0.1:{port}/runs")
            wait_table(page, set(ids.values()))
            page.evaluate("() => { window.__sameDocument = true; }")

            # a filter expression shrinks the table to the matching runs
            set_filter(page, FILTER)
            wait_table(page, {ids["base"], ids["trial"]})
            page.screenshot(path=str(shots / "tracker_filter.png"))
            # a bad one: the parser's message with its caret line under the bad token, every run shown
            set_filter(page, BAD_FILTER)
            page.locator("[data-testid='stAlert']", has_text="not applied").wait_for()
            code = page.locator("[data-testid='stCode']", has_text=BAD_FILTER).first
            code.wait_for()
            lines = code.inner_text().splitlines()
            at = next(i for i, line in enumerate(lines) if BAD_FILTER in line)
            assert lines[at + 1].index("^") == lines[at].index(BAD_FILTER) + BAD_FILTER.index("and"), lines
            wait_table(page, set(ids.values()))
            set_filter(page, "")

            # two selected runs: the diff shows only the keys that differ
            select_row(page, ids["doomed"])
            select_row(page, ids["base"])
            assert selected_ids(page) == {ids["doomed"], ids["base"]}
            diff = wait_grid(page, "rd_diff")
            keys = {r["cells"][0] for r in diff["rows"]}
            assert keys == {"LOSS.W", "TRAIN.SEED"}, diff
            page.locator(".st-key-rd_diff").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "tracker_diff.png"))

            # a tag with quotes, HTML and an emoji: stored exactly, shown as text
            detail_run(page, "base-w0.6")
            tags = page.locator(f".st-key-rd_tags_{ids['base']} input")
            tags.fill(ODD_TAG)
            tags.press("Enter")
            page.locator(f".st-key-rd_tags_{ids['base']}").get_by_text(ODD_TAG, exact=True).first.wait_for()
            assert eventually(lambda: ODD_TAG in store.tags([ids["base"]]).get(ids["base"], [])), store.tags()
            assert store.tags([ids["base"]])[ids["base"]] == sorted(["baseline", ODD_TAG])
            assert store.all_tags() == sorted(["baseline", ODD_TAG])
            wait_grid(page, "ru_table", "g.rows.some(r => r.id === arg[0] && r.cells.some(c => c.includes(arg[1])))",
                      [ids["base"], ODD_TAG])  # the table's tags column has it too, as text
            bold = page.evaluate("() => [...document.querySelectorAll('b')].filter(b => b.textContent === 'x').length")
            assert bold == 0, "the tag's <b> became an element"
            # showing another run in the detail (while the page refreshes live) writes nothing to either run
            tagged = store.tags([ids["doomed"], ids["base"]])
            for name in ("doomed-w0.2", "base-w0.6", "doomed-w0.2"):
                detail_run(page, name)
                time.sleep(1.5)  # a live refresh or two
                assert store.tags([ids["doomed"], ids["base"]]) == tagged, f"switching the detail to {name} changed tags"

            # delete: the plan names the files; confirm removes the run and its files
            detail_run(page, "doomed-w0.2")
            button(page, "rd_delete").click()
            plan = page.locator(".st-key-rd_delete_plan")
            plan.wait_for()
            text = plan.inner_text()
            for path in doomed_files:
                assert str(path) in text, f"{path} not named in the plan: {text}"
            assert store.has_run(ids["doomed"])  # nothing happens before the confirmation
            page.screenshot(path=str(shots / "tracker_delete.png"))
            button(page, "rd_delete_confirm").click()
            page.get_by_text("Deleted run").first.wait_for()
            assert not store.has_run(ids["doomed"]) and store.metrics([ids["doomed"]]).empty
            assert not [p for p in doomed_files if p.exists()], "files of the deleted run remain"
            kept = set(ids.values()) - {ids["doomed"]}
            wait_table(page, kept)

            # live: a new epoch of the running run reaches the table; the selected runs stay selected
            for role in ("live", "trial"):
                if ids[role] not in selected_ids(page):
                    select_row(page, ids[role])
            chosen = selected_ids(page)
            assert {ids["live"], ids["trial"]} <= chosen
            detail_run(page, "live-w0.5")  # a running run cannot be deleted
            expect(button(page, "rd_delete")).to_be_disabled()  # waits out the rest of the rerun
            col = wait_grid(page, "ru_table")["heads"].index("epochs")
            epochs(store, ids["live"], 1, 0.5, start=2)
            wait_grid(page, "ru_table", "g.rows.some(r => r.id === arg[0] && r.cells[arg[1]] === '3')",
                      [ids["live"], col], timeout=20_000)
            assert selected_ids(page) == chosen
            assert page.evaluate("() => window.__sameDocument === true"), "the page reloaded"
            page.screenshot(path=str(shots / "tracker_live.png"))
    finally:
        stop_server(server)
