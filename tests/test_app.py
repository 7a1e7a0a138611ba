"""The Streamlit dashboard, headless (streamlit.testing.v1.AppTest), against a tmp run store.

Runs started from the Train page are real subprocesses (``python -m workbench train``) on a tiny
synthetic set; the tests poll the store until they end, then rerun the page and check its elements
and the store. AppTest does not fire fragment timers, so a rerun stands in for the live refresh.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from workbench.config import Config
from workbench.launch import ACTIVE, launch_run, log_path, reconcile, run_alive, stop_run
from workbench.store import RunStore

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
TIMEOUT = 90  # seconds for a tiny subprocess run on a loaded 2-core machine
TINY_DATA = {"d_n": 300}


# ---------------------------------------------------------------------- helpers
@pytest.fixture
def store_path(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs" / "workbench.db"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    yield path
    if path.exists():  # never leave a training process behind
        store = RunStore(path)
        for row in store.runs().to_dict("records"):
            if row["status"] in ACTIVE and row["pid"] and run_alive(int(row["pid"]), row["id"]):
                stop_run(row["id"], path, force=True)


def tiny_config(store_path: Path, **overrides) -> Config:
    base = {"DATA.SYNTHETIC.N": 300, "MODEL.HIDDEN": [16], "TRAIN.EPOCHS": 2, "TRAIN.BATCH_SIZE": 64,
            "TRAIN.NUM_THREADS": 1, "TRACKING.STORE": str(store_path)}
    return Config().with_overrides({**base, **overrides})


def app(page: str | None = None, run: str | None = None, **state) -> AppTest:
    """The app, run once on its default (Data) page, then switched to ``page`` with ``state`` preset
    (``run``: the ``?run=`` query parameter the Train page follows)."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    if run:
        at.query_params["run"] = run
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, at.exception
    return at


def use_tiny_data(at: AppTest) -> AppTest:
    """On the Data page: a 300-sample synthetic set (the Train page then trains on it)."""
    at.switch_page("app_pages/data.py").run()
    at.number_input(key="d_n").set_value(300).run()
    assert not at.exception
    assert at.session_state["data_cfg"]["SYNTHETIC"]["N"] == 300
    return at


def wait_for(store: RunStore, run_id: str, statuses=("finished", "failed", "stopped"), timeout=TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reconcile(store, [run_id])
        run = store.run(run_id)
        if run["status"] in statuses:
            return run
        time.sleep(0.3)
    tail = log_path(store, run_id).read_text() if log_path(store, run_id).exists() else ""
    raise AssertionError(f"run {run_id} still {store.run(run_id)['status']} after {timeout} s; log:\n{tail}")


def values(v) -> np.ndarray:
    """A plotly JSON array: a plain list or ``{"dtype": ..., "bdata": base64}``."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly specs by the chart's key (the suffix of the element id)."""
    out = {}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        key = chart.proto.id.rsplit("-", 1)[-1]
        out[key] = spec
    return out


def traces(spec: dict) -> dict[str, dict]:
    return {t.get("name"): t for t in spec["data"]}


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "success", "warning", "error", "code")
             for e in at.get(kind) if hasattr(e, "value")]
    return "\n".join(map(str, parts))


# ---------------------------------------------------------------------- pages render
def test_data_page_defaults(store_path):
    at = app()
    assert at.title[0].value == "Data"
    specs = charts(at)
    assert {"sunburst", "class_counts"} <= set(specs)
    assert specs["sunburst"]["data"][0]["type"] == "sunburst"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Ranks"] == "level0 > level1 > level2"
    assert "Train page will train on **synthetic**" in texts(at)
    # summary_frame: one row per rank with the null rate
    summary = at.dataframe[0].value
    assert list(summary["rank"]) == ["level0", "level1", "level2"]
    assert summary["null_rate"].iloc[0] == 0.0 and summary["null_rate"].iloc[2] > 0.2
    assert "row 0 traced" in at.code[0].value


