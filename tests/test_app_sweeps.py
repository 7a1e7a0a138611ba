"""The Sweeps page (AppTest): trials from the store, the accuracy-vs-w chart, a trial's curves, and a
real sweep launched from the form (its own process with its own local Ray)."""

from __future__ import annotations

import time

import pytest
from test_app import app, charts, store_path, texts, values  # noqa: F401  (shared AppTest helpers and fixture)

from workbench.config import Config, ConfigError
from workbench.launch import launch_sweep, log_path
from workbench.store import RunStore
from workbench.sweep import read_sweep_status


def fake_sweep(store: RunStore, sweep_id: str = "sweep-test", epochs: int = 3) -> list[str]:
    ids = []
    for w in (0.2, 0.8):
        for seed in (0, 1):
            cfg = Config().with_overrides({"LOSS.W": w, "TRAIN.SEED": seed}).to_dict()
            run_id = store.create_run(cfg, run_id=f"{sweep_id}-{w}-{seed}", sweep_id=sweep_id, status="running")
            for e in range(epochs):
                acc = 0.5 + 0.1 * w + 0.05 * e + 0.01 * seed
                store.write_epoch(run_id, e, {"core/val_partial_chain_acc": acc, "core/val_chain_acc": acc / 2,
                                              "core/val_loss": 1 - acc, "core/train_loss": 1.1 - acc,
                                              **{f"val/acc/level{r}": acc for r in range(3)}})
            store.update_run(run_id, status="finished")
            ids.append(run_id)
    return ids


def test_sweeps_page_empty_store_explains_how_to_start(store_path):
    at = app("sweeps")
    assert "No sweeps yet" in texts(at)


def test_sweeps_page_shows_trials_chart_and_a_trial(store_path):
    store = RunStore(store_path)
    ids = fake_sweep(store)
    at = app("sweeps")
    assert not at.exception
    listing, _, table = (d.value for d in at.dataframe)  # all sweeps, per swept point, the chosen sweep's trials
    assert listing.index.tolist() == ["sweep-test"] and listing["status"].tolist() == ["finished"]
    assert sorted(table.index) == sorted(ids)
    spec = charts(at)["sweep_acc"]
    by_name = {}
    for t in spec["data"]:
        by_name.setdefault(t["name"], []).append(t)
    final_chain = [t for t in by_name["chain"] if t.get("xaxis") == "x2"][0]
    # final epoch (2): chain acc = (0.5 + 0.1 w + 0.1 + 0.01 seed) / 2, mean over seeds 0 and 1
    assert list(values(final_chain["x"])) == [0.2, 0.8]
    expected = [(0.6 + 0.1 * w + 0.005) / 2 for w in (0.2, 0.8)]
    assert values(final_chain["y"]) == pytest.approx(expected)
    assert "trial_chain" in charts(at) and "trial_loss" in charts(at)


def test_launch_sweep_validates_before_starting(store_path):
    cfg = Config().with_overrides({"TRACKING.STORE": str(store_path)})
    with pytest.raises(ConfigError, match=r"`LOSS.W` must be in \[0, 1\], got 1.5"):
        launch_sweep(cfg, {"LOSS.W": [0.5, 1.5]}, store_path=store_path)
    assert RunStore(store_path).runs().empty and not (store_path.parent / "logs").exists()
    assert not (store_path.parent / "sweeps").exists()  # no status record either


@pytest.mark.slow
@pytest.mark.ray
def test_start_sweep_from_the_form_runs_trials_into_the_store(store_path):
    at = app("sweeps", data_cfg={"NAME": "synthetic", "SYNTHETIC": {"N": 300, "BRANCHING": [2, 2], "NULL_RATES": [0, 0.2],
                                                                    "NUM_FEATURES": 4}})
    form = at.get("form")[0] if at.get("form") else None
    assert form is not None
    at.text_input[0].set_value("0.3, 0.7")
    at.number_input[0].set_value(1)  # seeds
    at.number_input[1].set_value(1)  # epochs
    at.button[0].click().run()
    assert not at.exception, at.exception
    sweep_id = at.session_state["sweep_id"]
    store = RunStore(store_path)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        runs = store.runs(sweep_id=sweep_id)
        if len(runs) == 2 and set(runs["status"]) == {"finished"}:
            break
        time.sleep(1)
    else:
        pytest.fail("sweep did not finish; log:\n" + log_path(store, sweep_id).read_text()[-3000:])
    assert sorted(store.runs(sweep_id=sweep_id, with_config=True)["LOSS.W"]) == [0.3, 0.7]
    deadline = time.monotonic() + 60  # the driver writes the results table, then records the end
    while read_sweep_status(store_path, sweep_id)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert read_sweep_status(store_path, sweep_id)["status"] == "finished"
    at.run()
    assert not at.exception and "sweep_acc" in charts(at)
    assert at.dataframe[0].value.loc[sweep_id, "status"] == "finished"
