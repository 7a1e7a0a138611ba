"""Runs page: the run table, overlaid curves of selected runs (grouped by a config key), parallel
coordinates of config vs final metrics, CSV export."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app_pages import _shared as sh
from workbench import plots
from workbench.launch import ACTIVE, reconcile

FINAL_KEYS = ["core/val_partial_chain_acc", "core/val_chain_acc", "core/val_loss", "val/consistency", "val/hdist@1"]
FINAL_LABELS = {"core/val_partial_chain_acc": "val partial-chain", "core/val_chain_acc": "val chain",
                "core/val_loss": "val loss", "val/consistency": "consistency", "val/hdist@1": "hdist@1"}
OVERLAY_KEYS = ["core/val_partial_chain_acc", "core/val_chain_acc", "core/train_partial_chain_acc",
                "core/train_chain_acc", "core/val_loss", "core/train_loss", "val/consistency", "val/severity",
                "val/hdist@1", "schedule/null_inclusion_prob", "time/epoch_seconds"]
# config keys never worth comparing on
SKIP_PREFIXES = ("TRACKING.", "DATA.PATH", "TRAIN.INIT_FROM", "TRAIN.DEVICE", "TRAIN.NUM_THREADS")
MAX_DEFAULT_COMPARE = 8
CONFIG_SECTIONS = ("DATA", "MODEL", "LOSS", "TRAIN", "SCHEDULE")

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
    final = plots.final_metrics(store.metrics(list(runs["id"]), FINAL_KEYS))
    runs = runs.join(final.rename(columns=FINAL_LABELS), on="id") if len(final) else runs
    for col in FINAL_LABELS.values():
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

columns = ["id", "name", "status", "val partial-chain", "val chain", "val loss", "epochs_done", "DATA.NAME", "LOSS.W",
           "MODEL.HEAD", "TRAIN.PHASE1_MASK_NULL_LOSS", "SCHEDULE.NULL_MASKING.END_EPOCH", "TRAIN.SEED",
           "consistency", "hdist@1", "parent_id", "sweep_id", "created_at"]
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
        "parent_id": "parent", "sweep_id": "sweep", "created_at": "created",
    },
)
rows = list(event.selection.rows) if event is not None and hasattr(event, "selection") else []
selected = shown.iloc[rows] if rows else shown.head(MAX_DEFAULT_COMPARE)
ids = list(selected["id"])
labels = {r["id"]: (r["name"] if r["name"] != r["id"] else r["id"]) for r in selected.to_dict("records")}

c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="center")
c1.caption(f"{len(shown)} of {len(runs)} runs shown; comparing {len(ids)} "
           f"({'selected' if rows else 'newest'}).")
c2.download_button("Run table (CSV)", shown.drop(columns=["config"], errors="ignore").to_csv(index=False),
                   file_name="runs.csv", mime="text/csv", icon=":material/download:", key="ru_csv_runs", width="stretch")
c3.download_button("Metrics of compared runs (CSV)", lambda: store.metrics(ids).to_csv(index=False),
                   file_name="metrics.csv", mime="text/csv", icon=":material/download:", key="ru_csv_metrics",
                   width="stretch", disabled=not ids)
if not ids:
    st.stop()


def varying_config_keys(frame: pd.DataFrame) -> list[str]:
    """Config columns (``LOSS.W``, ...) whose value differs between the rows of ``frame``."""
    keys = []
    for col in frame.columns:
        if str(col).split(".")[0] not in CONFIG_SECTIONS or "." not in str(col) or str(col).startswith(SKIP_PREFIXES):
            continue
        values = frame[col].map(lambda v: str(v) if isinstance(v, (list, dict)) else v)
        if values.nunique(dropna=False) > 1:
            keys.append(col)
    return keys


def short_key(key: str, keys: list[str]) -> str:
    """``LOSS.W`` -> ``w``; the last two parts when the last one alone is ambiguous (``SEED``)."""
    last = key.split(".")[-1]
    if sum(k.split(".")[-1] == last for k in keys) > 1:
        last = ".".join(key.split(".")[-2:])
    return last.lower()


# ---------------------------------------------------------------------- overlay
st.subheader("Compare curves", divider="gray")
ranks = sh.run_ranks(json.loads(selected.iloc[0]["config"]))
keys = OVERLAY_KEYS + [f"val/acc/{r}" for r in ranks] + [f"val/best_tau/{r}" for r in ranks]
group_options = ["(none)"] + varying_config_keys(selected)
sh.init("ru_key", keys[0])
if st.session_state.ru_key not in keys:
    st.session_state.ru_key = keys[0]
if st.session_state.get("ru_group") not in group_options:
    st.session_state.ru_group = "(none)"
c1, c2, c3 = st.columns([2, 1, 2])
key = c1.selectbox("Metric", keys, key="ru_key", format_func=lambda k: f"{plots.METRIC_LABELS.get(k, k)}  ({k})")
sh.init("ru_smooth", 0.0)
smoothing = c2.slider("Smoothing", 0.0, 0.95, step=0.05, key="ru_smooth",
                      help="Exponential moving average: s_t = a s_(t-1) + (1 - a) x_t.")
group = c3.selectbox("Group by (mean ± 1 sd over runs)", group_options, key="ru_group",
                     help="Config keys that differ among the compared runs, e.g. LOSS.W over several seeds.")
long = store.metrics(ids, keys=[key])
if long.empty:
    st.info(f"No values of `{key}` stored for these runs yet.")
else:
    if group != "(none)":
        values = selected.set_index("id")[group].map(lambda v: str(v) if isinstance(v, (list, dict)) else v)
        long[group] = long["run_id"].map(values)
    st.plotly_chart(plots.overlay(long, key, smoothing, None if group == "(none)" else group, labels), key="ru_overlay")
    if key.endswith("partial_chain_acc") or key.endswith("chain_acc"):
        st.caption(f"{sh.METRIC_HELP['chain']} {sh.METRIC_HELP['partial']}")

# ---------------------------------------------------------------------- config vs final metrics
st.subheader("Config vs final metrics", divider="gray")
finished = shown.dropna(subset=["val partial-chain"])
dims_config = [k for k in varying_config_keys(finished)
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
