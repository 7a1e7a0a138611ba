"""Train and Runs pages, issue-tracker items: one epoch numbering, best-τ table, groups that mix settings,
phase 2 after its parent, Resume, "load this run's config", the form surviving a reload, metric deltas,
health explanations.

One real run (a subprocess on a tiny synthetic set) is trained, stopped after its first epoch and resumed
with the Train page's Resume button; the other tests write runs through the store API (fast).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from workbench import health
from workbench.config import Config
from workbench.launch import ACTIVE, LaunchError, launch_resume, launch_run, run_alive, stop_run
from workbench.store import RunStore

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402
from test_app import app as open_app  # noqa: E402  (one way to open the app in AppTest)
from test_app import wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 90
EPOCHS = 4


def charts(at: AppTest) -> dict[str, dict]:
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def xs(trace: dict) -> list:
    x = trace["x"]
    if isinstance(x, dict):  # plotly's typed array
        import base64

        x = np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
    return [float(v) for v in x]


def plain(text) -> str:
    """Shown text without Markdown escapes (the pages escape user text: ``a\\_b`` -> ``a_b``)."""
    return re.sub(r"\\(.)", r"\1", str(text)).replace("  \n", "\n")


def texts(at: AppTest) -> str:
    return "\n".join(plain(e.value) for kind in ("markdown", "caption", "info", "success", "warning", "error")
                     for e in at.get(kind))


@pytest.fixture
def store_path(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs" / "workbench.db"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    return path


# ---------------------------------------------------------------------- one real run: stop, Resume
@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A real run of EPOCHS epochs, stopped after its first, then resumed with the Train page's button."""
    path = tmp_path_factory.mktemp("tracker") / "runs" / "workbench.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_STORE", str(path))
        cfg = Config().with_overrides({
            "DATA.SYNTHETIC.N": 300, "MODEL.HIDDEN": [16], "TRAIN.EPOCHS": EPOCHS, "TRAIN.BATCH_SIZE": 64,
            "TRAIN.NUM_THREADS": 1, "TRACKING.STORE": str(path)})
        run_id = launch_run(cfg, path)
        store = RunStore(path)
        store.request_stop(run_id)  # checked after each epoch: the run stops after its first
        try:
            stopped = wait_for(store, run_id)
            at = open_app("train", run=run_id)
            assert at.selectbox(key="tr_watch").value == run_id
            at.button(key="tr_resume").click().run()
            assert not at.exception, at.exception
            flash = [plain(s.value) for s in at.success]
            final = wait_for(store, run_id)
            yield {"path": path, "run_id": run_id, "stopped": stopped, "final": final, "flash": flash}
        finally:
            row = store.run(run_id)
            if row["status"] in ACTIVE and row["pid"] and run_alive(int(row["pid"]), run_id):
                stop_run(run_id, path, force=True)


@pytest.mark.slow
def test_resume_button_continues_a_stopped_run_each_epoch_once(resumed):
    assert resumed["stopped"]["status"] == "stopped" and resumed["stopped"]["epochs_done"] == 1
    assert any("Resumed run" in f for f in resumed["flash"]), resumed["flash"]
    final = resumed["final"]
    assert final["status"] == "finished", final["error"]
    assert final["epochs_done"] == EPOCHS and not final["stop_requested"]
    store = RunStore(resumed["path"])
    long = store.metrics(resumed["run_id"], keys=["core/val_loss", "val/acc/level0"])
    counts = long.groupby(["key", "epoch"]).size()
    assert sorted(long["epoch"].unique()) == list(range(EPOCHS)) and (counts == 1).all()
    assert sorted(store.curves(resumed["run_id"])["epoch"].unique()) == list(range(EPOCHS))
    with pytest.raises(LaunchError, match="finished all its epochs"):
        launch_resume(resumed["run_id"], resumed["path"])


