"""The evaluation of one run (DESIGN.md 3.5): its test numbers beside the val numbers of the epoch it
selected, the per-rank confusions and the predictions table.

Rendered by the Runs page (:func:`evaluation_view`: everything) and, compactly, by the Train page's
watch view (:func:`test_numbers`: the test table only). Figures and tables come from the pure builders
in :mod:`workbench.plots`; predictions from :func:`workbench.predict.run_predictions`, cached per run,
split and weights file. The underscore keeps this module out of the page list.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import _shared as sh
from workbench import names as N
from workbench import plots
from workbench.config import ConfigError
from workbench.data import BUILTIN_RANKS, DataError
from workbench.store import RunStore, StoreError
from workbench.taxonomy import TaxonomyError

EVAL_SPLITS = ("test", "val")  # the splits the predictions view offers (the truth is known on both)
PREDICTION_ROWS_PX = 420  # height of the predictions table

TEST_TABLE_COLUMNS = {
    "metric": st.column_config.TextColumn("metric"),
    "val": st.column_config.NumberColumn("val (selected epoch)", format="%.4f",
                                         help="The val value at the epoch the run selected on val."),
    "test": st.column_config.NumberColumn("test", format="%.4f",
                                          help="Evaluated once, with the selected epoch's weights."),
}
TAU_TEST_COLUMNS = {
    "rank": st.column_config.TextColumn("rank"),
    "tau": st.column_config.NumberColumn("τ (chosen on val)", format="%.2f"),
    **{c: st.column_config.NumberColumn(c, format="%.3f") for c in
       ("val coverage", "test coverage", "val selective accuracy", "test selective accuracy")},
}
PREDICTION_TABLE_COLUMNS = {
    "sample": st.column_config.NumberColumn("sample", help="Position within the split.", format="%d"),
    "true_path": st.column_config.TextColumn("true path"),
    "pred_path": st.column_config.TextColumn("predicted path"),
    "confidence": st.column_config.ProgressColumn(
        "confidence", format="%.3f", min_value=0.0, max_value=1.0,
        help="Probability of the predicted class at the sample's finest labelled rank."),
    "correct": st.column_config.CheckboxColumn("correct", help="Partial-chain correct: every labelled rank right."),
    "severity": st.column_config.NumberColumn(
        "severity", format="%d",
        help="LCA height of the true and predicted class at the finest labelled rank; 0 when right."),
    "source": st.column_config.TextColumn("source", help="The image file or the spreadsheet row."),
}
CONFUSION_COLUMNS = {
    "true": st.column_config.TextColumn("true"),
    "predicted": st.column_config.TextColumn("predicted"),
    "count": st.column_config.NumberColumn("count", format="%d"),
    "lca_height": st.column_config.NumberColumn(
        "LCA height", format="%d", help="Ranks up to the classes' lowest common ancestor: 1 = siblings."),
}


ROW_PX, MAX_TABLE_ROWS = 35, 24  # st.dataframe's row height; a longer table scrolls


def table_height(rows: int) -> int:
    """Pixels for a table of ``rows`` rows and its header, so a short table shows whole, without a scrollbar."""
    return (min(rows, MAX_TABLE_ROWS) + 1) * ROW_PX + 3


def keyed_table(key: str, data: pd.DataFrame, **kwargs) -> None:
    """``st.dataframe`` inside a container keyed ``key``: the key becomes the ``st-key-<key>`` class a browser
    finds the table by (a keyed ``st.dataframe`` without a selection gets none)."""
    with st.container(key=key):
        st.dataframe(data, hide_index=True, width="stretch", **kwargs)


# ---------------------------------------------------------------------- test numbers
def no_test_reason(run: dict) -> str:
    """One line: why ``run`` has no test rows (not finished, failed, no test split, recorded before
    test evaluation existed)."""
    status = run["status"]
    data = (run.get("config") or {}).get("DATA") or {}
    if status in N.ACTIVE:
        return f"No test numbers yet: the run is {status}; the test split is evaluated once, after its last epoch."
    if status == "failed":
        return "No test numbers: the run failed, and only a run that ends (finished or stopped) is evaluated on test."
    if "TEST_FRACTION" not in data:
        return "No test numbers: the run was recorded before test evaluation existed."
    if not data["TEST_FRACTION"] and not data.get("SPLIT_COLUMN") and data.get("NAME") not in BUILTIN_RANKS:
        return "No test numbers: the run has no test split (its DATA.TEST_FRACTION is 0)."
    return ("No test numbers stored: the run's data had no test split (a split column without test rows), "
            "or it ended before its test evaluation was written.")


def test_numbers(store: RunStore, run_id: str, key: str) -> bool:
    """The table "selected epoch (val) vs test" of ``run_id`` and, when stored, its val-chosen τ applied
    to test; a run without test rows gets one line saying why. Returns whether it had test rows.
    ``key`` prefixes the elements' keys (one view per page)."""
    run = store.run(run_id)
    ranks = store.run_ranks(run_id)
    metrics = store.metrics(run_id)
    table = plots.selected_vs_test(metrics, ranks)
    if table.empty:
        st.caption(sh.md_escape(no_test_reason(run)))
        return False
    epoch = int(table["epoch"].iloc[0])
    select_by = (run["config"].get("TRAIN") or {}).get("SELECT_BY") or N.SELECT_BY_DEFAULT
    epochs = int((run["config"].get("TRAIN") or {}).get("EPOCHS") or 0)
    st.caption(sh.md_escape(
        f"Selected epoch {epoch} of {epochs} (best {plots.metric_label(select_by)}, "
        f"{'higher' if N.direction(select_by) == 'max' else 'lower'} is better, chosen on val); the test split "
        "was evaluated once, with that epoch's weights."))
    full = st.toggle("All test metrics", key=f"{key}_test_full",
                     help="Also top-k, ECE, AUROC and null-target accuracy per rank, when stored.")
    if full:
        table = plots.selected_vs_test(metrics, ranks, full=True)
    keyed_table(f"{key}_test_table", table, column_config=TEST_TABLE_COLUMNS, column_order=["metric", "val", "test"],
                height=table_height(len(table)))
    val_curves = store.curves(run_id, epoch=epoch - plots.EPOCH_OFFSET, split="val")
    at_tau = plots.tau_on_test(metrics, ranks, val_curves)
    if len(at_tau):
        st.markdown("**Each rank's threshold, chosen on val, applied to test**")
        keyed_table(f"{key}_test_tau", at_tau, column_config=TAU_TEST_COLUMNS, height=table_height(len(at_tau)))
        st.caption("Per rank, the model abstains (predicts null) when its most probable class has a probability "
                   "below τ. Coverage: labelled samples given a class; selective accuracy: correct among those.")
    return True


