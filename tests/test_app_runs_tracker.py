"""The Runs page as a tracker (issue 17, items 2, 5, 6, 7, 9): summaries (last / best / min / max /
selected) in the table, the scatter and the parallel coordinates; filter expressions, tags and archive;
grouping by several keys with bands; threshold curves overlaid across runs; the live table keeping the
selected runs. Every run is written through the store API (real SQLite) and the page is run in AppTest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench import names as N
from workbench import plots
from workbench.config import Config
from workbench.store import RunStore
from workbench.summaries import HOWS, metric_values

pytest.importorskip("streamlit")
from test_app import app as open_app  # noqa: E402  (one way to open the app in AppTest)
from test_app import charts, values  # noqa: E402
from test_app_tracker import plain, texts  # noqa: E402

RANKS = ["level0", "level1", "level2"]
SHOWN = {N.VAL_PARTIAL_CHAIN_ACC: "val partial-chain", N.VAL_LOSS: "val loss", N.val_acc("level0"): "acc level0"}


@pytest.fixture
def store_path(tmp_path, monkeypatch):
    path = tmp_path / "runs" / "workbench.db"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    return path


def curves_frame(level: float) -> pd.DataFrame:
    """One epoch's val threshold curves, every value shifted by ``level`` (so epochs and runs differ)."""
    tau = np.linspace(0, 1, 11)
    return pd.concat([pd.DataFrame({"split": "val", "rank": r, "curve": c, "tau": tau, "value": v})
                      for i, r in enumerate(RANKS)
                      for c, v in (("coverage", np.clip(1 - tau ** 2 - level / 10, 0, 1)),
                                   ("selective_accuracy", np.clip(0.5 + 0.4 * tau * level - 0.01 * i, 0, 1)),
                                   ("accuracy", np.clip(0.7 - 0.3 * tau + level / 10, 0, 1)))],
                     ignore_index=True)


def write_run(store: RunStore, series: dict[str, list[float]], overrides=None, name=None, status="finished",
              curves: bool = False, test_epoch: int | None = None, **kw) -> str:
    """A run of ``len(series[any])`` epochs with these metric values per epoch (and curves each epoch)."""
    cfg = Config().with_overrides({"DATA.SYNTHETIC.N": 300, **(overrides or {})}).to_dict()
    run_id = store.create_run(cfg, name=name, status="running", **kw)
    store.update_run(run_id, ranks=RANKS)
    epochs = len(next(iter(series.values())))
    for e in range(epochs):
        store.write_epoch(run_id, e, {k: v[e] for k, v in series.items()},
                          curves=curves_frame(e + len(store.runs())) if curves else None)
    if test_epoch is not None:
        store.write_once(run_id, "test", test_epoch, {N.TEST_PARTIAL_CHAIN_ACC: 0.5})
    store.update_run(run_id, status=status)
    return run_id


def table(at) -> pd.DataFrame:
    """The run table (the page's first dataframe)."""
    return at.dataframe[0].value


