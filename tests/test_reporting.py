"""Where test numbers are published outside the run pages (issue 14, DESIGN.md 3.5: select on val, report
test): ``runs --json`` / ``runs`` / the line after ``train``, ``summaries`` (no extreme over epochs of a test
key), the sweep summary, the sweep CLI's table and CSV, and the Sweeps page table. Stores are built by hand
with the real ``RunStore.write_epoch`` and ``StoreSink.on_test``: test rows sit at the epoch selected on val.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_app import app, charts, store_path, texts  # noqa: F401  (shared AppTest helpers and fixture)

from workbench import cli, summaries
from workbench.config import Config
from workbench.events import TestResult
from workbench.names import (
    SELECT_BY_DEFAULT, TEST_CHAIN_ACC, TEST_PARTIAL_CHAIN_ACC, VAL_CHAIN_ACC, VAL_LOSS, VAL_PARTIAL_CHAIN_ACC, val_acc,
)
from workbench.store import RunStore
from workbench.sweep_results import (
    NO_TEST_NOTE, accuracy_vs_key_figure, format_summary, per_run_table, report_table, store_tidy, summarize,
    with_store_test_rows,
)
from workbench.tracking import StoreSink

RANKS = ("region", "area")  # coarse to fine, not alphabetical: tables must keep this order
TEST_ACC = {r: f"test/acc/{r}" for r in RANKS}
# one run's val partial-chain accuracy per epoch: best (selected) at epoch 1, later epochs lower;
# its val chain accuracy keeps rising, so "best val chain" and "last" are epochs 3, never the selected one
VAL_PARTIAL = [0.50, 0.80, 0.70, 0.60]
VAL_CHAIN = [0.30, 0.40, 0.50, 0.55]


def write_run(store: RunStore, run_id: str, *, w: float = 0.3, seed: int = 0, sweep_id: str | None = None,
              shift: float = 0.0, test: dict | None = None, test_epoch: int = 1, select_by: str | None = None) -> str:
    """A finished 4-epoch run; ``test``: its test rows, written at ``test_epoch`` (the trainer's selection)."""
    cfg = Config().with_overrides({"LOSS.W": w, "TRAIN.SEED": seed, "DATA.RANKS": list(RANKS)}).to_dict()
    if select_by is not None:
        cfg["TRAIN"]["SELECT_BY"] = select_by
    store.create_run(cfg, run_id=run_id, sweep_id=sweep_id, status="running")
    for epoch, (partial, chain) in enumerate(zip(VAL_PARTIAL, VAL_CHAIN)):
        store.write_epoch(run_id, epoch, {
            VAL_PARTIAL_CHAIN_ACC: partial + shift, VAL_CHAIN_ACC: chain + shift, VAL_LOSS: 1.0 - chain,
            **{val_acc(r): partial + shift + 0.01 * i for i, r in enumerate(RANKS)},
        })
    if test is not None:
        # the trainer's TestResult through the real store sink: split test, at the selected epoch
        StoreSink(store).on_test(TestResult(run_id, test_epoch, test, curves=pd.DataFrame()))
    store.update_run(run_id, status="finished", ranks=list(RANKS))
    return run_id


def make_test_record(partial: float, chain: float | None = None) -> dict:
    return {TEST_PARTIAL_CHAIN_ACC: partial, TEST_CHAIN_ACC: partial - 0.1 if chain is None else chain,
            **{TEST_ACC[r]: partial + 0.02 * i for i, r in enumerate(RANKS)}, "test/tau/area": 0.4}


# ---------------------------------------------------------------------- runs --json, runs, train's result lines
def test_runs_json_has_the_test_dict_and_the_selected_epoch_and_no_test_key_in_last_or_best(tmp_path, capsys):
    store = RunStore(tmp_path / "runs" / "w.db")
    write_run(store, "no-test")
    write_run(store, "by-loss", select_by=VAL_LOSS)  # no test rows: selected where its own SELECT_BY is best
    write_run(store, "tested", test={**make_test_record(0.75), "test/hF": float("nan")})
    long = store.metrics(["tested"])  # the real store files every test key under split `test`
    assert set(long.loc[long["key"].map(summaries.is_test_key), "split"]) == {"test"}

    assert cli.main(["runs", "--json", "--store", str(store.path)]) == 0
    records = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    tested = records["tested"]
    assert tested["test"] == {**make_test_record(0.75), "test/hF": None}, "every test key the run logged; NaN is null"
    assert tested["selected_epoch"] == 1, "0-based, like `epoch` in the store: the epoch of its test rows"
    for how in ("last", "best"):
        assert not [k for k in tested[how] if "test" in k], f"{how} must not hold test keys"
    assert tested["last"][VAL_CHAIN_ACC] == VAL_CHAIN[-1] and tested["best"][VAL_CHAIN_ACC] == VAL_CHAIN[-1]
    assert tested["best"][VAL_PARTIAL_CHAIN_ACC] == max(VAL_PARTIAL)
    assert records["no-test"]["test"] == {} and records["no-test"]["selected_epoch"] == 1
    assert records["by-loss"]["selected_epoch"] == 3, "val loss (1 - chain) is lowest at the last epoch"


def test_runs_table_shows_a_test_column_only_when_a_run_has_one(tmp_path):
    store = RunStore(tmp_path / "runs" / "w.db")
    write_run(store, "no-test")
    assert "test_partial_chain" not in cli.runs_table(store)
    write_run(store, "tested", test=make_test_record(0.7123))
    lines = cli.runs_table(store).splitlines()
    assert "test_partial_chain" in lines[0]
    row = {line.split()[0]: line for line in lines[1:]}
    assert row["tested"].rstrip().endswith("0.7123") and row["no-test"].rstrip().endswith("NaN")


def test_train_result_lines_print_the_test_numbers_at_the_selected_epoch(tmp_path, capsys):
    store = RunStore(tmp_path / "runs" / "w.db")
    write_run(store, "tested", test=make_test_record(0.7, chain=0.61))
    cli._print_result(store, "tested", list(RANKS))
    out = capsys.readouterr().out
    assert f"test at epoch 2 (selected on val by {SELECT_BY_DEFAULT} 0.8000)" in out
    assert "test chain acc 0.6100   test partial-chain acc 0.7000" in out
    assert "test acc per rank: region 0.7000, area 0.7200" in out
    write_run(store, "no-test")
    cli._print_result(store, "no-test", list(RANKS))
    out = capsys.readouterr().out
    assert "no test numbers" in out and "test chain acc" not in out


# ---------------------------------------------------------------------- summaries: never an extreme of a test key
def test_metric_values_never_selects_on_test_and_test_values_reads_the_one_epoch(tmp_path):
    store = RunStore(tmp_path / "runs" / "w.db")
    write_run(store, "a", test=make_test_record(0.7))
    write_run(store, "b")
    long = store.metrics()
    for how in ("best", "min", "max"):
        assert not [k for k in summaries.metric_values(long, how).columns if summaries.is_test_key(k)], how
        with pytest.raises(ValueError, match=f"`how='{how}'` over epochs would select on test .*{TEST_CHAIN_ACC}"):
            summaries.metric_values(long, how, keys=[VAL_CHAIN_ACC, TEST_CHAIN_ACC])
    # "selected": every key at the epoch selected on val, test included (that is where test was evaluated)
    assert summaries.metric_values(long, "selected").loc["a", TEST_PARTIAL_CHAIN_ACC] == 0.7
    test = summaries.test_values(long)
    assert test.index.tolist() == ["a"] and test.loc["a", TEST_ACC["area"]] == pytest.approx(0.72)
    assert summaries.test_epoch(long).to_dict() == {"a": 1}
    assert summaries.test_values(long[long["run_id"] == "b"]).empty


# ---------------------------------------------------------------------- the sweep summary
def sweep_store(store: RunStore, sweep_id: str = "sw", with_test: bool = True) -> dict:
    """2 w x 2 seeds; test rows at the val-selected epoch 1 with a known value per trial: {run: test partial}."""
    expected = {}
    for w in (0.2, 0.8):
        for seed in (0, 1):
            run_id, partial = f"{sweep_id}-{w}-{seed}", 0.5 + 0.3 * w + 0.04 * seed
            write_run(store, run_id, w=w, seed=seed, sweep_id=sweep_id, shift=0.1 * w,
                      test=make_test_record(partial) if with_test else None)
            expected[run_id] = partial
    return expected


def test_sweep_summary_reports_test_at_the_val_selected_epoch(tmp_path):
    store = RunStore(tmp_path / "runs" / "w.db")
    expected = sweep_store(store)
    summary = summarize(store_tidy(store, "sw"), ["LOSS.W"])
    best = summary[summary["at"] == "best"].set_index("LOSS.W")
    for w in (0.2, 0.8):
        values = [expected[f"sw-{w}-{s}"] for s in (0, 1)]
        assert best.loc[w, f"{TEST_PARTIAL_CHAIN_ACC} mean"] == pytest.approx(np.mean(values))
        assert best.loc[w, f"{TEST_PARTIAL_CHAIN_ACC} std"] == pytest.approx(np.std(values, ddof=1))
        assert best.loc[w, f"{TEST_ACC['area']} mean"] == pytest.approx(np.mean(values) + 0.02)
        # the val numbers used to select: epoch 1's, the best val partial chain
        assert best.loc[w, f"{VAL_PARTIAL_CHAIN_ACC} mean"] == pytest.approx(VAL_PARTIAL[1] + 0.1 * w)
        assert (best.loc[w, "n"], best.loc[w, "n_test"], best.loc[w, "select_by"]) == (2, 2, SELECT_BY_DEFAULT)
    final = summary[summary["at"] == "final"]
    assert final[f"{TEST_PARTIAL_CHAIN_ACC} mean"].isna().all(), "test exists at the selected epoch only"
    assert final[f"{VAL_CHAIN_ACC} mean"].tolist() == pytest.approx([VAL_CHAIN[-1] + 0.1 * w for w in (0.2, 0.8)])

    text = format_summary(summary)
    assert NO_TEST_NOTE not in text
    head, row = text.splitlines()[:3][1:]
    assert "val partial chain acc" in head and "test partial chain acc" in head and "test acc area" in head
    assert f"{np.mean([expected['sw-0.2-0'], expected['sw-0.2-1']]):.4f} ± " in row
    assert "final epoch: val numbers" in text and "test" not in text.split("final epoch")[1]
    table = report_table(summary)  # the page's table: val used to select, then test; clearly labelled
    assert [c for c in table.columns if c.startswith(("val", "test"))] == [
        "val partial chain acc", "test chain acc", "test partial chain acc", "test acc region", "test acc area"]
    assert accuracy_vs_key_figure(summary, "LOSS.W", RANKS).layout.annotations[0].text == "selected epoch: test"


def test_sweep_summary_uses_the_trainers_epoch_and_each_runs_select_by(tmp_path):
    """A run with test rows keeps its trainer's epoch (test is never read elsewhere); one without them is
    selected by its own TRAIN.SELECT_BY; a point where one seed lacks test numbers says how many have them."""
    store = RunStore(tmp_path / "runs" / "w.db")
    write_run(store, "t-late", sweep_id="s", seed=0, test=make_test_record(0.6), test_epoch=2)
    write_run(store, "t-loss", sweep_id="s", seed=1, select_by=VAL_LOSS)
    per_run = per_run_table(store_tidy(store, "s"), ["LOSS.W"]).set_index(["run", "at"])
    assert per_run.loc[("t-late", "best"), ["epoch", VAL_PARTIAL_CHAIN_ACC, TEST_PARTIAL_CHAIN_ACC]].tolist() == \
        [2, VAL_PARTIAL[2], 0.6]
    assert per_run.loc[("t-loss", "best"), ["epoch", "select_by"]].tolist() == [3, VAL_LOSS]
    summary = summarize(store_tidy(store, "s"), ["LOSS.W"])
    table = report_table(summary)
    assert table[["runs", "runs with test"]].values.tolist() == [[2, 1]]
    assert "val loss" in table.columns and "val partial chain acc" in table.columns  # both selectors shown


def test_no_test_split_falls_back_to_val_with_a_visible_note(tmp_path):
    store = RunStore(tmp_path / "runs" / "w.db")
    sweep_store(store, with_test=False)
    summary = summarize(store_tidy(store, "sw"), ["LOSS.W"])
    assert not [c for c in summary.columns if "test" in c and c != "n_test"] and (summary["n_test"] == 0).all()
    text = format_summary(summary)
    assert text.splitlines()[0] == f"selected epoch (chosen on val by {SELECT_BY_DEFAULT}); {NO_TEST_NOTE}:"
    table = report_table(summary)
    assert "val chain acc" in table.columns and "val acc area" in table.columns
    assert "selection bias" in accuracy_vs_key_figure(summary, "LOSS.W", RANKS).layout.annotations[0].text


def test_a_w_and_b_pull_without_test_rows_gets_them_from_the_store(tmp_path):
    """A W&B run whose summary lacks the test numbers (logged before test existed, a failed summary write):
    the store, which the sweep's driver always writes, has them; runs pulled with test rows are left alone."""
    store = RunStore(tmp_path / "runs" / "w.db")
    expected = sweep_store(store)
    full = store_tidy(store, "sw")
    pulled = full[~full["metric"].map(summaries.is_test_key)].reset_index(drop=True)
    merged = with_store_test_rows(pulled, store, "sw")
    pd.testing.assert_frame_equal(summarize(merged, ["LOSS.W"]), summarize(full, ["LOSS.W"]))
    assert len(with_store_test_rows(merged, store, "sw")) == len(merged), "never twice"
    assert set(merged.loc[merged["metric"] == TEST_PARTIAL_CHAIN_ACC, "run"]) == set(expected)


def test_sweep_cli_results_print_and_write_the_test_columns(tmp_path, capsys):
    from workbench.sweep import SweepSettings, SweepSpec
    from workbench.sweep_cli import results

    store = RunStore(tmp_path / "runs" / "w.db")
    sweep_store(store)
    base = Config().with_overrides({"TRACKING.STORE": str(store.path)}).to_dict()
    spec = SweepSpec(base=base, grid={"w": [0.2, 0.8]}, seeds=2)
    results(spec, SweepSettings(store_path=str(store.path)), "sw", tmp_path / "out")
    out = capsys.readouterr().out
    assert "results of sw (4 runs, from run store)" in out and "test partial chain acc" in out
    csv = pd.read_csv(tmp_path / "out" / "summary.csv")
    for column in ("at", "LOSS.W", "n", f"{VAL_CHAIN_ACC} mean", f"{TEST_PARTIAL_CHAIN_ACC} mean", "n_test"):
        assert column in csv, column  # old columns kept, test ones added


# ---------------------------------------------------------------------- the Sweeps page
def test_sweeps_page_table_selects_on_val_and_reports_test(store_path):
    store = RunStore(store_path)
    expected = sweep_store(store)
    at = app("sweeps")
    assert not at.exception, at.exception
    summary = at.dataframe[1].value  # all sweeps, then this one: per swept point, then its trials
    assert summary["LOSS.W"].tolist() == [0.2, 0.8] and summary["runs"].tolist() == [2, 2]
    mean = np.mean([expected["sw-0.8-0"], expected["sw-0.8-1"]])
    assert summary.loc[1, "test partial chain acc"].startswith(f"{mean:.4f} ± ")
    assert summary.loc[1, "val partial chain acc"].startswith(f"{VAL_PARTIAL[1] + 0.08:.4f} ± ")
    trials = at.dataframe[2].value
    assert trials.loc["sw-0.2-1", "selected epoch"] == 1
    assert trials.loc["sw-0.2-1", "test partial chain (selected epoch)"] == pytest.approx(expected["sw-0.2-1"])
    assert NO_TEST_NOTE not in texts(at).lower()
    assert charts(at)["sweep_acc"]["layout"]["annotations"][0]["text"] == "selected epoch: test"


def test_sweeps_page_without_test_numbers_warns_of_selection_bias(store_path):
    sweep_store(RunStore(store_path), with_test=False)
    at = app("sweeps")
    assert not at.exception, at.exception
    assert "No test split: val numbers (selection bias)" in " ".join(w.value for w in at.warning)
    summary = at.dataframe[1].value
    assert "val chain acc" in summary and not [c for c in summary.columns if c.startswith("test")]
    assert "test partial chain (selected epoch)" not in at.dataframe[2].value