# ---------------------------------------------------------------------- predictions
def weights_file(store: RunStore, run_id: str) -> Path | None:
    """The weights predictions use: the run's ``best.pt`` (the selected epoch), else its ``checkpoint.pt``
    (the last epoch: a run recorded before best.pt existed); None when the run saved neither."""
    from workbench.bundle import best_checkpoint_path

    for path in (best_checkpoint_path(store, run_id), store.checkpoint_path(run_id)):
        if path.is_file():
            return path
    return None


@st.cache_data(max_entries=8, show_spinner=False)
def predictions(store_path: str, run_id: str, split: str, weights: str, weights_mtime: int) -> pd.DataFrame:
    """:func:`workbench.predict.run_predictions` of ``split``, cached by (store, run, split, weights file
    and its mtime): a run that trains on (and rewrites best.pt) is predicted again."""
    from workbench.predict import run_predictions

    return run_predictions(sh.store_at(store_path), run_id, split=split)


@st.cache_resource(max_entries=8, show_spinner=False)
def taxonomy_of(weights: str, weights_mtime: int):
    """The taxonomy saved with a run's weights (class names and parents, for LCA heights)."""
    from workbench.taxonomy import Taxonomy
    from workbench.trainer import load_checkpoint

    return Taxonomy.from_dict(load_checkpoint(Path(weights), ("taxonomy",))["taxonomy"])