# ---------------------------------------------------------------------- summaries
def test_every_summary_choice_shows_metric_values_in_table_scatter_and_parcoords(store_path):
    store = RunStore(store_path)
    ids = [  # accuracy peaks mid-run, loss dips mid-run: last, best, min, max and selected all differ
        write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: [0.3, 0.8, 0.6, 0.5], N.VAL_LOSS: [1.0, 0.4, 0.9, 0.7],
                          N.val_acc("level0"): [0.1, 0.2, 0.9, 0.3]}, {"LOSS.W": 0.2}),
        write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: [0.2, 0.6, 0.7, 0.4], N.VAL_LOSS: [0.8, 0.9, 0.3, 0.5],
                          N.val_acc("level0"): [0.5, 0.4, 0.3, 0.2]}, {"LOSS.W": 0.8}),
        write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: [0.1, 0.9, float("nan")], N.VAL_LOSS: [2.0, 1.5, 1.9],
                          N.val_acc("level0"): [0.6, 0.6, 0.7]}, {"LOSS.W": 0.5}, test_epoch=1),
    ]
    at = open_app("runs")
    assert at.segmented_control(key="ru_summary").value == "last"
    assert at.segmented_control(key="ru_summary").options == list(HOWS)
    for how in HOWS:
        at.segmented_control(key="ru_summary").set_value(how).run()
        assert not at.exception, at.exception
        expected = metric_values(store.metrics(ids), how).loc[ids]
        shown = table(at).set_index("id").loc[ids]
        for key, column in SHOWN.items():
            np.testing.assert_allclose(shown[column].to_numpy(float), expected[key].to_numpy(float), err_msg=how)
        points = charts(at)["ru_scatter"]["data"][0]  # final metric vs LOSS.W: one point per run with a value
        want = expected[N.VAL_PARTIAL_CHAIN_ACC].dropna()
        assert sorted(values(points["y"])) == pytest.approx(sorted(want)), how
        assert f"**{how}**: " in texts(at)  # the caption says what the choice means
    # the choices differ on this store (else the test would prove little)
    assert metric_values(store.metrics(ids), "best")[N.VAL_LOSS].tolist() != \
        metric_values(store.metrics(ids), "last")[N.VAL_LOSS].tolist()
    at.segmented_control(key="ru_summary").set_value("best").run()
    at.segmented_control(key="ru_view").set_value("Parallel coordinates").run()
    assert not at.exception, at.exception
    dims = {d["label"]: values(d["values"]) for d in charts(at)["ru_parcoords"]["data"][0]["dimensions"]}
    best = metric_values(store.metrics(ids), "best")
    finished = [r for r in ids if not np.isnan(table(at).set_index("id").loc[r, "val partial-chain"])]
    assert sorted(dims["val partial-chain"]) == pytest.approx(sorted(best.loc[finished, N.VAL_PARTIAL_CHAIN_ACC]))
    assert sorted(dims["val loss"]) == pytest.approx(sorted(best.loc[finished, N.VAL_LOSS]))
    csv = next(b for b in at.get("download_button") if b.proto.label.startswith("Run table"))
    assert csv.proto.help.startswith("The filtered table with every config key and metric (best:")


# ---------------------------------------------------------------------- filters, tags, archive
def filter_store(store: RunStore) -> dict[str, str]:
    runs = {}
    for w, acc, status in ((0.1, 0.6, "finished"), (0.3, 0.75, "finished"), (0.5, 0.9, "stopped"),
                           (0.7, 0.65, "finished")):
        runs[w] = write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: [acc - 0.1, acc], N.VAL_LOSS: [1.0, 0.5]},
                            {"LOSS.W": w}, name=f"w{w}", status=status)
    return runs


def test_filter_expressions_select_runs_and_a_bad_one_points_at_the_token(store_path):
    store = RunStore(store_path)
    runs = filter_store(store)
    store.add_tags(runs[0.3], ["baseline"])
    store.add_tags(runs[0.5], ["baseline", "big w"])
    at = open_app("runs")
    cases = {
        "LOSS.W >= 0.3 and core/val_partial_chain_acc > 0.7": {runs[0.3], runs[0.5]},
        "LOSS.W >= 0.2 and core/val_partial_chain_acc > 0.7 and tag:baseline": {runs[0.3], runs[0.5]},
        'tag:"big w" or status == finished and LOSS.W < 0.2': {runs[0.5], runs[0.1]},
        "not tag:baseline": {runs[0.1], runs[0.7]},
        "name ~ W0.7": {runs[0.7]},
        "status != finished": {runs[0.5]},
    }
    for expression, want in cases.items():
        at.text_input(key="ru_filter").set_value(expression).run()
        assert not at.exception and not at.error, (expression, at.error)
        assert set(table(at)["id"]) == want, expression
    # the summary choice is what a metric key compares: best of w0.1 is 0.6, last of it too; w0.5's min is 0.8
    at.segmented_control(key="ru_summary").set_value("min").run()
    at.text_input(key="ru_filter").set_value("core/val_partial_chain_acc >= 0.8").run()
    assert set(table(at)["id"]) == {runs[0.5]}

    for bad, where in (("LOSS.W >> 0.3", "LOSS.W >> 0.3"), ("LOSS.WW > 0.3", "LOSS.W")):
        at.text_input(key="ru_filter").set_value(bad).run()
        assert not at.exception, at.exception
        assert at.error and "not applied" in plain(at.error[0].value)
        code = next(c.value for c in at.code if bad in c.value)
        assert "^" in code and where in code  # the caret line under the bad token; an unknown key names LOSS.W
        assert set(table(at)["id"]) == set(runs.values())  # the table then shows every run


