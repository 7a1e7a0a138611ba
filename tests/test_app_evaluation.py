"""A run's evaluation in the app (issue 14 item 6): test numbers beside the selected epoch's val numbers,
the per-rank confusion view and the predictions table, on the Runs page and in the Train page's watch view.

The pure builders (``workbench.plots``) are checked against slow loops; the pages run in the real app
with AppTest against a real tmp run store: runs written through the store API (fast) and one real run
trained with the Trainer (2 epochs on a tiny synthetic set), whose predictions the page computes.
"""

from __future__ import annotations

import collections
import random

import numpy as np
import pandas as pd
import pytest

from workbench import names as N
from workbench import plots
from workbench.config import Config
from workbench.store import RunStore
from workbench.taxonomy import Taxonomy

pytest.importorskip("streamlit")
from test_app import app, charts, store_path, texts  # noqa: E402,F401  (shared AppTest helpers and fixture)

# a small tree: order > family > species, with a species labelled to family only (null below)
TREE = [("Carnivora", "Felidae", "cat"), ("Carnivora", "Felidae", "lynx"), ("Carnivora", "Canidae", "dog"),
        ("Carnivora", "Canidae", "wolf"), ("Rodentia", "Muridae", "rat"), ("Rodentia", "Muridae", "mouse"),
        ("Rodentia", "Sciuridae", "squirrel"), ("Rodentia", "Sciuridae", None)]
RANKS = ("order", "family", "species")


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return Taxonomy.from_frame(pd.DataFrame(TREE, columns=list(RANKS)), RANKS)