def test_data_page_synthetic_knobs_and_olive(store_path):
    at = app()
    at.text_input(key="d_branching").set_value("2, 4").run()
    at.text_input(key="d_nulls").set_value("0, 0.5").run()
    assert not at.exception and not at.error
    assert {m.label: m.value for m in at.metric}["Ranks"] == "level0 > level1"
    at.text_input(key="d_nulls").set_value("0, x").run()
    assert "'x' is not a valid float" in at.error[0].value
    at.text_input(key="d_nulls").set_value("0, 0.5, 0.5").run()  # one rate too many: the config's message
    assert "NULL_RATES" in at.error[0].value
    at.selectbox(key="d_name").set_value("olive").run()
    assert not at.exception and not at.error
    assert {m.label: m.value for m in at.metric}["Ranks"] == "region > area"
    assert at.session_state["data_cfg"]["NAME"] == "olive"


GOOD_CSV = "order,family,x1,x2,w\n" + "A,a1,0.1,1.0,1\nA,a2,0.3,0.5,1\nB,b1,1.2,0.1,2\nB,,1.0,0.3,1\nA,a1,0.2,0.9,1\n" * 4


def test_upload_maps_columns_and_loads(store_path):
    at = app()
    at.segmented_control(key="d_source").set_value("Upload a file").run()
    assert "Upload a table" in texts(at)
    at.file_uploader(key="d_upload").set_value(("my data/../../x.csv", GOOD_CSV.encode(), "text/csv")).run()
    assert not at.exception, at.exception
    assert at.multiselect(key="d_ranks").value == ["order", "family"]  # the text columns, in file order
    at.multiselect(key="d_feats").set_value(["x1", "x2"]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    data = at.session_state["data_cfg"]
    assert data["NAME"] == "file" and data["RANKS"] == ["order", "family"] and data["FEATURES"] == ["x1", "x2"]
    saved = Path(data["PATH"])
    uploads = (store_path.parent / "uploads").resolve()
    # the content hash names the folder; the file keeps the uploaded name
    assert saved.parent.parent == uploads and saved.is_file() and saved.name == "x.csv"
    assert {m.label: m.value for m in at.metric}["Samples"] == "20"
    assert {m.label: m.value for m in at.metric}["Ranks"] == "order > family"


@pytest.mark.parametrize("content, features, message", [
    ("order,family,x1\nA,a1,0.1\nA,a2,oops\n", ["x1"], "column 'x1', row 3 (spreadsheet row numbers, header = row 1): expected a finite number, got 'oops'"),
    ("order,family,x1\nA,a1,0.1\nB,a1,0.2\n", None, "'a1'"),  # a1 under two orders: the taxonomy's message
    ("order,family\nA,a1\n", None, "no feature columns found"),
    ("", None, "file is empty"),
])
def test_bad_upload_shows_library_error(store_path, content, features, message):
    at = app()
    at.segmented_control(key="d_source").set_value("Upload a file").run()
    at.file_uploader(key="d_upload").set_value(("bad.csv", content.encode(), "text/csv")).run()
    if features is not None:
        at.multiselect(key="d_ranks").set_value(["order", "family"]).run()
        at.multiselect(key="d_feats").set_value(features).run()
    assert not at.exception, at.exception
    assert at.error, texts(at)
    assert message in at.error[0].value
    assert "Traceback" not in texts(at)
    assert at.session_state["data_cfg"] is None or at.session_state["data_cfg"]["NAME"] != "file"


def test_upload_path_cannot_escape_folder(tmp_path):
    from app_pages._shared import safe_upload_path, save_upload
    from workbench.data import DataError

    for name in ("../../etc/passwd.csv", "..\\..\\evil.parquet", "/abs/path/.hidden.csv", "a b;rm -rf.csv"):
        p = safe_upload_path(tmp_path / "uploads", name, b"x")
        assert p.parent.parent == (tmp_path / "uploads").resolve()
        assert ".." not in p.name and "/" not in p.name and not p.name.startswith(".")
    with pytest.raises(DataError, match="unsupported file type"):
        safe_upload_path(tmp_path, "run.sh", b"x")
    with pytest.raises(DataError, match="upload limit"):
        save_upload(tmp_path, "big.csv", b"0" * (51 * 1024 * 1024))


def test_runs_and_train_pages_empty_store(store_path):
    at = app("train")
    assert "No runs yet" in texts(at)
    assert "schedule_preview" in charts(at)
    at.switch_page("app_pages/runs.py").run()
    assert not at.exception and "No runs yet" in texts(at)


def test_schedule_preview_follows_form(store_path):
    at = app("train")
    at.number_input(key="tr_epochs").set_value(8).run()
    at.number_input(key="tr_e1").set_value(4).run()
    at.slider(key="tr_p0").set_value(0.2).run()
    per_epoch = traces(charts(at)["schedule_preview"])["epoch mean (logged)"]
    assert list(values(per_epoch["x"])) == [e + 0.5 for e in range(8)]  # the middle of each epoch's span
    assert values(per_epoch["y"])[-1] == pytest.approx(1.0) and values(per_epoch["y"])[0] > 0.2
    at.number_input(key="tr_e0").set_value(6).run()  # the ramp starts after it ends: the schedule's message
    assert "START_EPOCH" in at.error[0].value and not at.exception
    at.button(key="tr_start").click().run()
    assert any("START_EPOCH" in e.value for e in at.error) and RunStore(store_path).runs().empty
    at.toggle(key="tr_phase1").set_value(True).run()  # phase 1: p = 0 throughout, the ramp is not consulted
    assert np.all(values(traces(charts(at)["schedule_preview"])["p(t) per batch"]["y"]) == 0)
    assert at.number_input(key="tr_e0").proto.disabled


def test_bad_form_value_is_an_error_not_a_run(store_path):
    at = app("train")
    at.text_input(key="tr_hidden").set_value("64, lots").run()
    at.button(key="tr_start").click().run()
    assert not at.exception
    assert any("Hidden layer sizes" in e.value for e in at.error)
    assert RunStore(store_path).runs().empty


# ---------------------------------------------------------------------- launch, watch, phase 2
@pytest.mark.slow
def test_start_watch_and_continue_as_phase2(store_path):
    at = use_tiny_data(app())
    at.switch_page("app_pages/train.py").run()
    at.number_input(key="tr_epochs").set_value(2).run()
    at.slider(key="tr_w").set_value(0.6).run()
    at.radio(key="tr_head").set_value("marginal").run()
    at.toggle(key="tr_phase1").set_value(True).run()
    at.text_input(key="tr_hidden").set_value("16").run()
    at.button(key="tr_start").click().run()
    assert not at.exception, at.exception
    store = RunStore(store_path)
    runs = store.runs()
    assert len(runs) == 1
    run_id = runs["id"][0]
    assert f"Started run `{run_id}`" in at.success[0].value
    row = store.run(run_id)
    assert row["status"] in ("queued", "running", "finished")
    assert row["config"]["LOSS"]["W"] == 0.6 and row["config"]["MODEL"]["HEAD"] == "marginal"
    assert row["config"]["TRAIN"]["PHASE1_MASK_NULL_LOSS"] is True
    assert Path(row["config"]["TRACKING"]["STORE"]) == store_path.resolve()
    assert (store_path.parent / "configs" / f"{run_id}.yaml").is_file()

    row = wait_for(store, run_id)
    assert row["status"] == "finished", row["error"]
    wide = store.metrics_wide([run_id])
    assert list(wide["epoch"]) == [0, 1]
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="tr_watch").value == run_id
    specs = charts(at)
    assert {"live_loss", "live_chain", "live_rank", "live_tau"} <= set(specs)
    chain = traces(specs["live_chain"])
    assert set(chain) == {"train chain", "val chain", "train partial-chain", "val partial-chain"}
    assert list(values(chain["val partial-chain"]["x"])) == [1, 2]  # displayed epochs are 1-based
    np.testing.assert_allclose(values(chain["val partial-chain"]["y"]), wide["core/val_partial_chain_acc"])
    rank_traces = traces(specs["live_rank"])
    assert {"val level0", "val level1", "val level2"} <= set(rank_traces)
    tau = specs["live_tau"]
    stars = [t for t in tau["data"] if t.get("mode") == "markers+text"]
    assert len(stars) == 3
    assert values(stars[0]["x"])[0] == pytest.approx(wide["val/best_tau/level0"].iloc[-1])
    assert [p.proto.text for p in at.get("progress")] == ["epoch 2 / 2"]
    metric = {m.label: m.value for m in at.metric}
    assert metric["val partial-chain acc"] == f"{wide['core/val_partial_chain_acc'].iloc[-1]:.3f}"
    # the threshold slider picks an earlier epoch's curves
    at.slider[-1].set_value(1).run()
    assert not at.exception

    # continue as phase 2
    at.slider(key="p2_p1").set_value(0.8).run()
    at.button(key="tr_phase2").click().run()
    assert not at.exception, at.exception
    child_id = at.selectbox(key="tr_watch").value
    assert child_id != run_id
    child = store.run(child_id)
    assert child["parent_id"] == run_id
    assert child["config"]["TRAIN"]["INIT_FROM"] == run_id
    assert child["config"]["TRAIN"]["PHASE1_MASK_NULL_LOSS"] is False
    assert child["config"]["SCHEDULE"]["NULL_MASKING"]["END_PROB"] == 0.8
    child = wait_for(store, child_id)
    assert child["status"] == "finished", child["error"]
    at.run()
    assert f"phase 2 of `{run_id}`" in texts(at)

    # both runs on the Runs page, overlaid
    at.switch_page("app_pages/runs.py").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert set(table["id"]) == {run_id, child_id}
    overlay = charts(at)["ru_overlay"]
    assert len(overlay["data"]) == 2
    assert "ru_scatter" in charts(at)


