"""Runs page: a tracker over every run in the store.

The run table (each metric summarised as last / best / min / max / the value at the selected epoch,
tags, a notes excerpt) filtered by status, dataset, tags, archive state and a filter expression; the
curves of the compared runs overlaid (grouped by several config keys, with a band and n per group,
phase 2 drawn after its parent); threshold curves of the compared runs overlaid per rank; config vs
metric (scatter, parallel coordinates); CSV export. The table and these views refresh while runs
train (a fragment on a timer) and keep the selected runs, filters and zoom. Below: one run's detail
(config, environment, tags, notes, archive, delete, diff, lineage) and evaluation, and "load this
run's config into the Train form".
"""

from __future__ import annotations

import json
import time

import pandas as pd
import streamlit as st

from app_pages import _evaluation as ev
from app_pages import _shared as sh
from app_pages._run_detail import run_detail
from workbench import names as N
from workbench import plots
from workbench.filters import FilterError, parse_filter
from workbench.launch import ACTIVE, reconcile
from workbench.summaries import HOWS, run_selected_epoch
from workbench.tracker import run_table

FINAL_LABELS = {N.VAL_PARTIAL_CHAIN_ACC: "val partial-chain", N.VAL_CHAIN_ACC: "val chain",
                N.VAL_LOSS: "val loss", N.VAL_CONSISTENCY: "consistency", N.VAL_HDIST: "hdist@1"}
OVERLAY_KEYS = [N.VAL_PARTIAL_CHAIN_ACC, N.VAL_CHAIN_ACC, N.TRAIN_PARTIAL_CHAIN_ACC,
                N.TRAIN_CHAIN_ACC, N.VAL_LOSS, N.TRAIN_LOSS, N.VAL_CONSISTENCY, N.VAL_SEVERITY,
                N.VAL_HDIST, N.NULL_INCLUSION_PROB, N.LEARNING_RATE, N.EPOCH_SECONDS]
MAX_DEFAULT_COMPARE = 8
RANK_KEYS = {N.val_acc(""): "acc ", N.best_tau(""): "best τ "}  # per-rank metrics: key prefix -> column prefix
HOW_HELP = {  # what each summary choice means (the caption under the choice, the columns' and the CSV's help)
    "last": "the value at the run's last epoch",
    "best": "in each metric's direction over epochs (max for accuracies, min for losses, hdist, time)",
    "min": "the smallest finite value over epochs",
    "max": "the largest finite value over epochs",
    "selected": "at the epoch selected on val (TRAIN.SELECT_BY), where the run's test numbers are",
}
BAND_LABELS = {  # the band choice's labels (plots.BAND_LABELS titles the chart)
    "sd": "± 1 sd", "se": "± 1 standard error", "ci95": "95% CI (t)", "minmax": "min-max"}
THRESH_EPOCHS = {"selected": "selected epoch", "last": "last epoch"}
NOTES_EXCERPT = 60  # characters of a run's notes shown in the table (the Run detail shows them all)
FILTER_EXAMPLES = ("LOSS.W >= 0.2 and core/val_partial_chain_acc > 0.7 and tag:baseline",
                   'status == running or name ~ phase2', 'not tag:"bad data" and TRAIN.SEED != 0')
TABLE_STATE, TABLE_IDS = "ru_table", "_ru_table_ids"  # the dataframe's selection; the run ids it was drawn with
COMPARED = "_ru_compared"  # the compared run ids the last full run of the page drew the sections below with
FULL_RUN = "_ru_full_run"  # True while the whole page runs (not the tracker fragment alone)
TABLE_VERSION = "_ru_table_version"  # (how, store version, monotonic time) of the table drawn, and its build seconds
# While live, the timer rebuilds the run table (every run's summaries) at most every build time / this share:
# a store of thousands of runs does not keep a core busy rebuilding it each second while one run trains
# (the compared runs' curves are re-read at every tick all the same).
LIVE_TABLE_SHARE = 0.2

st.title("Runs")
st.caption("Every run in the store, newest first. Select rows to compare them; with no selection the newest "
           f"{MAX_DEFAULT_COMPARE} runs shown are compared.")