def test_tag_filter_odd_tags_and_archived_runs_hidden_then_shown(store_path):
    store = RunStore(store_path)
    runs = filter_store(store)
    odd = ['say "hi"', "<b>bold</b>", "🚀 launch", "[x](http://e.com)"]
    store.add_tags(runs[0.1], odd)
    store.add_tags(runs[0.3], ["baseline"])
    store.set_notes(runs[0.3], "first line of a note that is long enough to be cut in the table's excerpt\nsecond")
    store.set_archived(runs[0.7])
    at = open_app("runs")
    shown = table(at).set_index("id")
    assert runs[0.7] not in shown.index and len(shown) == 3  # archived: hidden by default
    assert "1 archived hidden" in texts(at)
    assert sorted(shown.loc[runs[0.1], "tags"]) == sorted(odd)  # stored and shown as they are (a list column)
    assert not any(t in e.value for t in odd[1:] for kind in ("markdown", "caption") for e in at.get(kind))  # inert
    note = shown.loc[runs[0.3], "notes"]  # the first line, cut
    assert note.startswith("first line of a note") and note.endswith("…") and "second" not in note
    assert at.multiselect(key="ru_tag_filter").options == sorted(store.all_tags())
    at.multiselect(key="ru_tag_filter").set_value(["baseline", "<b>bold</b>"]).run()
    assert not at.exception and set(table(at)["id"]) == {runs[0.1], runs[0.3]}  # any of the tags
    at.multiselect(key="ru_tag_filter").set_value(["🚀 launch"]).run()
    assert set(table(at)["id"]) == {runs[0.1]}
    at.multiselect(key="ru_tag_filter").set_value([]).run()
    at.toggle(key="ru_show_archived").set_value(True).run()
    assert set(table(at)["id"]) == set(runs.values())
    archived = table(at).set_index("id")["archived"]  # shown with the archived runs, so they can be told apart
    assert archived.to_dict() == {r: r == runs[0.7] for r in runs.values()}
    assert "archived hidden" not in texts(at)


# ---------------------------------------------------------------------- grouping
def test_grouping_by_several_keys_draws_one_band_per_group_with_n_and_band_stats_edges(store_path):
    store = RunStore(store_path)
    rng = np.random.default_rng(0)
    acc = {}
    seeds = {(0.2, "independent"): 3, (0.2, "marginal"): 2, (0.8, "independent"): 2, (0.8, "marginal"): 1}
    for (w, head), n in seeds.items():  # 8 runs: the newest 8 are compared without a selection
        for seed in range(n):
            series = list(0.4 + w / 4 + 0.05 * np.arange(4) + 0.05 * rng.standard_normal(4))
            run_id = write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: series, N.VAL_LOSS: [1.0] * 4},
                               {"LOSS.W": w, "MODEL.HEAD": head, "TRAIN.SEED": seed})
            acc[run_id] = (w, head, series)
    at = open_app("runs")
    assert at.selectbox(key="ru_band").options == ["± 1 sd", "± 1 standard error", "95% CI (t)", "min-max"]
    at.multiselect(key="ru_group").set_value(["LOSS.W", "MODEL.HEAD"]).run()
    assert not at.exception, at.exception
    assert "Inside these groups also vary: TRAIN.SEED." in texts(at)  # seeds only: a caption, no warning
    assert not [w for w in at.warning if "Inside these groups" in plain(w.value)]
    assert at.selectbox(key="ru_band").value == plots.BANDS[0]
    for band in plots.BANDS:
        if band != plots.BANDS[0]:
            at.selectbox(key="ru_band").set_value(band).run()
        assert not at.exception, at.exception
        data = charts(at)["ru_overlay"]["data"]
        assert len(data) == 4 * 3  # 4 groups x (upper, lower, mean)
        for i, (w, head) in enumerate(seeds):
            upper, lower, mean = data[3 * i: 3 * i + 3]
            members = [s for (gw, gh, s) in acc.values() if (gw, gh) == (w, head)]
            assert mean["name"] == f"LOSS.W={w}, MODEL.HEAD={head} (n={len(members)})"
            for e in range(4):
                centre, lo, hi, n = plots.band_stats([s[e] for s in members], band)
                assert values(mean["y"])[e] == pytest.approx(centre)
                assert values(lower["y"])[e] == pytest.approx(lo) and values(upper["y"])[e] == pytest.approx(hi)
    # one key only: the head now varies inside each group, a setting (not a seed): a warning, then split by it
    at.multiselect(key="ru_group").set_value(["LOSS.W"]).run()
    warning = next(plain(w.value) for w in at.warning if "Inside these groups also vary" in plain(w.value))
    assert "MODEL.HEAD" in warning
    at.multiselect(key="ru_split_by").set_value(["MODEL.HEAD"]).run()
    names = [t["name"] for t in charts(at)["ru_overlay"]["data"] if t["name"].endswith(")")]
    assert names == [f"LOSS.W={w}, MODEL.HEAD={head} (n={n})" for (w, head), n in seeds.items()]


