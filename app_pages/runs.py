"""Runs page: the run table (final metrics, per-rank accuracy and best τ), overlaid curves of
selected runs (grouped by config keys, phase 2 drawn after its parent), one run's evaluation (test vs
the selected epoch's val, confusions per rank, predictions), config vs final metrics, CSV export, and
"load this run's config into the Train form"."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st
import yaml

from app_pages import _evaluation as ev
from app_pages import _shared as sh
from workbench import names as N
from workbench import plots
from workbench.launch import ACTIVE, reconcile

FINAL_KEYS = [N.VAL_PARTIAL_CHAIN_ACC, N.VAL_CHAIN_ACC, N.VAL_LOSS, N.VAL_CONSISTENCY, N.VAL_HDIST]
FINAL_LABELS = {N.VAL_PARTIAL_CHAIN_ACC: "val partial-chain", N.VAL_CHAIN_ACC: "val chain",
                N.VAL_LOSS: "val loss", N.VAL_CONSISTENCY: "consistency", N.VAL_HDIST: "hdist@1"}
OVERLAY_KEYS = [N.VAL_PARTIAL_CHAIN_ACC, N.VAL_CHAIN_ACC, N.TRAIN_PARTIAL_CHAIN_ACC,
                N.TRAIN_CHAIN_ACC, N.VAL_LOSS, N.TRAIN_LOSS, N.VAL_CONSISTENCY, N.VAL_SEVERITY,
                N.VAL_HDIST, N.NULL_INCLUSION_PROB, N.EPOCH_SECONDS]
MAX_DEFAULT_COMPARE = 8
RANK_KEYS = {N.val_acc(""): "acc ", N.best_tau(""): "best τ "}  # per-rank final metrics: key prefix -> column prefix

st.title("Runs")
st.caption("Every run in the store, newest first. Select rows to compare them; with no selection the newest "
           f"{MAX_DEFAULT_COMPARE} runs shown are compared. Final metrics are from each run's last epoch.")



@st.cache_data(max_entries=4, show_spinner=False)
def runs_table(store_path: str, version: tuple) -> pd.DataFrame:
    """Runs with their flattened config and final metrics; recomputed only when the store changed."""
    store = sh.store_at(store_path)
    runs = store.runs(with_config=True)
    if runs.empty:
        return runs
    # each run's stored ranks (coarse to fine); the store's fallback for rows written before they were
    ranks = list(dict.fromkeys(r for rid, stored in zip(runs["id"], runs["ranks"])
                               for r in (stored if stored is not None else store.run_ranks(rid))))
    labels = {**FINAL_LABELS, **{f"{key}{r}": f"{col}{r}" for r in ranks for key, col in RANK_KEYS.items()}}
    final = plots.final_metrics(store.metrics(list(runs["id"]), list(labels)))
    runs = runs.join(final.rename(columns=labels), on="id") if len(final) else runs
    for col in labels.values():
        if col not in runs:
            runs[col] = float("nan")
    runs["created_at"] = pd.to_datetime(runs["created"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
    return runs


store = sh.get_store()
runs = runs_table(str(store.path), store.data_version())
if not runs.empty and reconcile(store, list(runs.loc[runs["status"].isin(ACTIVE), "id"])):
    runs = runs_table(str(store.path), store.data_version())  # a dead process was marked failed
if runs.empty:
    st.info("No runs yet: start one on the Train page.")
    st.stop()

# ---------------------------------------------------------------------- filters
c1, c2, c3 = st.columns([2, 2, 3])
statuses = sorted(runs["status"].unique())
datasets = sorted(runs["DATA.NAME"].astype(str).unique()) if "DATA.NAME" in runs else []
for key, options in (("ru_status", statuses), ("ru_data", datasets)):  # empty = all
    st.session_state[key] = [v for v in st.session_state.get(key, []) if v in options]
status_filter = c1.multiselect("Status", statuses, key="ru_status", placeholder="all")
data_filter = c2.multiselect("Dataset", datasets, key="ru_data", placeholder="all")
search = c3.text_input("Name or id contains", key="ru_search", placeholder="e.g. phase2")
shown = runs[runs["status"].isin(status_filter)] if status_filter else runs
if data_filter:
    shown = shown[shown["DATA.NAME"].astype(str).isin(data_filter)]
if search:
    mask = shown["name"].astype(str).str.contains(search, case=False, regex=False) | shown["id"].str.contains(search, regex=False)
    shown = shown[mask]
shown = shown.reset_index(drop=True)

rank_columns = [c for c in runs.columns if str(c).startswith(tuple(RANK_KEYS.values()))]
columns = ["id", "name", "status", "val partial-chain", "val chain", "val loss", "epochs_done", "DATA.NAME", "LOSS.W",
           "MODEL.HEAD", "TRAIN.PHASE1_MASK_NULL_LOSS", "SCHEDULE.NULL_MASKING.END_EPOCH", "TRAIN.SEED",
           "consistency", "hdist@1", *rank_columns, "parent_id", "sweep_id", "created_at"]
columns = [c for c in columns if c in shown]
event = st.dataframe(
    shown[columns], key="ru_table", on_select="rerun", selection_mode="multi-row", hide_index=True, height=300,
    column_config={
        "id": st.column_config.TextColumn("run id", width="medium"),
        "epochs_done": st.column_config.NumberColumn("epochs"),
        "DATA.NAME": "data", "LOSS.W": st.column_config.NumberColumn("w", format="%.2f"),
        "MODEL.HEAD": "head", "TRAIN.PHASE1_MASK_NULL_LOSS": st.column_config.CheckboxColumn("phase 1"),
        "SCHEDULE.NULL_MASKING.END_EPOCH": st.column_config.NumberColumn("ramp end", format="%g"),
        "TRAIN.SEED": "seed",
        "val partial-chain": st.column_config.ProgressColumn("val partial-chain", format="%.3f", min_value=0.0, max_value=1.0),
        "val chain": st.column_config.ProgressColumn("val chain", format="%.3f", min_value=0.0, max_value=1.0),
        "val loss": st.column_config.NumberColumn(format="%.4f"),
        "consistency": st.column_config.NumberColumn(format="%.3f"),
        "hdist@1": st.column_config.NumberColumn(format="%.3f"),
        **{c: st.column_config.NumberColumn(c, format="%.2f" if c.startswith("best") else "%.3f",
                                            help="Last epoch: " + ("the val-chosen threshold of the rank" if c.startswith("best")
                                                                   else "val accuracy at the rank (labelled samples)"))
           for c in rank_columns},
        "parent_id": "parent", "sweep_id": "sweep", "created_at": "created",
    },
)
rows = list(event.selection.rows) if event is not None and hasattr(event, "selection") else []
selected = shown.iloc[rows] if rows else shown.head(MAX_DEFAULT_COMPARE)
ids = list(selected["id"])
labels = {r["id"]: (r["name"] if r["name"] != r["id"] else r["id"]) for r in selected.to_dict("records")}

c1, c2, c3 = st.columns([2, 1, 1.4], vertical_alignment="center")
c1.caption(f"{len(shown)} of {len(runs)} runs shown; comparing {len(ids)} "
           f"({'selected' if rows else 'newest'}).")
c2.download_button("Run table (CSV)", shown.drop(columns=["config"], errors="ignore").to_csv(index=False),
                   file_name="runs.csv", mime="text/csv", icon=":material/download:", key="ru_csv_runs", width="stretch")
c3.download_button("Metrics of compared runs (CSV)", lambda: store.metrics(ids).to_csv(index=False),
                   file_name="metrics.csv", mime="text/csv", icon=":material/download:", key="ru_csv_metrics",
                   width="stretch", disabled=not ids)
if not ids:
    st.stop()

if st.session_state.get("ru_load_run") not in ids:
    st.session_state.ru_load_run = ids[0]
c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
full_labels = {r["id"]: sh.run_label(r) for r in selected.to_dict("records")}
load_id = c1.selectbox("Run to train again", ids, key="ru_load_run", format_func=lambda r: full_labels.get(r, r),
                       help="One of the compared runs.")
if c2.button("Load its config into the Train form", icon=":material/input:", key="ru_load", width="stretch",
             help="Fills the Train page's form and the Data page's dataset with this run's config, then opens Train."):
    left_out = sh.load_config_into_form(store.run(load_id)["config"])
    note = (f" Not in the form, so a new run will not have: {sh.md_escape(', '.join(left_out))}." if left_out else "")
    st.session_state.tr_flash = ("info", f"Loaded the config of run `{load_id}` into the form: check it, then Start.{note}")
    st.switch_page("app_pages/train.py")

with st.expander("Config and environment", icon=":material/settings:"):
    record = store.run(load_id)
    st.caption(f"Run {load_id}: the resolved config it trained with, and what reproduces it "
               "(versions, git commit, device, seeds, data hash).")
    st.code(yaml.safe_dump(record["config"], sort_keys=False), language="yaml")
    if record["environment"]:
        env = record["environment"]
        st.dataframe(pd.DataFrame({"key": list(env), "value": [json.dumps(v) if isinstance(v, (dict, list)) else str(v)
                                                               for v in env.values()]}),
                     hide_index=True, width="stretch", key="ru_environment")
    else:
        st.caption("No environment record: the run was recorded before runs kept one.")


def short_key(key: str, keys: list[str]) -> str:
    """``LOSS.W`` -> ``w``; the last two parts when the last one alone is ambiguous (``SEED``)."""
    last = key.split(".")[-1]
    if sum(k.split(".")[-1] == last for k in keys) > 1:
        last = ".".join(key.split(".")[-2:])
    return last.lower()


# ---------------------------------------------------------------------- overlay
st.subheader("Compare curves", divider="gray")
ranks = store.run_ranks(selected.iloc[0]["id"])
keys = OVERLAY_KEYS + [N.val_acc(r) for r in ranks] + [N.best_tau(r) for r in ranks]
group_options = ["(none)"] + plots.varying_config_keys(selected)
sh.init("ru_key", keys[0])
if st.session_state.ru_key not in keys:
    st.session_state.ru_key = keys[0]
if st.session_state.get("ru_group") not in group_options:
    st.session_state.ru_group = "(none)"
c1, c2, c3 = st.columns([2, 1, 2])
key = c1.selectbox("Metric", keys, key="ru_key", format_func=plots.metric_label)
sh.init("ru_smooth", 0.0)
smoothing = c2.slider("Smoothing", 0.0, 0.95, step=0.05, key="ru_smooth",
                      help="Exponential moving average: s_t = a s_(t-1) + (1 - a) x_t.")
group = c3.selectbox("Group by (mean ± 1 sd over runs)", group_options, key="ru_group",
                     help="Config keys that differ among the compared runs, e.g. LOSS.W over several seeds.")
group_cols = [] if group == "(none)" else [group]
if group_cols:
    mixed = plots.varying_within_groups(selected, group)
    st.session_state.ru_split_by = [k for k in st.session_state.get("ru_split_by", []) if k in mixed]
    if mixed:
        note = (f"Inside these groups also vary: {', '.join(mixed)}. Each mean pools runs that differ in these "
                "too; split by them to compare like with like.")
        # seeds are what a group is meant to pool over; anything else mixes settings
        (st.caption if mixed == ["TRAIN.SEED"] else st.warning)(note)
        group_cols += st.multiselect("Also split by", mixed, key="ru_split_by", placeholder="(pool them)")
has_parent = selected["parent_id"].notna().any() if "parent_id" in selected else False
sh.init("ru_continue", False)
continued = st.toggle("Draw phase 2 after its parent", key="ru_continue", disabled=not has_parent,
                      help="A phase-2 run's epochs are drawn after its parent's (offset by the parent's epochs "
                           "done), so the two phases read as one curve.")
offsets = plots.lineage_offsets(runs) if continued and has_parent else None
long = store.metrics(ids, keys=[key])
if long.empty:
    st.info(f"No values of `{key}` stored for these runs yet.")
else:
    for col in group_cols:
        long[col] = long["run_id"].map(selected.set_index("id")[col].map(lambda v: str(v) if isinstance(v, (list, dict)) else v))
    st.plotly_chart(plots.overlay(long, key, smoothing, group_cols or None, labels, offsets), key="ru_overlay")
    if key.endswith("partial_chain_acc") or key.endswith("chain_acc"):
        st.caption(f"{sh.METRIC_HELP['chain']} {sh.METRIC_HELP['partial']}")

# ---------------------------------------------------------------------- one run's evaluation
st.subheader("Evaluate a run", divider="gray")
if st.session_state.get("ru_eval_run") not in ids:
    st.session_state.ru_eval_run = ids[0]
eval_id = st.selectbox("Run", ids, key="ru_eval_run", format_func=lambda r: full_labels.get(r, r),
                       help="One of the compared runs: its test numbers, confusions per rank and predictions.")
ev.evaluation_view(eval_id, key="ru_ev")

# ---------------------------------------------------------------------- config vs final metrics
st.subheader("Config vs final metrics", divider="gray")
finished = shown.dropna(subset=["val partial-chain"])
dims_config = [k for k in plots.varying_config_keys(finished)
               if pd.api.types.is_numeric_dtype(finished[k])
               or finished[k].map(lambda v: str(v) if isinstance(v, (list, dict)) else v).nunique() <= 30]
if len(finished) < 2 or not dims_config:
    st.info("Comparing configs needs at least two runs with a finished epoch whose configs differ.")
    st.stop()
metric_cols = [c for c in FINAL_LABELS.values() if finished[c].notna().any()]
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
metric = c1.selectbox("Final metric", metric_cols, key="ru_color")
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
    st.plotly_chart(fig, key="ru_scatter")
    st.caption(f"{len(finished)} runs (the filtered table); other config keys vary too, so points at one x "
               "may differ in more than x.")
else:
    short = {k: short_key(k, dims_config) for k in dims_config}
    st.plotly_chart(plots.parallel_coords(table, dims_config + metric_cols, metric, short), key="ru_parcoords")
    st.caption(f"{len(finished)} runs (the filtered table). Config axes are the keys that differ between runs; "
               "drag along an axis to filter.")