def random_frame(taxonomy: Taxonomy, n: int, seed: int) -> pd.DataFrame:
    """A predictions frame (contract columns) of ``n`` random samples: true paths from the tree (some
    cut short), predictions drawn independently per rank (null included), random confidences."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        path = list(rng.choice(TREE))
        cut = rng.choice([3, 3, 3, 2, 1])  # a sample labelled down to this many ranks
        path = [c if r < cut else None for r, c in enumerate(path)]
        row = {"sample": i, "source": f"row {i}"}
        for r, rank in enumerate(RANKS):
            row[f"true/{rank}"] = path[r]
            row[f"pred/{rank}"] = rng.choice([*taxonomy.vocab[r][1:], None])
        labelled = [r for r in range(3) if path[r] is not None]
        row["correct"] = all(row[f"pred/{RANKS[r]}"] == path[r] for r in labelled) if labelled else None
        row["confidence"] = round(rng.random(), 2) if rng.random() > 0.05 else float("nan")
        row["severity"] = 0 if row["correct"] else rng.randint(1, 3)
        row["true_path"] = " > ".join(c for c in path if c)
        row["pred_path"] = " > ".join(row[f"pred/{k}"] for k in RANKS if row[f"pred/{k}"])
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["correct"] = pd.array(frame["correct"], dtype="boolean")  # as run_predictions: NA = no labelled rank
    return frame


def slow_lca_height(taxonomy: Taxonomy, r: int, a, b) -> int:
    """By names, from the tree's rows: 0 if equal, else the smallest h with a shared non-null ancestor h
    ranks up, r + 1 if none (a null has no ancestors)."""
    if a == b:
        return 0
    up = {(k, row[k]): row[k - 1] for row in TREE for k in range(1, 3) if row[k] is not None}
    anc_a, anc_b = a, b
    for h in range(1, r + 1):
        anc_a = None if anc_a is None else up[(r - h + 1, anc_a)]
        anc_b = None if anc_b is None else up[(r - h + 1, anc_b)]
        if anc_a is not None and anc_a == anc_b:
            return h
    return r + 1


# ---------------------------------------------------------------------- pure builders vs slow loops
@pytest.mark.parametrize("seed", range(4))
def test_top_confusions_and_matrix_match_loops(taxonomy, seed):
    frame = random_frame(taxonomy, 300, seed)
    for r, rank in enumerate(RANKS):
        counts, matrix = collections.Counter(), collections.Counter()
        for t, p in zip(frame[f"true/{rank}"], frame[f"pred/{rank}"]):
            t, p = (v if isinstance(v, str) else None for v in (t, p))  # pandas may hold a null as NaN
            matrix[(t or plots.NULL_LABEL, p or plots.NULL_LABEL)] += 1
            if t is not None and p != t:
                counts[(t, p or plots.NULL_LABEL)] += 1
        top = plots.top_confusions(frame, rank, taxonomy, top=None)
        got = {(a, b): c for a, b, c in zip(top["true"], top["predicted"], top["count"])}
        assert got == dict(counts)
        for a, b, h in zip(top["true"], top["predicted"], top["lca_height"]):
            assert h == slow_lca_height(taxonomy, r, a, None if b == plots.NULL_LABEL else b), (rank, a, b)
        # most frequent first; on a tie, the worse mistake (higher LCA) first
        keys = list(zip(-top["count"], -top["lca_height"], top["true"], top["predicted"]))
        assert keys == sorted(keys)
        assert len(plots.top_confusions(frame, rank, taxonomy, top=3)) == min(3, len(top))

        m = plots.confusion_matrix(frame, rank, taxonomy)
        names = [plots.NULL_LABEL, *taxonomy.vocab[r][1:]]
        assert list(m.index) == names and list(m.columns) == names
        assert {(a, b): int(m.loc[a, b]) for a in names for b in names if m.loc[a, b]} == dict(matrix)
        assert m.to_numpy().sum() == len(frame)

        fig = plots.confusion_figure(frame, rank, taxonomy)
        heat = fig.data[0]
        assert heat.type == "heatmap" and list(heat.x) == names
        counts_drawn = np.asarray(heat.customdata)
        assert (counts_drawn == m.to_numpy()).all()
        rows = counts_drawn.sum(axis=1) > 0
        assert np.allclose(np.asarray(heat.z, dtype=float)[rows].sum(axis=1), 1.0)  # share of the true class


def test_confusions_refuse_unknown_classes_and_huge_ranks(taxonomy, monkeypatch):
    frame = random_frame(taxonomy, 20, 0)
    frame.loc[3, "pred/species"] = "unicorn"
    with pytest.raises(ValueError, match=r"'pred/species', row 3: 'unicorn' is not a class of rank 'species'"):
        plots.top_confusions(frame, "species", taxonomy)
    monkeypatch.setattr(plots, "MAX_CONFUSION_CLASSES", 3)
    with pytest.raises(ValueError, match="'species' has 7 classes; the confusion heatmap draws at most 3"):
        plots.confusion_figure(random_frame(taxonomy, 20, 0), "species", taxonomy)


def test_predictions_table_puts_the_most_confident_mistakes_first(taxonomy):
    frame = random_frame(taxonomy, 200, 7)
    table = plots.predictions_table(frame)
    assert list(table.columns) == [*plots.PREDICTION_COLUMNS, "source"]
    assert sorted(table["sample"]) == list(range(200))

    def key(row):
        group = 2 if row["correct"] is None else (1 if row["correct"] else 0)
        conf = row["confidence"]
        return group, -conf if conf == conf else float("inf"), row["sample"]

    expected = sorted(frame.astype({"correct": object}).replace({pd.NA: None}).to_dict("records"), key=key)
    assert list(table["sample"]) == [r["sample"] for r in expected]
    first_right = table.index[table["correct"] == True][0]  # noqa: E712
    assert (table.loc[: first_right - 1, "correct"] == False).all()  # noqa: E712
    with pytest.raises(ValueError, match="no column.*correct"):
        plots.predictions_table(frame.drop(columns=["correct"]))


TEST_EPOCH = 1  # 0-based: the epoch the run "selected"; the test rows sit there


def write_run(store: RunStore, status: str = "finished", test: bool = True, config: dict | None = None,
              name: str | None = None) -> str:
    """A run of 3 epochs written through the store API: val rows every epoch, test rows at TEST_EPOCH."""
    run_id = store.create_run(config or Config().to_dict(), name=name, status="running")
    store.update_run(run_id, ranks=list(RANKS))
    for epoch in range(3):
        metrics = {N.VAL_PARTIAL_CHAIN_ACC: 0.5 + 0.1 * epoch - 0.15 * (epoch == 2),  # best at TEST_EPOCH
                   N.VAL_CHAIN_ACC: 0.4 + 0.01 * epoch,
                   N.VAL_LOSS: 1.0 - 0.1 * epoch, "val/hF": 0.6 + 0.01 * epoch,
                   **{N.val_acc(r): 0.7 + 0.01 * i + 0.001 * epoch for i, r in enumerate(RANKS)},
                   **{N.best_tau(r): 0.3 + 0.1 * i for i, r in enumerate(RANKS)}}
        if test and epoch == TEST_EPOCH:
            metrics.update({N.core_key("test", "partial_chain_acc"): 0.555, N.core_key("test", "chain_acc"): 0.444,
                            N.core_key("test", "loss"): 0.987, "test/hF": 0.612,
                            **{N.rank_key("test", N.ACC, r): 0.61 + 0.01 * i for i, r in enumerate(RANKS)},
                            **{N.rank_key("test", N.TAU, r): 0.3 + 0.1 * i for i, r in enumerate(RANKS)},
                            **{N.rank_key("test", N.COVERAGE_AT_TAU, r): 0.8 - 0.1 * i for i, r in enumerate(RANKS)},
                            **{N.rank_key("test", N.SELECTIVE_ACCURACY_AT_TAU, r): 0.9 - 0.05 * i
                               for i, r in enumerate(RANKS)},
                            N.rank_key("test", N.top_k(5), "species"): 0.97})
        curves = pd.DataFrame([{"split": "val", "rank": r, "curve": c, "tau": t, "value": v}
                               for i, r in enumerate(RANKS) for t in (0.3 + 0.1 * i, 0.95)
                               for c, v in (("coverage", 0.75 - 0.1 * i), ("selective_accuracy", 0.85 - 0.05 * i),
                                            ("accuracy", 0.7))])
        store.write_epoch(run_id, epoch, metrics, curves)
    store.update_run(run_id, status=status)
    return run_id


def test_selected_vs_test_table_reads_the_test_epoch(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    run_id = write_run(store)
    metrics = store.metrics(run_id)
    table = plots.selected_vs_test(metrics, RANKS).set_index("key")
    assert list(table.index) == [N.core_key("test", w) for w in ("partial_chain_acc", "chain_acc", "loss")] + [
        "test/hF", *[N.rank_key("test", N.ACC, r) for r in RANKS]]
    assert (table["epoch"] == TEST_EPOCH + 1).all()  # shown 1-based
    assert table.loc[N.core_key("test", "loss"), "test"] == pytest.approx(0.987)
    assert table.loc[N.core_key("test", "loss"), "val"] == pytest.approx(0.9)  # val at the same epoch
    assert table.loc[N.core_key("test", "partial_chain_acc"), "metric"] == "partial-chain acc"
    assert table.loc["test/acc/family", "metric"] == "accuracy: family"
    full = plots.selected_vs_test(metrics, RANKS, full=True)
    assert "test/top5/species" in set(full["key"]) and not full["key"].str.contains("tau").any()
    tau = plots.tau_on_test(metrics, RANKS, store.curves(run_id, epoch=TEST_EPOCH)).set_index("rank")
    assert list(tau.index) == list(RANKS)
    assert tau.loc["family", "tau"] == pytest.approx(0.4)
    assert tau.loc["family", "test coverage"] == pytest.approx(0.7)
    assert tau.loc["family", "val coverage"] == pytest.approx(0.65)  # the val curve at the same tau
    assert tau.loc["species", "val selective accuracy"] == pytest.approx(0.75)
    assert plots.selected_vs_test(store.metrics(write_run(store, test=False)), RANKS).empty


# ---------------------------------------------------------------------- pages: runs written through the store
FRAME_COLUMNS = {  # a table of the evaluation view, known by its columns (a keyed st.dataframe without a
    # selection has no element id in AppTest)
    "test_table": "test", "test_tau": "test coverage", "confusions": "lca_height", "predictions": "pred_path",
}


def frames(at, kind: str) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe if FRAME_COLUMNS[kind] in d.value.columns]


def frame_of(at, kind: str) -> pd.DataFrame:
    found = frames(at, kind)
    assert len(found) == 1, f"{len(found)} {kind} tables on the page"
    return found[0]


def test_runs_and_train_pages_show_the_stored_test_values(store_path):
    store = RunStore(store_path)
    run_id = write_run(store, name="with *test* rows")
    at = app("runs")
    assert at.selectbox(key="ru_eval_run").value == run_id
    table = frame_of(at, "test_table").set_index("metric")
    assert table.loc["partial-chain acc", "test"] == pytest.approx(0.555)
    assert table.loc["partial-chain acc", "val"] == pytest.approx(0.6)  # epoch 2 (1-based): the selected one
    assert table.loc["chain acc", "test"] == pytest.approx(0.444)
    assert table.loc["hF", "test"] == pytest.approx(0.612)
    assert table.loc["accuracy: species", "test"] == pytest.approx(0.63)
    tau = frame_of(at, "test_tau").set_index("rank")
    assert tau.loc["species", "test selective accuracy"] == pytest.approx(0.8)
    shown = texts(at)
    assert "Selected epoch 2 of" in shown
    assert "saved no weights" in shown  # written through the store: no best.pt, no checkpoint
    at.toggle(key="ru_ev_test_full").set_value(True).run()
    assert not at.exception, at.exception
    full = frame_of(at, "test_table").set_index("metric")
    assert full.loc["top5: species", "test"] == pytest.approx(0.97) and np.isnan(full.loc["top5: species", "val"])

    at = app("train", run=run_id)
    table = frame_of(at, "test_table").set_index("metric")
    assert table.loc["loss", "test"] == pytest.approx(0.987) and table.loc["loss", "val"] == pytest.approx(0.9)


@pytest.mark.parametrize("case, reason", [
    ("failed", "the run failed"),
    ("old", "recorded before test evaluation existed"),
    ("no_test_split", "has no test split (its DATA.TEST_FRACTION is 0)"),
    ("running", "the run is running"),
])
def test_a_run_without_test_rows_says_why(store_path, case, reason):
    store = RunStore(store_path)
    config = Config().to_dict()
    if case == "old":
        del config["DATA"]["TEST_FRACTION"]
    if case == "no_test_split":
        config["DATA"]["TEST_FRACTION"] = 0.0
    write_run(store, status={"failed": "failed", "running": "running"}.get(case, "finished"), test=False,
              config=config)
    at = app("runs")
    assert not frames(at, "test_table")
    assert reason in texts(at), texts(at)
    if case != "running":  # the Train page's watch view of an ended run says it too
        assert reason in texts(app("train"))


# ---------------------------------------------------------------------- pages: a real trained run
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two real runs (the Trainer, 2 epochs on a tiny synthetic set) in a tmp store: one without a test split
    (``DATA.TEST_FRACTION: 0``), then the newest, with one (best.pt, test rows). Returns (store path, the
    newest run's id, the other's)."""
    from workbench.trainer import Trainer

    path = tmp_path_factory.mktemp("evaluation") / "runs" / "workbench.db"
    store = RunStore(path)
    ids = []
    for name, test_fraction in (("no test split", 0.0), ("tiny [evaluated]", 0.2)):
        cfg = Config().with_overrides({
            "DATA.SYNTHETIC.N": 300, "MODEL.HIDDEN": [16], "TRAIN.EPOCHS": 2, "TRAIN.BATCH_SIZE": 64,
            "TRAIN.NUM_THREADS": 1, "TRACKING.STORE": str(path), "TRACKING.RUN_NAME": name,
            "DATA.TEST_FRACTION": test_fraction})
        trainer = Trainer(cfg, store=store, progress=False)
        assert trainer.fit() == "finished"
        ids.append(trainer.run_id)
    return path, ids[1], ids[0]


