"""Sets through every door (issue 15 item 4): the CLI, the Train and Data pages, a real-Ray sweep, and the
``valid`` polarity where data enters the model (an inverted mask planted in the data path fires ``empty_sets``;
a mask that is not bool, or of the wrong shape, is refused). Also ``MODEL.POOL: mean``.

The set data is a real CSV made here (rows grouped by a column, ``DATA.GROUP_BY``) and read by the real loader;
runs train for real into a tmp run store.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from test_app import app, charts, store_path, texts  # noqa: F401  (shared AppTest helpers and fixture)
from workbench import cli
from workbench.config import Config, ConfigError
from workbench.errors import DataError
from workbench.models import SetAttentionBackbone, backbone_mismatch, build_model
from workbench.store import RunStore
from workbench.taxonomy import Taxonomy

RANKS = ["family", "genus"]


def grouped_csv(path, groups: int = 60, seed: int = 0, sizes=(1, 2, 3, 4)):
    """A table of ``groups`` observations (family > genus), each 1-4 rows (views) sharing a ``obs`` id and
    its labels; each row's features are its genus' centre plus noise, so a set is easier than one row."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(groups):
        fam = g % 2
        gen = fam * 2 + (g // 2) % 2
        for _ in range(sizes[g % len(sizes)]):
            rows.append({"obs": f"o{g:03d}", "family": f"f{fam}", "genus": f"g{gen}",
                         "x1": gen + rng.normal(0, 0.8), "x2": fam + rng.normal(0, 0.8), "x3": rng.normal()})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def set_config(csv, store, **over) -> Config:
    cfg = {
        "DATA": {"NAME": "file", "PATH": str(csv), "RANKS": RANKS, "GROUP_BY": "obs", "VAL_FRACTION": 0.25,
                 "TEST_FRACTION": 0.25},
        "MODEL": {"BACKBONE": "set_attention", "HIDDEN": [8], "DROPOUT": 0.0},
        "TRAIN": {"EPOCHS": 2, "BATCH_SIZE": 16, "LR": 0.01, "DEVICE": "cpu"},
        "TRACKING": {"STORE": str(store)},
    }
    return Config.from_dict(cfg).with_overrides(over)


# ---------------------------------------------------------------------- the model's door
def test_valid_mask_polarity_is_checked_where_data_enters_the_model():
    tax = Taxonomy.from_frame(pd.DataFrame({"family": ["a", "b"], "genus": ["x", "y"]}), RANKS)
    model = build_model("set_attention", [4], "independent", 3, tax)
    x = torch.randn(2, 5, 3)
    valid = torch.arange(5)[None, :] < torch.tensor([[2], [5]])  # (2, 5) True = real element
    model(x, valid)  # the contract: bool (B, S)
    with pytest.raises(DataError, match=r"`valid` must be a bool tensor \(True = real element\), got dtype torch.float32"):
        model(x, valid.float())
    with pytest.raises(DataError, match=r"must have shape \(B, S\) = features.shape\[:2\].*got valid \(2, 4\) for "
                                        r"features \(2, 5, 3\)"):
        model(x, valid[:, :4])


@pytest.mark.parametrize("pool", ["attention", "mean"])
def test_padding_never_changes_the_output_of_either_pool(pool):
    torch.manual_seed(0)
    body = SetAttentionBackbone(3, [6], pool=pool).eval()
    x = torch.randn(4, 3, 3)
    valid = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    out = body(x, valid)
    padded = torch.cat([x, 100 * torch.randn(4, 5, 3)], dim=1)  # wider, with large junk in the padding
    wide = torch.cat([valid, torch.zeros(4, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(body(padded, wide), out)
    assert torch.equal(out[3], torch.zeros(6))  # an empty set pools to zeros, not NaN
    if pool == "mean":  # the plain mean of the real elements' encodings
        torch.testing.assert_close(out[2], body.encode(x[2, :2]).mean(dim=0))


def test_pool_key_is_validated():
    with pytest.raises(ConfigError, match="`MODEL.POOL` must be 'attention' or 'mean', got 'max'"):
        Config.from_dict({"MODEL": {"BACKBONE": "set_attention", "POOL": "max"}})


# ---------------------------------------------------------------------- CLI
def test_cli_trains_set_attention_on_a_grouped_csv_and_refuses_mlp(tmp_path, capsys):
    csv = grouped_csv(tmp_path / "obs.csv")
    store = tmp_path / "runs" / "w.db"
    cfg = tmp_path / "sets.yaml"
    set_config(csv, store, **{"MODEL.POOL": "mean"}).save(cfg)
    assert cli.main(["train", "--config", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "status finished" in out and "test chain acc" in out
    runs = RunStore(store).runs()
    assert list(runs["status"]) == ["finished"]
    run = RunStore(store).run(runs["id"].iloc[0])
    assert run["config"]["DATA"]["GROUP_BY"] == "obs" and run["config"]["MODEL"]["POOL"] == "mean"
    # the run's weights predict its test sets again (the bundle rebuilds the mean-pool backbone, no score layer)
    from workbench.predict import run_predictions
    from workbench.summaries import test_values

    frame = run_predictions(store, run["id"], "test")
    stored = test_values(RunStore(store).metrics([run["id"]])).loc[run["id"], "core/test_partial_chain_acc"]
    assert 10 <= len(frame) <= 20  # about 60 sets x TEST_FRACTION 0.25 (rounded per label path): sets, not rows
    assert frame["correct"].dropna().mean() == pytest.approx(stored)

    # mlp on sets: refused before a run row exists, with the one message (also the Train page's)
    assert cli.main(["train", "--config", str(cfg), "--set", "MODEL.BACKBONE=mlp", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "`MODEL.BACKBONE` 'mlp' needs features (N, F), one row per sample; the data 'obs.csv' has features of " \
           "shape" in err and "use 'set_attention'" in err
    assert len(RunStore(store).runs()) == 1


def test_inverted_valid_mask_planted_in_the_loader_fires_empty_sets(tmp_path, monkeypatch, capsys):
    """A loader bug that builds the padding mask with the wrong polarity (True = padding): the full-size sets
    then have no real element, and the run's health check says so, in the CLI's output and in the store."""
    import workbench.sets as sets

    real = sets.group_into_sets

    def inverted(*args, **kwargs):
        grouped = real(*args, **kwargs)
        grouped.valid = ~grouped.valid  # the planted bug
        return grouped

    monkeypatch.setattr(sets, "group_into_sets", inverted)
    csv = grouped_csv(tmp_path / "obs.csv")
    cfg = tmp_path / "sets.yaml"
    set_config(csv, tmp_path / "w.db", **{"TRAIN.EPOCHS": 1}).save(cfg)
    assert cli.main(["train", "--config", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "health warning: Samples with no set element" in out, out
    assert "have a valid mask that is all False (no real set element)" in out
    run = RunStore(tmp_path / "w.db").runs().iloc[0]
    assert "empty_sets" in json.loads(RunStore(tmp_path / "w.db").run(run["id"])["health"])


# ---------------------------------------------------------------------- app
def test_train_page_offers_set_attention_for_sets_and_refuses_mlp(tmp_path, store_path):  # noqa: F811
    csv = grouped_csv(tmp_path / "obs.csv")
    data = {"NAME": "file", "PATH": str(csv), "RANKS": RANKS, "GROUP_BY": "obs", "VAL_FRACTION": 0.25, "SEED": 0}
    at = app("train", data_cfg=data)
    assert at.radio(key="tr_set_backbone").value == "set_attention"
    assert "sets grouped by obs" in texts(at)
    at.radio(key="tr_pool").set_value("mean").run()
    yaml = at.code[0].value
    assert "BACKBONE: set_attention" in yaml and "POOL: mean" in yaml and "GROUP_BY: obs" in yaml
    at.radio(key="tr_set_backbone").set_value("mlp").run()
    assert not at.exception, at.exception
    from app_pages._shared import md_escape

    message = backbone_mismatch("mlp", (60, 4, 3), "obs.csv")  # the trainer's own words (60 sets of <= 4 rows, 3 features)
    assert md_escape(message) in [e.value for e in at.error]
    assert at.button(key="tr_start").disabled
    # a table keeps the MLP form (no set widgets)
    at = app("train", data_cfg={"NAME": "synthetic", "VAL_FRACTION": 0.2, "SEED": 0})
    assert not [r for r in at.radio if r.key == "tr_set_backbone"]


def test_data_page_shows_sets_and_groups_an_uploaded_table(tmp_path, store_path):  # noqa: F811
    csv = grouped_csv(tmp_path / "obs.csv")
    data = {"NAME": "file", "PATH": str(csv), "RANKS": RANKS, "VAL_FRACTION": 0.25, "SEED": 0}
    at = app(data_cfg=data)
    assert at.selectbox(key="d_group").value == "(none)"
    assert "set_sizes" not in charts(at)
    at.selectbox(key="d_group").set_value("obs").run()
    assert not at.exception, at.exception
    assert at.metric[0].label == "Sets" and at.metric[0].value == "60"
    hist = charts(at)["set_sizes"]["data"][0]
    assert hist["type"] == "bar" and list(hist["y"]) == [0, 15, 15, 15, 15]  # 60 sets, 15 of each size 1-4
    assert "60 sets of 1 to 4 rows (150 rows in all)" in texts(at)
    assert at.session_state["data_cfg"]["GROUP_BY"] == "obs"
    at.number_input(key="d_max_set").set_value(2).run()
    assert at.session_state["data_cfg"]["MAX_SET_SIZE"] == 2
    assert list(charts(at)["set_sizes"]["data"][0]["y"]) == [0, 15, 45]


def test_data_page_offers_ratdat_sets_with_a_size_cap(store_path):  # noqa: F811
    at = app(data_cfg={"NAME": "ratdat_sets", "VAL_FRACTION": 0.2, "SEED": 0})
    assert at.selectbox(key="d_name").value == "ratdat_sets"
    assert at.metric[0].label == "Sets"
    uncapped = charts(at)["set_sizes"]["data"][0]["y"]
    assert len(uncapped) == 21  # sizes 0..20: the largest set has 20 captures
    at.number_input(key="d_max_set_builtin").set_value(4).run()
    assert not at.exception, at.exception
    assert at.session_state["data_cfg"]["MAX_SET_SIZE"] == 4
    capped = charts(at)["set_sizes"]["data"][0]["y"]
    assert len(capped) == 5 and capped[4] == sum(uncapped[4:]) and capped[:4] == uncapped[:4]


# ---------------------------------------------------------------------- sweep
@pytest.mark.ray
def test_sweep_over_set_data_on_real_ray(ray_local, tmp_path):
    from workbench.sweep import SweepSettings, SweepSpec, run_sweep

    csv = grouped_csv(tmp_path / "obs.csv")
    base = set_config(csv, tmp_path / "runs" / "w.db", **{"TRAIN.EPOCHS": 1}).to_dict()
    spec = SweepSpec(base=base, grid={"w": [0.2, 0.8]}, seeds=1)
    settings = SweepSettings(store_path=base["TRACKING"]["STORE"], results_dir=str(tmp_path / "ray_results"), verbose=0)
    sweep_id, grid = run_sweep(spec, settings)
    assert len(grid) == 2 and not [r for r in grid if r.error is not None]
    store = RunStore(settings.store_path)
    runs = store.runs(sweep_id=sweep_id)
    assert len(runs) == 2 and set(runs["status"]) == {"finished"}
    for run_id in runs["id"]:
        assert store.run(run_id)["config"]["MODEL"]["BACKBONE"] == "set_attention"
    assert not store.metrics(list(runs["id"]), keys=["core/test_chain_acc"]).empty