@pytest.mark.slow
def test_epoch_numbering_agrees_and_best_tau_table_is_the_curve_maximum(resumed, monkeypatch):
    monkeypatch.setenv("WORKBENCH_STORE", str(resumed["path"]))
    run_id, store = resumed["run_id"], RunStore(resumed["path"])
    at = open_app("train", run=run_id)
    # progress, charts and slider all count 1..EPOCHS
    assert [p.proto.text for p in at.get("progress")] == [f"epoch {EPOCHS} / {EPOCHS}"]
    specs = charts(at)
    for key in ("live_chain", "live_loss", "live_rank"):
        for trace in specs[key]["data"]:
            assert xs(trace) == list(range(1, EPOCHS + 1)), key
        assert specs[key]["layout"]["xaxis"]["dtick"] == 1 and specs[key]["layout"]["xaxis"]["tickformat"] == "d"
    slider = next(s for s in at.slider if s.label == "Threshold curves at epoch")
    assert (slider.min, slider.max, slider.value) == (1, EPOCHS, EPOCHS)
    assert f"At epoch {EPOCHS} of {EPOCHS}" in texts(at)

    # the table: per rank, the maximum of the stored accuracy curve (first tau on ties), and the curves there
    wide = store.metrics_wide([run_id]).set_index("epoch")
    for shown in (EPOCHS, 2):
        if shown != EPOCHS:
            slider.set_value(shown).run()
            slider = next(s for s in at.slider if s.label == "Threshold curves at epoch")
            assert slider.value == shown
        table = next(d.value for d in at.dataframe if "tau" in d.value).set_index("rank")
        curves = store.curves(run_id, epoch=shown - 1)
        assert list(table.index) == ["level0", "level1", "level2"]
        for rank in table.index:
            acc = curves[(curves["rank"] == rank) & (curves["curve"] == "accuracy")].sort_values("tau")
            best = acc.loc[acc["value"].idxmax()]
            assert table.loc[rank, "tau"] == pytest.approx(best["tau"])
            assert table.loc[rank, "accuracy"] == pytest.approx(best["value"])
            assert table.loc[rank, "tau"] == pytest.approx(wide.loc[shown - 1, f"val/best_tau/{rank}"])
            for curve in ("coverage", "selective_accuracy"):
                at_tau = curves[(curves["rank"] == rank) & (curves["curve"] == curve) & np.isclose(curves["tau"], best["tau"])]
                assert table.loc[rank, curve] == pytest.approx(at_tau["value"].item(), nan_ok=True)

    # the run table and its CSV carry per-rank accuracy and best tau of the last epoch
    at.switch_page("app_pages/runs.py").run()
    assert not at.exception, at.exception
    row = at.dataframe[0].value.set_index("id").loc[run_id]
    for rank in ("level0", "level1", "level2"):
        assert row[f"acc {rank}"] == pytest.approx(wide.loc[EPOCHS - 1, f"val/acc/{rank}"])
        assert row[f"best τ {rank}"] == pytest.approx(wide.loc[EPOCHS - 1, f"val/best_tau/{rank}"])