@st.cache_data(max_entries=8, show_spinner=False)
def tracker_table(store_path: str, how: str, version: tuple) -> tuple[pd.DataFrame, float]:
    """:func:`workbench.tracker.run_table` (every run, archived too; the page filters) with the metric
    columns summarised by ``how``, and the seconds it took; recomputed only when the store changed
    (``version``)."""
    start = time.perf_counter()
    table = run_table(sh.store_at(store_path), how=how, include_archived=True)
    if not table.empty:
        table["created_at"] = pd.to_datetime(table["created"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
    return table, time.perf_counter() - start


def notes_excerpt(notes) -> str | None:
    """The first line of a run's notes, cut to :data:`NOTES_EXCERPT` characters (None: no notes)."""
    if not isinstance(notes, str) or not notes.strip():
        return None
    first = notes.strip().splitlines()[0]
    more = len(first) > NOTES_EXCERPT or len(notes.strip().splitlines()) > 1
    return first[:NOTES_EXCERPT] + ("…" if more else "")


def runs_csv(shown: pd.DataFrame) -> str:
    """The filtered table as CSV (written when the button is pressed): every run field, config key and
    metric key under its own name; tags as a JSON list (a tag may hold any character but a control one)."""
    csv = shown.drop(columns=["config", "created_at"], errors="ignore")
    csv["tags"] = csv["tags"].map(lambda tags: json.dumps(list(tags or []), ensure_ascii=False))
    return csv.to_csv(index=False)


def metric_labels(columns) -> dict[str, str]:
    """Metric key -> the table's column label: the main metrics by name, per-rank accuracy and best τ
    as ``acc <rank>`` / ``best τ <rank>``."""
    labels = {k: v for k, v in FINAL_LABELS.items() if k in columns}
    for column in columns:
        for prefix, label in RANK_KEYS.items():
            if str(column).startswith(prefix) and "/" not in str(column)[len(prefix):]:
                labels[column] = label + str(column)[len(prefix):]
    return labels


def comparable(values: pd.Series) -> pd.Series:
    """Lists and dicts (``MODEL.HIDDEN``) as text, so they group and plot like scalars."""
    return values.map(lambda v: str(v) if isinstance(v, (list, dict)) else v)


def short_key(key: str, keys: list[str]) -> str:
    """``LOSS.W`` -> ``w``; the last two parts when the last one alone is ambiguous (``SEED``)."""
    last = key.split(".")[-1]
    if sum(k.split(".")[-1] == last for k in keys) > 1:
        last = ".".join(key.split(".")[-2:])
    return last.lower()


def keep_options(key: str, options: list) -> None:
    """Drop from a multiselect's state the values no longer offered (a value kept from another store or
    an older page version, where ``ru_group`` was one key, not a list)."""
    value = st.session_state.get(key, [])
    st.session_state[key] = [v for v in value if v in options] if isinstance(value, list) else []


# ---------------------------------------------------------------------- the live switch and reconciliation
store = sh.get_store()
store_path = str(store.path)
sh.init("ru_live", True)
live = st.toggle("Refresh while runs train", key="ru_live",
                 help=f"While any run in the store is queued or running, the table and the charts below re-read "
                      f"the store every {sh.LIVE_REFRESH_S:g} s; the selected runs, the filters and the zoom stay.")


def current_table(tick: bool = False) -> pd.DataFrame:
    """The run table for the summary chosen (the cached one unless the store changed).

    ``tick``: a rerun of the tracker fragment alone while runs train (the timer's, or a filter's), which
    keeps the table drawn last while that one was chosen less than its build time / :data:`LIVE_TABLE_SHARE`
    ago. A full run of the page (every change made in the Run detail is one) reads the current version."""
    sh.init("ru_summary", "last")
    how = st.session_state.ru_summary or "last"
    version = store.data_version()
    last = st.session_state.get(TABLE_VERSION)
    if (tick and last is not None and last[0] == how and last[1] != version
            and time.monotonic() - last[2] < last[3] / LIVE_TABLE_SHARE):
        version = last[1]
    table, seconds = tracker_table(store_path, how, version)
    if last is None or last[:2] != (how, version):
        st.session_state[TABLE_VERSION] = (how, version, time.monotonic(), seconds)
    return table


def active_ids(tick: bool = False) -> list[str]:
    """Runs the store says are queued or running, read from the (cached) run table."""
    runs = current_table(tick)
    return list(runs.loc[runs["status"].isin(ACTIVE), "id"])


active = active_ids()
if active and reconcile(store, active):  # a dead process is marked failed before anything is drawn
    active = active_ids()
if current_table().empty:
    st.info("No runs yet: start one on the Train page.")
    st.stop()


# ---------------------------------------------------------------------- the tracker (refreshed while live)
@st.fragment(run_every=sh.LIVE_REFRESH_S if live and active else None)
def tracker(was_active: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Filters, the run table, CSV export and the compare views; returns the compared runs' rows and
    the whole table (every run, archived too)."""
    full_run = st.session_state.get(FULL_RUN, False)
    tick = was_active and not full_run  # the timer's rerun (or a widget's inside this fragment while live)
    if tick:
        now_active = active_ids(tick)
        if reconcile(store, now_active) or not now_active:
            st.rerun()  # a run ended: redraw the page once (stops this timer, updates the detail below)

    how = st.segmented_control("Summary", list(HOWS), key="ru_summary", required=True,
                               help="How each metric column, the scatter, the parallel coordinates and the CSV "
                                    "turn a run's epochs into one number.")
    st.caption(f"**{how}**: {HOW_HELP[how]}.")
    runs = current_table(tick)
    labels_of = metric_labels(runs.columns)

    # ------------------------------------------------------------------ filters
    statuses = sorted(runs["status"].unique())
    datasets = sorted(runs["DATA.NAME"].astype(str).unique()) if "DATA.NAME" in runs else []
    all_tags = store.all_tags()
    for key, options in (("ru_status", statuses), ("ru_data", datasets), ("ru_tag_filter", all_tags)):
        keep_options(key, options)  # empty = all
    c1, c2, c3, c4 = st.columns([2, 2, 2, 1.3], vertical_alignment="bottom")
    status_filter = c1.multiselect("Status", statuses, key="ru_status", placeholder="all")
    data_filter = c2.multiselect("Dataset", datasets, key="ru_data", placeholder="all")
    tag_filter = c3.multiselect("Tags (any of)", all_tags, key="ru_tag_filter", placeholder="any",
                                help="Runs that have at least one of these tags. Tag runs in the Run detail below.")
    sh.init("ru_show_archived", False)
    show_archived = c4.toggle("Show archived", key="ru_show_archived",
                              help="Archived runs are hidden from the table and the charts until shown here.")
    c1, c2 = st.columns([3, 1])
    expression = c1.text_input("Filter", key="ru_filter", placeholder=f"e.g. {FILTER_EXAMPLES[0]}",
                               help="KEY OP VALUE with == != < <= > >= ~ (case-insensitive substring), combined "
                                    "with and / or / not and parentheses; KEY a config key (LOSS.W), a metric key "
                                    "(core/val_partial_chain_acc, val/acc/genus: the summary chosen above) or a "
                                    "run column (status, name, id, sweep_id, parent_id, epochs_done); tag:NAME.")
    search = c2.text_input("Name or id contains", key="ru_search", placeholder="e.g. phase2")
    st.caption("Filter examples: " + " · ".join(f"`{e}`" for e in FILTER_EXAMPLES))

    shown = runs if show_archived else runs[~runs["archived"].astype(bool)]
    if status_filter:
        shown = shown[shown["status"].isin(status_filter)]
    if data_filter:
        shown = shown[shown["DATA.NAME"].astype(str).isin(data_filter)]
    if tag_filter:
        shown = shown[shown["tags"].map(lambda tags: bool(set(tags or ()) & set(tag_filter)))]
    if search:
        mask = (shown["name"].astype(str).str.contains(search, case=False, regex=False)
                | shown["id"].str.contains(search, regex=False))
        shown = shown[mask]
    if expression.strip():
        try:  # evaluated over every run, so a key's kind (number, text) does not depend on the other filters
            shown = shown[parse_filter(expression).mask(runs).loc[shown.index]]
        except FilterError as e:
            st.error("The filter expression was not applied (the table shows every run the other filters "
                     "keep):", icon=":material/error:")
            st.code(str(e), language=None)
    shown = shown.reset_index(drop=True)

    # ------------------------------------------------------------------ the table; selection kept by run id
    ids_now = list(shown["id"])
    drawn = st.session_state.get(TABLE_IDS, [])
    state = st.session_state.get(TABLE_STATE)
    rows_before = list(state["selection"]["rows"]) if state is not None else []
    chosen = [drawn[r] for r in rows_before if r < len(drawn)]
    position = {run_id: i for i, run_id in enumerate(ids_now)}
    rows = sorted(position[r] for r in chosen if r in position)
    if rows != rows_before:  # a run appeared above, or a filter moved rows: keep the same RUNS selected
        st.session_state[TABLE_STATE] = {"selection": {"rows": rows, "columns": []}}
    st.session_state[TABLE_IDS] = ids_now

    view = shown.rename(columns=labels_of)
    view["notes"] = shown["notes"].map(notes_excerpt)
    for label in FINAL_LABELS.values():  # a store where no run logged a metric yet still has its column
        if label not in view:
            view[label] = float("nan")
    rank_columns = [labels_of[c] for c in shown.columns if c in labels_of and c not in FINAL_LABELS]
    columns = ["id", "name", "status", "tags", "val partial-chain", "val chain", "val loss", "epochs_done",
               "DATA.NAME", "LOSS.W", "MODEL.HEAD", "TRAIN.PHASE1_MASK_NULL_LOSS", "SCHEDULE.NULL_MASKING.END_EPOCH",
               "TRAIN.SEED", "consistency", "hdist@1", *rank_columns, "notes", "parent_id", "sweep_id", "created_at",
               *(["archived"] if show_archived else [])]
    columns = [c for c in dict.fromkeys(columns) if c in view]
    st.dataframe(
        view[columns], key=TABLE_STATE, on_select="rerun", selection_mode="multi-row", hide_index=True, height=300,
        column_config={
            "id": st.column_config.TextColumn("run id", width="medium"),
            "tags": st.column_config.ListColumn("tags", help="Add or remove tags in the Run detail below."),
            "notes": st.column_config.TextColumn("notes", help="The first line of the run's notes."),
            "epochs_done": st.column_config.NumberColumn("epochs"),
            "DATA.NAME": "data", "LOSS.W": st.column_config.NumberColumn("w", format="%.2f"),
            "MODEL.HEAD": "head", "TRAIN.PHASE1_MASK_NULL_LOSS": st.column_config.CheckboxColumn("phase 1"),
            "SCHEDULE.NULL_MASKING.END_EPOCH": st.column_config.NumberColumn("ramp end", format="%g"),
            "TRAIN.SEED": "seed",
            "val partial-chain": st.column_config.ProgressColumn("val partial-chain", format="%.3f",
                                                                 min_value=0.0, max_value=1.0, help=HOW_HELP[how]),
            "val chain": st.column_config.ProgressColumn("val chain", format="%.3f", min_value=0.0, max_value=1.0,
                                                         help=HOW_HELP[how]),
            "val loss": st.column_config.NumberColumn(format="%.4f", help=HOW_HELP[how]),
            "consistency": st.column_config.NumberColumn(format="%.3f", help=HOW_HELP[how]),
            "hdist@1": st.column_config.NumberColumn(format="%.3f", help=HOW_HELP[how]),
            **{c: st.column_config.NumberColumn(c, format="%.2f" if c.startswith("best") else "%.3f",
                                                help=f"{how.capitalize()}: " + (
                                                    "the val-chosen threshold of the rank" if c.startswith("best")
                                                    else "val accuracy at the rank (labelled samples)"))
               for c in rank_columns},
            "parent_id": "parent", "sweep_id": "sweep", "created_at": "created",
            "archived": st.column_config.CheckboxColumn("archived", help="Archive or unarchive in the Run detail."),
        },
    )
    selected = shown.iloc[rows] if rows else shown.head(MAX_DEFAULT_COMPARE)
    ids = list(selected["id"])
    if not full_run and ids != st.session_state.get(COMPARED):
        st.rerun()  # the compared runs changed: the run detail and evaluation below follow them

    c1, c2, c3 = st.columns([2, 1, 1.4], vertical_alignment="center")
    hidden = 0 if show_archived else int(runs["archived"].astype(bool).sum())
    c1.caption(f"{len(shown)} of {len(runs)} runs shown" + (f" ({hidden} archived hidden)" if hidden else "")
               + f"; comparing {len(ids)} ({'selected' if rows else 'newest'}).")
    c2.download_button("Run table (CSV)", lambda: runs_csv(shown), file_name=f"runs-{how}.csv",
                       mime="text/csv", icon=":material/download:", key="ru_csv_runs", width="stretch",
                       help=f"The filtered table with every config key and metric ({how}: {HOW_HELP[how]}).")
    c3.download_button("Metrics of compared runs (CSV)", lambda: store.metrics(ids).to_csv(index=False),
                       file_name="metrics.csv", mime="text/csv", icon=":material/download:", key="ru_csv_metrics",
                       width="stretch", disabled=not ids)
    if not ids:
        st.info("No run matches these filters: clear one to see runs again.")
        return selected, runs
    compare_curves(runs, selected)
    threshold_overlay(selected)
    config_vs_metric(shown, how)
    return selected, runs


def compare_curves(runs: pd.DataFrame, selected: pd.DataFrame) -> None:
    """One metric of the compared runs over epochs, one line per run or one band per group."""
    st.subheader("Compare curves", divider="gray")
    ids = list(selected["id"])
    labels = {r["id"]: (r["name"] if r["name"] != r["id"] else r["id"]) for r in selected.to_dict("records")}
    ranks = store.run_ranks(ids[0])
    keys = OVERLAY_KEYS + [N.val_acc(r) for r in ranks] + [N.best_tau(r) for r in ranks]
    group_options = plots.varying_config_keys(selected)
    sh.init("ru_key", keys[0])
    if st.session_state.ru_key not in keys:
        st.session_state.ru_key = keys[0]
    keep_options("ru_group", group_options)
    sh.init("ru_band", plots.BANDS[0])
    c1, c2, c3, c4 = st.columns([2, 1, 2, 1.2])
    key = c1.selectbox("Metric", keys, key="ru_key", format_func=plots.metric_label)
    sh.init("ru_smooth", 0.0)
    smoothing = c2.slider("Smoothing", 0.0, 0.95, step=0.05, key="ru_smooth",
                          help="Exponential moving average: s_t = a s_(t-1) + (1 - a) x_t.")
    group_cols = c3.multiselect("Group by", group_options, key="ru_group", placeholder="(one line per run)",
                                help="Config keys that differ among the compared runs, e.g. LOSS.W over several "
                                     "seeds: one mean line and band per combination of their values.")
    band = c4.selectbox("Band", plots.BANDS, key="ru_band", format_func=BAND_LABELS.get, disabled=not group_cols,
                        help="The spread drawn around each group's mean, over its runs (n in the legend).")
    if group_cols:
        mixed = plots.varying_within_groups(selected, group_cols)
        keep_options("ru_split_by", mixed)
        if mixed:
            note = (f"Inside these groups also vary: {', '.join(mixed)}. Each mean pools runs that differ in these "
                    "too; split by them to compare like with like.")
            # seeds are what a group is meant to pool over; anything else mixes settings
            (st.caption if mixed == [N.SEED_KEY] else st.warning)(sh.md_escape(note))
            group_cols = group_cols + st.multiselect("Also split by", mixed, key="ru_split_by",
                                                     placeholder="(pool them)")
    has_parent = selected["parent_id"].notna().any() if "parent_id" in selected else False
    sh.init("ru_continue", False)
    continued = st.toggle("Draw phase 2 after its parent", key="ru_continue", disabled=not has_parent,
                          help="A phase-2 run's epochs are drawn after its parent's (offset by the parent's epochs "
                               "done), so the two phases read as one curve.")
    offsets = plots.lineage_offsets(runs) if continued and has_parent else None
    long = store.metrics(ids, keys=[key])
    if long.empty:
        st.info(f"No values of `{key}` stored for these runs yet.")
        return
    by_id = selected.set_index("id")
    for col in group_cols:
        long[col] = long["run_id"].map(comparable(by_id[col]))
    # the figure's uirevision is constant: a live refresh keeps the zoom and the hidden traces
    st.plotly_chart(plots.overlay(long, key, smoothing, group_cols or None, labels, offsets, band=band),
                    key="ru_overlay")
    if key.endswith("partial_chain_acc") or key.endswith("chain_acc"):
        st.caption(f"{sh.METRIC_HELP['chain']} {sh.METRIC_HELP['partial']}")


@st.cache_data(max_entries=8, show_spinner=False)
def compared_curves(store_path: str, select_by: tuple[tuple[str, str | None], ...], at: str,
                    version: tuple) -> tuple[pd.DataFrame, dict[str, int]]:
    """The val threshold curves of the compared runs (``select_by``: ``(run id, its TRAIN.SELECT_BY)``
    pairs), each at its selected or last epoch: a long frame ``run_id, epoch, rank, curve, tau, value``
    and ``{run id: epoch}`` (0-based). Only these runs' rows are read."""
    store = sh.store_at(store_path)
    ids = [r for r, _ in select_by]
    metrics = store.metrics(ids)
    if metrics.empty:
        return pd.DataFrame(columns=["run_id", "epoch", "rank", "curve", "tau", "value"]), {}
    if at == "last":
        epochs = metrics.groupby("run_id")["epoch"].max()
    else:  # the epoch of the run's test rows, else where its own TRAIN.SELECT_BY is best
        epochs = run_selected_epoch(metrics, {r: by for r, by in select_by if isinstance(by, str) and by})
    frames = [store.curves(r, int(epochs[r])).assign(run_id=r) for r in ids if r in epochs.index]
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "curve"])
    return curves, {r: int(e) for r, e in epochs.items()}


def threshold_overlay(selected: pd.DataFrame) -> None:
    """Threshold curves of the compared runs overlaid, one panel per rank, at each run's selected or last epoch."""
    st.subheader("Threshold curves across runs", divider="gray")
    ids = list(selected["id"])
    sh.init("ru_thresh_epoch", "selected")
    c1, c2 = st.columns([1, 1])
    at = c1.radio("At each run's", list(THRESH_EPOCHS), key="ru_thresh_epoch", format_func=THRESH_EPOCHS.get,
                  horizontal=True, help="Selected: the epoch chosen on val by the run's TRAIN.SELECT_BY (where its "
                                        "best.pt and test numbers are). Last: the run's latest epoch.")
    by = selected[N.SELECT_BY_KEY] if N.SELECT_BY_KEY in selected else pd.Series(None, index=selected.index)
    curves, epochs = compared_curves(store_path, tuple(zip(ids, by)), at, store.data_version())
    if curves.empty:
        st.info("No threshold curves stored for the compared runs at these epochs.")
        return
    names = [c for c in plots.CURVE_LABELS if (curves["curve"] == c).any()]
    names += [c for c in dict.fromkeys(curves["curve"]) if c not in names]
    sh.init("ru_thresh_rank", "selective_accuracy")
    if st.session_state.ru_thresh_rank not in names:
        st.session_state.ru_thresh_rank = names[0]
    curve = c2.selectbox("Curve", names, key="ru_thresh_rank", format_func=lambda c: plots.CURVE_LABELS.get(c, c))
    stored = set(curves["rank"])  # the runs' ranks coarse to fine, then any other rank the curves have
    ranks = [r for r in dict.fromkeys(r for run_id in ids for r in store.run_ranks(run_id)) if r in stored]
    ranks += sorted(stored - set(ranks))
    labels = {r["id"]: sh.run_label(r) + f" (epoch {plots.display_epoch(epochs[r['id']])})"
              for r in selected.to_dict("records") if r["id"] in epochs}
    st.plotly_chart(plots.threshold_overlay(curves, labels, curve=curve, ranks=ranks), key="ru_thresholds")
    missing = [r for r in ids if r not in set(curves["run_id"])]
    if missing:
        st.caption(sh.md_escape(f"No curves stored at that epoch for: {', '.join(missing)}."))


def config_vs_metric(shown: pd.DataFrame, how: str) -> None:
    """Config keys against a summarised metric over the filtered runs: a scatter or parallel coordinates."""
    st.subheader("Config vs metrics", divider="gray")
    table = shown.rename(columns=metric_labels(shown.columns))
    if "val partial-chain" not in table:
        st.info("Comparing configs needs runs with a finished epoch.")
        return
    finished = table.dropna(subset=["val partial-chain"])
    dims_config = [k for k in plots.varying_config_keys(finished)
                   if pd.api.types.is_numeric_dtype(finished[k]) or comparable(finished[k]).nunique() <= 30]
    if len(finished) < 2 or not dims_config:
        st.info("Comparing configs needs at least two runs with a finished epoch whose configs differ.")
        return
    metric_cols = [c for c in FINAL_LABELS.values() if c in finished and finished[c].notna().any()]
    table = finished[["id", "name", *dims_config, *metric_cols]].copy()
    for col in dims_config:
        if table[col].map(lambda v: isinstance(v, (list, dict))).any():
            table[col] = table[col].map(str)

    sh.init("ru_view", "Scatter")
    view = st.segmented_control("View", ["Scatter", "Parallel coordinates"], key="ru_view", required=True,
                                help="Parallel coordinates draw with WebGL: slower to open in a browser without a GPU.")
    c1, c2, c3 = st.columns(3)
    sh.init("ru_color", "val partial-chain")
    if st.session_state.ru_color not in metric_cols:
        st.session_state.ru_color = metric_cols[0]
    metric = c1.selectbox(f"Metric ({how})", metric_cols, key="ru_color")
    if view == "Scatter":
        sh.init("ru_x", "LOSS.W" if "LOSS.W" in dims_config else dims_config[0])
        if st.session_state.ru_x not in dims_config:
            st.session_state.ru_x = dims_config[0]
        x = c2.selectbox("Config key (x)", dims_config, key="ru_x")
        split_options = ["(none)"] + [k for k in dims_config if k != x and table[k].nunique() <= 10]
        if st.session_state.get("ru_split") not in split_options:
            st.session_state.ru_split = "(none)"
        split = c3.selectbox("Colour by", split_options, key="ru_split")
        fig = plots.config_scatter(table, x, metric, None if split == "(none)" else split, hover="name")
        fig.update_layout(uirevision="ru_scatter")
        st.plotly_chart(fig, key="ru_scatter")
        st.caption(f"{len(finished)} runs (the filtered table), each metric its {how} value; other config keys "
                   "vary too, so points at one x may differ in more than x.")
    else:
        short = {k: short_key(k, dims_config) for k in dims_config}
        fig = plots.parallel_coords(table, dims_config + metric_cols, metric, short)
        fig.update_layout(uirevision="ru_parcoords")  # axis brushes stay through a live refresh
        st.plotly_chart(fig, key="ru_parcoords")
        st.caption(f"{len(finished)} runs (the filtered table), each metric its {how} value. Config axes are the "
                   "keys that differ between runs; drag along an axis to filter.")


st.session_state[FULL_RUN] = True  # the fragment tells a full run of the page from its own reruns
try:
    selected, all_runs = tracker(bool(live and active))
finally:
    st.session_state[FULL_RUN] = False
ids = list(selected["id"])
st.session_state[COMPARED] = ids

# ---------------------------------------------------------------------- one run: detail, evaluation, train again
st.subheader("Run detail", divider="gray")
run_detail(store, selected, all_runs)
if not ids:
    st.stop()

st.subheader("Evaluate a run", divider="gray")
full_labels = {r["id"]: sh.run_label(r) for r in selected.to_dict("records")}
if st.session_state.get("ru_eval_run") not in ids:
    st.session_state.ru_eval_run = ids[0]
eval_id = st.selectbox("Run", ids, key="ru_eval_run", format_func=lambda r: full_labels.get(r, r),
                       help="One of the compared runs: its test numbers, confusions per rank and predictions.")
ev.evaluation_view(eval_id, key="ru_ev")

st.subheader("Train again", divider="gray")
if st.session_state.get("ru_load_run") not in ids:
    st.session_state.ru_load_run = ids[0]
c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
load_id = c1.selectbox("Run to train again", ids, key="ru_load_run", format_func=lambda r: full_labels.get(r, r),
                       help="One of the compared runs.")
if c2.button("Load its config into the Train form", icon=":material/input:", key="ru_load", width="stretch",
             help="Fills the Train page's form and the Data page's dataset with this run's config, then opens Train."):
    left_out = sh.load_config_into_form(store.run(load_id)["config"])
    note = (f" Not in the form, so a new run will not have: {sh.md_escape(', '.join(left_out))}." if left_out else "")
    st.session_state.tr_flash = ("info", f"Loaded the config of run `{load_id}` into the form: check it, then Start.{note}")
    st.switch_page("app_pages/train.py")