def confusions_and_predictions(store: RunStore, run_id: str, has_test: bool, key: str) -> None:
    """The per-rank confusion view and the predictions table of one split (a choice: test or val)."""
    weights = weights_file(store, run_id)
    if weights is None:
        st.info("This run saved no weights (no best.pt or checkpoint.pt in its folder), so there is nothing "
                "to predict with.", icon=":material/info:")
        return
    ss = st.session_state
    if ss.get(f"{key}_split") not in EVAL_SPLITS or ss.get(f"{key}_shown") != run_id:  # another run: its default
        ss[f"{key}_split"] = "test" if has_test else "val"
    ss[f"{key}_shown"] = run_id
    c1, c2 = st.columns([1, 2], vertical_alignment="bottom")
    split = c1.segmented_control("Split", EVAL_SPLITS, key=f"{key}_split", required=True,
                                 help="Predict the test split (the run's final numbers) or the val split "
                                      "(what selected its epoch).")
    mtime = weights.stat().st_mtime_ns
    try:
        with st.spinner(f"Predicting the {split} split..."):
            frame = predictions(str(store.path), run_id, split, str(weights), mtime)
        taxonomy = taxonomy_of(str(weights), mtime)
    except (ConfigError, DataError, StoreError, TaxonomyError) as e:  # the run's data or weights are gone or changed
        st.error(sh.md_escape(e), icon=":material/error:")
        return
    c2.caption(sh.md_escape(f"Weights: {frame.attrs.get('weights', weights.name)}."))  # which file, which epoch
    if frame.empty:
        st.info(f"The {split} split of this run has no samples.")
        return

    st.markdown("**Confusions per rank**")
    ranks = list(taxonomy.ranks)
    if st.session_state.get(f"{key}_rank") not in ranks:
        st.session_state[f"{key}_rank"] = ranks[-1]
    rank = st.selectbox("Rank", ranks, key=f"{key}_rank", help="The rank whose confusions are shown.")
    classes = taxonomy.num_classes[taxonomy.rank_index(rank)] - 1
    top = plots.top_confusions(frame, rank, taxonomy)
    left, right = st.columns([1, 1.6])
    with left:
        if top.empty:
            st.caption(sh.md_escape(f"No mistakes at {rank} among the samples labelled there."))
        else:
            keyed_table(f"{key}_confusions", top, column_config=CONFUSION_COLUMNS, height=table_height(len(top)))
            st.caption(sh.md_escape(f"The {len(top)} most frequent mistakes at {rank} (samples labelled there); "
                                    f"{plots.NULL_LABEL} = predicted null."))
    with right:
        if classes <= plots.MAX_CONFUSION_CLASSES:
            st.plotly_chart(plots.confusion_figure(frame, rank, taxonomy), key=f"{key}_heatmap")
        else:
            st.info(sh.md_escape(f"{rank} has {classes:,} classes: the matrix is drawn up to "
                                 f"{plots.MAX_CONFUSION_CLASSES}; the list shows the top confusions."))

    st.markdown("**Predictions**")
    table = plots.predictions_table(frame)
    mistakes = int((table["correct"] == False).sum())  # noqa: E712 (None = unknown is neither)
    keyed_table(f"{key}_predictions", table, column_config=PREDICTION_TABLE_COLUMNS, height=PREDICTION_ROWS_PX)
    c1, c2 = st.columns([3, 1], vertical_alignment="center")
    c1.caption(f"{len(table):,} samples of the {split} split, {mistakes:,} partial-chain mistakes; most confident "
               "mistakes first. Click a column header to sort by it.")
    c2.download_button("Predictions (CSV)", lambda: table.to_csv(index=False), file_name=f"{run_id}-{split}.csv",
                       mime="text/csv", icon=":material/download:", key=f"{key}_csv", width="stretch",
                       help="This table; `python -m workbench predict` writes every column (top-k per rank, ...).")


def evaluation_view(run_id: str, key: str = "ev") -> None:
    """Everything about one run's evaluation: the test numbers, then the confusions and predictions of
    a split. In a fragment: choosing a rank or a split reruns this view only."""

    @st.fragment
    def view() -> None:
        store = sh.get_store()
        has_test = test_numbers(store, run_id, key)
        confusions_and_predictions(store, run_id, has_test, key)

    view()