@pytest.mark.slow
def test_resume_after_sigkill_mid_run(store_path):
    """A run killed mid-epoch (its row still says running) is marked failed, then resumed: no epoch lost or doubled."""
    import os
    import signal

    cfg = Config().with_overrides({
        "DATA.SYNTHETIC.N": 300, "MODEL.HIDDEN": [16], "TRAIN.EPOCHS": 5000, "TRAIN.BATCH_SIZE": 64,
        "TRAIN.NUM_THREADS": 1, "TRACKING.STORE": str(store_path)})
    run_id = launch_run(cfg, store_path)
    store = RunStore(store_path)
    try:
        deadline = time.monotonic() + TIMEOUT
        while store.run(run_id)["epochs_done"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(int(store.run(run_id)["pid"]), signal.SIGKILL)
        wait_for(store, run_id, statuses=("failed",))
        killed_at = store.run(run_id)["epochs_done"]
        launch_resume(run_id, store_path)
        deadline = time.monotonic() + TIMEOUT
        while store.run(run_id)["epochs_done"] < killed_at + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        store.request_stop(run_id)
        final = wait_for(store, run_id)
    finally:
        row = store.run(run_id)
        if row["status"] in ACTIVE and row["pid"] and run_alive(int(row["pid"]), run_id):
            stop_run(run_id, store_path, force=True)
    assert final["status"] == "stopped", final["error"]
    long = store.metrics(run_id, keys=["core/val_loss"])
    assert list(long["epoch"]) == list(range(final["epochs_done"])) and final["epochs_done"] >= killed_at + 2


def test_resume_refuses_active_runs(store_path):
    store = RunStore(store_path)
    run_id = store.create_run(Config().to_dict(), status="running")
    with pytest.raises(LaunchError, match=f"run {run_id} cannot be resumed: it is still running"):
        launch_resume(run_id, store_path)
    assert store.run(run_id)["status"] == "running"


# ---------------------------------------------------------------------- runs written through the store
def fake_run(store: RunStore, overrides=None, epochs=3, metrics=None, status="finished", **kw) -> str:
    cfg = Config().with_overrides({"DATA.SYNTHETIC.N": 300, **(overrides or {})}).to_dict()
    run_id = store.create_run(cfg, status="running", **kw)
    for e in range(epochs):
        values = {"core/val_partial_chain_acc": 0.5 + 0.1 * e, "core/val_chain_acc": 0.4, "core/val_loss": 1.0 - 0.1 * e,
                  "val/acc/level0": 0.9}
        values.update((metrics or {}).get(e, {}))
        store.write_epoch(run_id, e, values)
    store.update_run(run_id, status=status)
    return run_id


def test_metric_deltas_colour_and_zero_change(store_path):
    store = RunStore(store_path)
    run_id = fake_run(store, epochs=2, metrics={
        0: {"core/val_loss": 0.5, "time/epoch_seconds": 1.0, "schedule/null_inclusion_prob": 0.2},
        1: {"core/val_loss": 0.5001, "time/epoch_seconds": 1.5, "schedule/null_inclusion_prob": 0.3,
            "core/val_partial_chain_acc": 0.6},
    })
    at = open_app("train", run=run_id)
    metric = {m.label: m for m in at.metric}
    time_, loss, acc, p = (metric[k] for k in ("epoch time", "val loss", "val partial-chain acc", "null inclusion p"))
    assert time_.value == "1.50 s" and time_.delta == "+0.50 s"
    assert time_.proto.color == time_.proto.RED and time_.proto.direction == time_.proto.UP  # slower is worse
    assert loss.value == "0.500" and not loss.delta  # +0.0001 rounds to 0: no arrow
    assert acc.delta == "+0.100" and acc.proto.color == acc.proto.GREEN
    assert p.delta == "+0.10" and p.proto.color == p.proto.GRAY  # the schedule is neither good nor bad
    for m in (time_, acc, p):
        assert m.proto.delta_description == "vs previous epoch"
    assert all("previous epoch" in m.help for m in metric.values())


def test_health_warning_explains_and_suggests(store_path):
    assert set(health.CHECKS) <= set(health.EXPLANATIONS)
    store = RunStore(store_path)
    run_id = fake_run(store, {"DATA.NAME": "ratdat"}, epochs=1)
    message = "validation predictions are one class for every input at rank(s) ['taxa']"
    store.write_epoch(run_id, 0, {"core/val_loss": 1.0}, health={"constant_predictions": message})
    at = open_app("train", run=run_id)
    warnings = [plain(w.value) for w in at.warning]
    assert health.explain("constant_predictions", message) in warnings
    shown = next(w for w in warnings if message in w)
    assert "CLASS_WEIGHTS: balanced" in shown and "same class for every validation sample" in shown
    assert "constant_predictions" not in shown  # the sentence, not the raw check name


def test_groups_name_mixed_settings_split_and_phase2_continues(store_path):
    store = RunStore(store_path)
    parent = fake_run(store, {"LOSS.W": 0.2, "TRAIN.PHASE1_MASK_NULL_LOSS": True}, epochs=3)
    child = fake_run(store, {"LOSS.W": 0.2, "TRAIN.INIT_FROM": parent}, epochs=2, parent_id=parent)
    other = fake_run(store, {"LOSS.W": 0.8}, epochs=3, status="stopped")
    at = open_app("runs")
    at.multiselect(key="ru_group").set_value(["LOSS.W"]).run()  # several keys since issue 17
    assert not at.exception, at.exception
    warning = next(plain(w.value) for w in at.warning if "Inside these groups also vary" in plain(w.value))
    assert "TRAIN.PHASE1_MASK_NULL_LOSS" in warning and "TRAIN.SEED" not in warning
    assert len(charts(at)["ru_overlay"]["data"]) == 2 * 3  # w=0.2 pools phase 1 with phase 2
    at.multiselect(key="ru_split_by").set_value(["TRAIN.PHASE1_MASK_NULL_LOSS"]).run()
    names = [t["name"] for t in charts(at)["ru_overlay"]["data"] if t["name"].endswith(")")]
    assert names == ["LOSS.W=0.2, TRAIN.PHASE1_MASK_NULL_LOSS=False (n=1)",
                     "LOSS.W=0.2, TRAIN.PHASE1_MASK_NULL_LOSS=True (n=1)",
                     "LOSS.W=0.8, TRAIN.PHASE1_MASK_NULL_LOSS=False (n=1)"]
    assert xs(charts(at)["ru_overlay"]["data"][2])[:2] == [1, 2]  # phase 2 drawn from epoch 1
    at.toggle(key="ru_continue").set_value(True).run()
    assert not at.exception, at.exception
    traces = {t["name"]: t for t in charts(at)["ru_overlay"]["data"]}
    assert xs(traces["LOSS.W=0.2, TRAIN.PHASE1_MASK_NULL_LOSS=False (n=1)"]) == [4, 5]  # after the parent's 1..3
    assert xs(traces["LOSS.W=0.2, TRAIN.PHASE1_MASK_NULL_LOSS=True (n=1)"]) == [1, 2, 3]
    assert other  # a stopped run in its own group: no status mix inside a group


def test_load_config_into_form_and_form_survives_reload(store_path):
    store = RunStore(store_path)
    run_id = fake_run(store, {"DATA.NAME": "olive", "LOSS.W": 0.65, "TRAIN.BATCH_SIZE": 96, "TRAIN.LR": 0.002,
                              "MODEL.HEAD": "marginal", "TRAIN.EPOCHS": 7, "MODEL.HIDDEN": [32, 8],
                              "TRAIN.NUM_THREADS": 1})
    at = open_app("runs")
    at.selectbox(key="ru_load_run").set_value(run_id).run()
    at.button(key="ru_load").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Train"
    assert at.slider(key="tr_w").value == 0.65 and at.radio(key="tr_head").value == "marginal"
    assert at.select_slider(key="tr_bs").value == 96 and at.select_slider(key="tr_lr").value == 0.002
    assert at.number_input(key="tr_epochs").value == 7 and at.text_input(key="tr_hidden").value == "32, 8"
    assert "olive" in texts(at) and f"Loaded the config of run `{run_id}`" in texts(at)
    assert "a new run will not have: TRAIN.NUM_THREADS=1." in texts(at)  # what the form cannot carry is named
    at.slider(key="tr_w").set_value(0.45).run()

    # a reload is a new session: the form and the dataset come back from <store dir>/ui_state.json
    fresh = open_app("train")
    assert fresh.slider(key="tr_w").value == 0.45 and fresh.select_slider(key="tr_bs").value == 96
    assert fresh.session_state["data_cfg"]["NAME"] == "olive" and "olive" in texts(fresh)
    fresh.switch_page("app_pages/data.py").run()
    assert fresh.selectbox(key="d_name").value == "olive" and not fresh.exception
    saved = json.loads((store_path.parent / "ui_state.json").read_text())
    assert saved["form"]["tr_w"] == 0.45 and saved["data"]["NAME"] == "olive"
    # and a run started from the restored form trains what the form shows
    from app_pages._shared import FORM_KEYS, config_to_form

    assert config_to_form(store.run(run_id)["config"])["tr_hidden"] == "32, 8"
    assert set(config_to_form(Config().to_dict())) == set(FORM_KEYS)  # every form value comes from the config


def test_damaged_ui_state_file_falls_back_to_defaults(store_path):
    store_path.parent.mkdir(parents=True)
    (store_path.parent / "ui_state.json").write_text("{not json")
    at = open_app()
    assert "could not read the saved form" in plain(at.toast[0].value)
    at.switch_page("app_pages/train.py").run()
    assert at.slider(key="tr_w").value == 0.3 and not at.exception
    at.slider(key="tr_w").set_value(0.5).run()  # the next change is saved over the damaged file
    assert json.loads((store_path.parent / "ui_state.json").read_text())["form"]["tr_w"] == 0.5