# ---------------------------------------------------------------------- threshold curves across runs
def test_threshold_overlay_traces_are_the_stored_curves_at_each_runs_selected_epoch(store_path):
    store = RunStore(store_path)
    tested = write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: [0.3, 0.9, 0.5, 0.6], N.VAL_LOSS: [1.0, 0.9, 0.2, 0.3]},
                       {"LOSS.W": 0.2}, curves=True, test_epoch=1)  # test rows at epoch 1: its selected epoch
    by_loss = write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: [0.3, 0.9, 0.5, 0.6], N.VAL_LOSS: [1.0, 0.9, 0.2, 0.3]},
                        {"LOSS.W": 0.8, "TRAIN.SELECT_BY": N.VAL_LOSS}, curves=True)  # no test: best val loss, 2
    at = open_app("runs")
    assert at.radio(key="ru_thresh_epoch").value == "selected"
    assert at.selectbox(key="ru_thresh_rank").value == "selective_accuracy"
    for how, epochs in (("selected", {tested: 1, by_loss: 2}), ("last", {tested: 3, by_loss: 3})):
        at.radio(key="ru_thresh_epoch").set_value(how).run()
        for curve in ("selective_accuracy", "coverage"):
            at.selectbox(key="ru_thresh_rank").set_value(curve).run()
            assert not at.exception, at.exception
            data = charts(at)["ru_thresholds"]["data"]
            assert len(data) == len(RANKS) * 2  # per rank (coarse to fine), one line per run
            for i, rank in enumerate(RANKS):
                for trace in data[2 * i: 2 * i + 2]:
                    run_id = next(r for r in epochs if r in trace["name"])
                    assert f"(epoch {epochs[run_id] + 1})" in trace["name"]  # shown 1-based
                    stored = store.curves(run_id, epochs[run_id])
                    stored = stored[(stored["rank"] == rank) & (stored["curve"] == curve)].sort_values("tau")
                    np.testing.assert_allclose(values(trace["x"]), stored["tau"])
                    np.testing.assert_allclose(values(trace["y"]), stored["value"])


