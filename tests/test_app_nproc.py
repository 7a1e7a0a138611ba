"""The Train page starts a data-parallel run on this machine: "This machine" with 2 workers launches
`train --nproc 2` (two real worker processes, gloo), recorded like any run (issue 16, item 3)."""

from __future__ import annotations

import pytest
from test_app import app, store_path, use_tiny_data, wait_for  # noqa: F401  (shared AppTest helpers and fixture)

from workbench.config import Config
from workbench.launch import LaunchError, launch_run
from workbench.store import RunStore


@pytest.mark.slow
def test_train_page_starts_a_run_on_two_local_processes(store_path):
    at = use_tiny_data(app())
    at.switch_page("app_pages/train.py").run()
    at.number_input(key="tr_epochs").set_value(2).run()
    at.text_input(key="tr_hidden").set_value("16").run()
    assert at.number_input(key="tr_workers").value == 1  # untouched, the form trains on one process
    at.number_input(key="tr_workers").set_value(2).run()
    at.button(key="tr_start").click().run()
    assert not at.exception, at.exception
    store = RunStore(store_path)
    run_id = store.runs()["id"][0]
    assert "2 data-parallel processes" in at.success[0].value
    row = wait_for(store, run_id)
    assert row["status"] == "finished", row["error"]
    assert row["environment"]["world_size"] == 2  # two ranks trained it
    assert list(store.metrics_wide([run_id])["epoch"]) == [0, 1]  # every epoch once, written by rank 0 alone


def test_launch_run_refuses_processes_on_a_cluster(tmp_path):
    from workbench.cluster_run import ClusterSettings

    with pytest.raises(LaunchError, match="nproc must be >= 1"):
        launch_run(Config(), tmp_path / "w.db", nproc=0)
    with pytest.raises(LaunchError, match="1 on a Ray cluster"):
        launch_run(Config(), tmp_path / "w.db", nproc=2, cluster=ClusterSettings(address="127.0.0.1:1"))
    assert not (tmp_path / "w.db").exists()  # refused before the store is touched