def test_confusions_and_predictions_of_a_trained_run(trained, monkeypatch):
    from workbench.predict import run_predictions

    path, run_id, _ = trained
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    store = RunStore(path)
    ranks = store.run_ranks(run_id)
    expected = run_predictions(store, run_id, split="test")
    from workbench.bundle import run_bundle

    taxonomy = Taxonomy.from_dict(run_bundle(store, run_id)["taxonomy"])

    at = app("runs")
    assert at.selectbox(key="ru_eval_run").value == run_id
    assert at.segmented_control(key="ru_ev_split").value == "test"  # the run has test rows
    assert at.selectbox(key="ru_ev_rank").value == ranks[-1]  # the finest rank first
    assert "Weights: best.pt: epoch" in texts(at)
    # the stored test numbers
    table = frame_of(at, "test_table").set_index("key")
    stored = store.metrics(run_id)
    stored = stored[stored["split"] == "test"].set_index("key")["value"]
    for key in (N.core_key("test", "partial_chain_acc"), N.rank_key("test", N.ACC, ranks[0])):
        assert table.loc[key, "test"] == pytest.approx(stored[key])

    # confusions at the finest rank: the list and the full matrix as a heatmap
    top = frame_of(at, "confusions")
    want = plots.top_confusions(expected, ranks[-1], taxonomy)
    pd.testing.assert_frame_equal(top.reset_index(drop=True), want, check_dtype=False)
    heat = charts(at)["ru_ev_heatmap"]["data"][0]
    names = [plots.NULL_LABEL, *taxonomy.vocab[-1][1:]]
    assert heat["type"] == "heatmap" and heat["x"] == names and heat["y"] == names

    # predictions: every test sample, the most confident mistakes first
    shown = frame_of(at, "predictions")
    assert len(shown) == len(expected) and sorted(shown["source"]) == sorted(expected["source"])
    wrong = shown[shown["correct"] == False]  # noqa: E712
    assert len(wrong) and list(shown.index[: len(wrong)]) == list(wrong.index)  # mistakes first ...
    assert wrong["confidence"].is_monotonic_decreasing  # ... most confident first
    most = expected.loc[expected["correct"] == False, "confidence"].max()  # noqa: E712
    assert wrong["confidence"].iloc[0] == pytest.approx(most)
    assert f"{len(expected):,} samples of the test split" in texts(at)

    # another rank, another split
    at.selectbox(key="ru_ev_rank").set_value(ranks[0]).run()
    assert not at.exception, at.exception
    heat = charts(at)["ru_ev_heatmap"]["data"][0]
    assert heat["x"] == [plots.NULL_LABEL, *taxonomy.vocab[0][1:]]
    at.segmented_control(key="ru_ev_split").set_value("val").run()
    assert not at.exception, at.exception
    val = run_predictions(store, run_id, split="val")
    shown = frame_of(at, "predictions")
    assert sorted(shown["source"]) == sorted(val["source"]) and set(val["source"]).isdisjoint(expected["source"])

    # a rank with more classes than the heatmap draws: the top list only, and a line saying so
    monkeypatch.setattr(plots, "MAX_CONFUSION_CLASSES", 2)
    at.selectbox(key="ru_ev_rank").set_value(ranks[-1]).run()
    assert not at.exception, at.exception
    assert "ru_ev_heatmap" not in charts(at) and len(frames(at, "confusions")) == 1
    assert f"{ranks[-1]} has {len(taxonomy.vocab[-1]) - 1} classes: the matrix is drawn up to 2" in texts(at)
    assert f"{len(val):,} samples of the val split" in texts(at)