# ---------------------------------------------------------------------- live
def test_live_table_keeps_the_selected_runs_when_a_new_run_and_epoch_arrive(store_path):
    store = RunStore(store_path)
    old = write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: [0.3, 0.4], N.VAL_LOSS: [1.0, 0.9]}, name="old")
    live = write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: [0.5, 0.6], N.VAL_LOSS: [1.0, 0.8]}, name="live",
                     status="running")
    at = open_app("runs")
    assert at.toggle(key="ru_live").value is True
    assert list(table(at)["id"]) == [live, old]
    at.session_state["ru_table"] = {"selection": {"rows": [1], "columns": []}}  # the user selects "old"
    at.run()
    assert "comparing 1 (selected)" in texts(at)
    assert [t["name"] for t in charts(at)["ru_overlay"]["data"]] == ["old"]

    newer = write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: [0.1], N.VAL_LOSS: [2.0]}, name="newer", status="running")
    store.write_epoch(old, 2, {N.VAL_PARTIAL_CHAIN_ACC: 0.45, N.VAL_LOSS: 0.85})  # a new epoch of the selected run
    at.run()  # what the fragment's timer does
    assert not at.exception, at.exception
    assert list(table(at)["id"]) == [newer, live, old]  # a row gained at the top
    assert "comparing 1 (selected)" in texts(at)
    overlay = charts(at)["ru_overlay"]["data"]
    assert [t["name"] for t in overlay] == ["old"]  # the same RUN, not the same row number
    assert list(values(overlay[0]["y"])) == pytest.approx([0.3, 0.4, 0.45])  # with its new epoch
    assert list(at.session_state["ru_table"]["selection"]["rows"]) == [2]
    assert at.selectbox(key="rd_run").value == old  # the detail below follows the selection
    at.text_input(key="ru_filter").set_value("name ~ ol").run()  # a filter that moves rows keeps it too
    assert list(table(at)["id"]) == [old] and "comparing 1 (selected)" in texts(at)


@pytest.mark.browser
@pytest.mark.slow
def test_live_selection_survives_a_new_row_in_a_real_browser(tmp_path):
    """The same in headless Chromium, with no interaction after the click: the fragment's timer redraws
    the table with a new run on top, the clicked run stays checked (row 3 now) and its curve grows."""
    from pathlib import Path

    from test_browser import CHROMIUM, chromium_page, free_port, start_server, stop_server

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    path = tmp_path / "runs" / "workbench.db"
    store = RunStore(path)
    old = write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: [0.3, 0.4], N.VAL_LOSS: [1.0, 0.9]}, name="old")
    write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: [0.5, 0.6], N.VAL_LOSS: [1.0, 0.8]}, name="live", status="running")
    overlay = ("() => document.querySelector('.st-key-ru_overlay .js-plotly-plot')._fullData"
               ".map(t => [t.name, t.x.length])")
    comparing = ("() => [...document.querySelectorAll('[data-testid=stCaptionContainer]')].map(e => e.innerText)"
                 ".find(t => t.includes('comparing'))")
    port = free_port()
    proc = start_server(path, port, tmp_path / "streamlit.log")
    try:
        with chromium_page(1400) as page:
            page.goto(f"http://127.0.0.1:{port}/runs")
            page.wait_for_selector(".st-key-ru_overlay .js-plotly-plot svg.main-svg", timeout=60_000)
            box = page.locator(".st-key-ru_table [data-testid='stDataFrameResizable']").bounding_box()
            row_px = 35  # the grid's header and row height
            page.mouse.click(box["x"] + 15, box["y"] + row_px + row_px + row_px / 2)  # row 2's checkbox: "old"
            page.wait_for_function(f"() => ({comparing})() && ({comparing})().includes('comparing 1 (selected)')",
                                   timeout=30_000)
            page.wait_for_function(f"() => JSON.stringify(({overlay})()) == JSON.stringify([['old', 2]])",
                                   timeout=30_000)
            write_run(store, {N.VAL_PARTIAL_CHAIN_ACC: [0.1], N.VAL_LOSS: [2.0]}, name="newer", status="running")
            store.write_epoch(old, 2, {N.VAL_PARTIAL_CHAIN_ACC: 0.45, N.VAL_LOSS: 0.85})
            page.wait_for_function(f"() => JSON.stringify(({overlay})()) == JSON.stringify([['old', 3]])",
                                   timeout=30_000)
            page.wait_for_timeout(1500)  # another timer refresh: nothing drifts
            assert page.evaluate(overlay) == [["old", 3]]
            assert "3 of 3 runs shown; comparing 1 (selected)." in page.evaluate(comparing)
    finally:
        stop_server(proc)