@pytest.mark.slow
def test_stop_button_stops_a_run(store_path):
    at = use_tiny_data(app())
    at.switch_page("app_pages/train.py").run()
    at.number_input(key="tr_epochs").set_value(5000).run()
    at.button(key="tr_start").click().run()
    store = RunStore(store_path)
    run_id = store.runs()["id"][0]
    wait_for(store, run_id, statuses=("running",))
    at.run()
    assert at.button(key="tr_stop")
    at.button(key="tr_stop").click().run()
    assert not at.exception, at.exception
    assert store.stop_requested(run_id)
    row = wait_for(store, run_id)
    assert row["status"] == "stopped" and 1 <= row["epochs_done"] < 5000
    at.run()
    assert "tr_stop" not in [b.key for b in at.button]
    assert "stopped" in texts(at)


@pytest.mark.slow
def test_dead_process_is_failed_with_its_log(store_path):
    """A process that exits without reporting (here: the CLI rejects a missing data file) is reconciled."""
    cfg = tiny_config(store_path, **{"DATA.NAME": "file", "DATA.PATH": str(store_path.parent / "missing.csv"),
                                     "DATA.RANKS": ["a", "b"]})
    run_id = launch_run(cfg, store_path)
    store = RunStore(store_path)
    row = wait_for(store, run_id, statuses=("failed",))
    assert "exited without reporting" in row["error"] and "missing.csv: file not found" in row["error"]
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["run"] = run_id
    at.run()
    at.switch_page("app_pages/train.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="tr_watch").value == run_id
    assert "The run failed" in at.error[0].value
    assert "file not found" in texts(at)


def test_reconcile_ignores_live_and_unlaunched_runs(store_path):
    store = RunStore(store_path)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "--run-id", "live"])
    try:
        live = store.create_run({}, run_id="live", status="running")
        store.update_run(live, pid=alive.pid)
        log_path(store, live).parent.mkdir(parents=True, exist_ok=True)
        log_path(store, live).write_text("still going\n")
        foreign = store.create_run({}, run_id="foreign", status="running")  # no launcher log: a sweep trial
        store.update_run(foreign, pid=999_999)
        dead = subprocess.Popen([sys.executable, "-c", "print('boom')"])
        dead.wait()
        gone = store.create_run({}, run_id="gone", status="running")
        store.update_run(gone, pid=dead.pid)
        log_path(store, gone).write_text("line 1\nKilled\n")
        assert reconcile(store) == ["gone"]
        assert store.run("gone")["status"] == "failed" and "Killed" in store.run("gone")["error"]
        assert store.run("live")["status"] == "running" and store.run("foreign")["status"] == "running"
        # a recycled pid: the process runs, but its command line names another run
        assert run_alive(alive.pid) and run_alive(alive.pid, "live") and not run_alive(alive.pid, "other")
    finally:
        alive.kill()
        alive.wait()