def test_class_names_are_shown_as_text_in_the_heatmap():
    """A class named like markup shows its characters: plotly reads ``<a href>`` in labels as a link."""
    tree = pd.DataFrame([("A", "<a href='http://x'>y</a>"), ("A", "b&amp;"), ("B", "c")], columns=["top", "leaf"])
    taxonomy = Taxonomy.from_frame(tree, ["top", "leaf"])
    frame = pd.DataFrame({"true/leaf": ["<a href='http://x'>y</a>", "c"], "pred/leaf": ["b&amp;", "c"],
                          "true/top": ["A", "B"], "pred/top": ["A", "B"]})
    fig = plots.confusion_figure(frame, "leaf", taxonomy)
    assert "&lt;a href='http://x'&gt;y&lt;/a&gt;" in fig.data[0].x and "b&amp;amp;" in fig.data[0].x
    top = plots.top_confusions(frame, "leaf", taxonomy)  # tables show text as it is
    assert list(top["true"]) == ["<a href='http://x'>y</a>"] and list(top["lca_height"]) == [1]


def test_a_trained_run_without_a_test_split_predicts_val(trained, monkeypatch):
    path, tested, untested = trained
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    at = app("runs")
    assert at.selectbox(key="ru_eval_run").value == tested and at.segmented_control(key="ru_ev_split").value == "test"
    at.selectbox(key="ru_eval_run").set_value(untested).run()
    assert not at.exception, at.exception
    assert "has no test split (its DATA.TEST_FRACTION is 0)" in texts(at)
    assert not frames(at, "test_table")
    assert at.segmented_control(key="ru_ev_split").value == "val"  # this run's default, not the last run's split
    assert "samples of the val split" in texts(at) and len(frame_of(at, "predictions"))
    at.segmented_control(key="ru_ev_split").set_value("test").run()  # asked anyway: the library says why not
    assert "has no test split" in "\n".join(e.value for e in at.error)