# ---------------------------------------------------------------------- runs page
def fake_runs(store: RunStore, n_per_w=3, epochs=6) -> list[str]:
    """Finished runs written through the store API: w in {0.2, 0.8} x seeds."""
    ids = []
    for w in (0.2, 0.8):
        for seed in range(n_per_w):
            cfg = Config().with_overrides({"LOSS.W": w, "TRAIN.SEED": seed}).to_dict()
            run_id = store.create_run(cfg, name=f"w{w}-s{seed}", status="running")
            for e in range(epochs):
                acc = w * 0.5 + 0.05 * e + 0.01 * seed
                store.write_epoch(run_id, e, {
                    "core/val_partial_chain_acc": acc, "core/val_chain_acc": acc / 2, "core/val_loss": 2 - acc,
                    "core/train_loss": 2.1 - acc, "val/consistency": 0.9, "val/hdist@1": 0.3,
                    "val/acc/level0": acc, "val/acc/level1": acc, "val/acc/level2": acc,
                })
            store.update_run(run_id, status="finished")
            ids.append(run_id)
    return ids


def test_runs_page_compare_group_and_export(store_path):
    store = RunStore(store_path)
    ids = fake_runs(store)
    at = app("runs")
    table = at.dataframe[0].value
    assert len(table) == 6 and set(table["id"]) == set(ids)
    assert table.set_index("id").loc[ids[0], "val partial-chain"] == pytest.approx(0.1 + 0.25)
    specs = charts(at)
    assert len(specs["ru_overlay"]["data"]) == 6  # no selection: the newest runs, one line each
    # config vs final metrics: by default a scatter of final val partial-chain vs w, a point per run
    points = specs["ru_scatter"]["data"][0]
    final = table.set_index("id")["val partial-chain"]
    assert sorted(values(points["y"])) == pytest.approx(sorted(final))
    mean = values(specs["ru_scatter"]["data"][1]["y"])
    np.testing.assert_allclose(mean, [np.mean([0.1 + 0.25 + 0.01 * s for s in range(3)]),
                                      np.mean([0.4 + 0.25 + 0.01 * s for s in range(3)])])
    at.selectbox(key="ru_x").set_value("TRAIN.SEED").run()
    assert not at.exception and list(values(charts(at)["ru_scatter"]["data"][1]["x"])) == [0, 1, 2]
    at.segmented_control(key="ru_view").set_value("Parallel coordinates").run()
    assert not at.exception
    dims = {d["label"] for d in charts(at)["ru_parcoords"]["data"][0]["dimensions"]}
    assert {"w", "seed", "val partial-chain"} <= dims
    # group by w: mean and band over the 3 seeds
    at.multiselect(key="ru_group").set_value(["LOSS.W"]).run()  # several keys since issue 17
    assert not at.exception
    data = charts(at)["ru_overlay"]["data"]
    assert len(data) == 6  # 2 groups x (upper, lower, mean)
    mean = values(data[2]["y"])
    expected = [np.mean([0.1 + 0.05 * e + 0.01 * s for s in range(3)]) for e in range(6)]
    np.testing.assert_allclose(mean, expected)
    # smoothing
    at.slider(key="ru_smooth").set_value(0.5).run()
    assert not at.exception
    # filters: status and name search
    at.text_input(key="ru_search").set_value("w0.8").run()
    assert len(at.dataframe[0].value) == 3
    at.text_input(key="ru_search").set_value("").run()
    store.update_run(ids[0], status="failed", error="boom")
    at.run()
    at.multiselect(key="ru_status").set_value(["failed"]).run()
    assert list(at.dataframe[0].value["id"]) == [ids[0]] and not at.exception
    assert len(charts(at)["ru_overlay"]["data"]) == 1
    at.multiselect(key="ru_status").set_value([]).run()
    assert len(at.dataframe[0].value) == 6
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Run table (CSV)", "Metrics of compared runs (CSV)"]


def test_page_list_comes_from_existing_files(store_path):
    """app.py routes to the page files that exist (the Sweeps page joins when app_pages/sweeps.py does)."""
    at = app()
    pages = {Path(p["script_path"]).name for p in at._registered_pages.values()}
    expected = {"data.py", "train.py", "runs.py"} | ({"sweeps.py"} if (ROOT / "app_pages" / "sweeps.py").is_file() else set())
    assert pages == expected
