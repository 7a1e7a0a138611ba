"""Sweeps page: launch a Ray Tune sweep over `w` and the schedule, watch its trials live, open any trial.

The sweep runs as its own process (``sweeps/run.py``); its driver writes every trial's epochs into
the store, which this page reads.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_pages import _shared as sh
from workbench import plots
from workbench.config import ConfigError
from workbench.launch import launch_sweep, log_path, run_alive
from workbench.sweep_results import accuracy_vs_key_figure, store_tidy, summarize

st.title(":material/tune: Sweeps")
st.caption(
    "A Ray Tune grid over the hierarchical loss weight `w` (and optionally the null-masking ramp's end "
    "epoch and the phase-1 flag), repeated over seeds. Trials report every epoch; the sweep's driver "
    "writes them into the run store, so this page follows them live wherever they run."
)

store = sh.get_store()

with st.expander("Launch a sweep", expanded=not store.runs()["sweep_id"].notna().any()):
    data = sh.data_section()
    st.caption(f"Data: {sh.describe_data(data)} (change it on the Data page)")
    with st.form("sweep_form"):
        c1, c2, c3 = st.columns(3)
        w_text = c1.text_input("LOSS.W values", "0, 0.25, 0.5, 0.75, 1", help="comma-separated, in [0, 1]")
        seeds = c2.number_input("seeds per point", 1, 10, 2)
        epochs = c3.number_input("TRAIN.EPOCHS", 1, 500, 5)
        c4, c5, c6 = st.columns(3)
        end_text = c4.text_input("SCHEDULE.NULL_MASKING.END_EPOCH values", "", help="empty = the default schedule")
        phase1 = c5.selectbox("TRAIN.PHASE1_MASK_NULL_LOSS", ["false", "true", "both"])
        concurrent = c6.number_input("concurrent trials", 1, 64, 2)
        address = st.text_input("Ray cluster address", "", help="empty = a local Ray instance; 'auto' or host:port")
        use_wandb = st.toggle("log trials to W&B (offline)", value=False)
        start = st.form_submit_button("Start sweep", type="primary")
    if start:
        try:
            grid = {"LOSS.W": sh.parse_numbers(w_text, float, "LOSS.W")}
            if end_text.strip():
                grid["SCHEDULE.NULL_MASKING.END_EPOCH"] = sh.parse_numbers(end_text, float, "END_EPOCH")
            grid["TRAIN.PHASE1_MASK_NULL_LOSS"] = [True, False] if phase1 == "both" else [phase1 == "true"]
            config = sh.build_config(data, {}, {}, {"EPOCHS": int(epochs)}, {}, {"STORE": str(store.path)})
            sweep_id = launch_sweep(config, grid, seeds=int(seeds), store_path=store.path, max_concurrent=int(concurrent),
                                    address=address.strip() or None, wandb=use_wandb)
        except (ConfigError, ValueError) as e:
            st.error(str(e))
        else:
            st.session_state["sweep_id"] = sweep_id
            st.success(f"Started sweep `{sweep_id}`; Ray needs a few seconds before the first trial reports.")

runs = store.runs(with_config=True)
sweeps = sorted(runs["sweep_id"].dropna().unique().tolist(), reverse=True) if len(runs) else []
known = [s for s in [st.session_state.get("sweep_id")] if s and s not in sweeps] + sweeps
if not known:
    st.info("No sweeps yet. Launch one above, or from the command line: `python sweeps/run.py --w 0:1:0.25 --seeds 2`.")
    st.stop()
sweep_id = st.selectbox("sweep", known, index=known.index(st.session_state.get("sweep_id", known[0]))
                        if st.session_state.get("sweep_id") in known else 0)


def sweep_active(sweep_id: str, trials: pd.DataFrame) -> bool:
    pid_file = log_path(store, sweep_id).with_suffix(".pid")
    alive = pid_file.exists() and run_alive(int(pid_file.read_text() or 0))
    return alive or bool(len(trials) and trials["status"].isin(["queued", "running"]).any())


@st.fragment(run_every=2.0)
def live_sweep() -> None:
    trials = store.runs(sweep_id=sweep_id, with_config=True)
    active = sweep_active(sweep_id, trials)
    st.markdown(f"**{len(trials)} trials** · " + ("running" if active else "done"))
    if trials.empty:
        log = log_path(store, sweep_id)
        if log.exists():
            st.code(log.read_text()[-2000:] or "(starting Ray...)", language="text")
        return
    tidy = store_tidy(store, sweep_id)
    keys = [k for k in ("LOSS.W", "SCHEDULE.NULL_MASKING.END_EPOCH", "TRAIN.PHASE1_MASK_NULL_LOSS")
            if k in trials and trials[k].nunique() > 1] or ["LOSS.W"]
    if not tidy.empty:
        summary = summarize(tidy, keys)
        ranks = sh.run_ranks(store.run(trials["id"].iloc[0])["config"], tidy["metric"].unique())
        st.plotly_chart(accuracy_vs_key_figure(summary, keys[0], ranks), key="sweep_acc")
    final = tidy.sort_values("epoch").groupby(["run", "metric"])["value"].last().unstack() if not tidy.empty else pd.DataFrame()
    show = trials.set_index("id")[["status", "epochs_done", *keys, "TRAIN.SEED"]]
    cols = [c for c in ("core/val_chain_acc", "core/val_partial_chain_acc") if c in final]
    st.dataframe(show.join(final[cols]) if cols else show, width="stretch")
    failed = trials[trials["status"] == "failed"]
    for row in failed.itertuples():
        with st.expander(f"trial {row.id} failed"):
            st.code((row.error or "")[-3000:], language="text")


live_sweep()

trial_ids = store.runs(sweep_id=sweep_id)["id"].tolist()
if trial_ids:
    st.subheader("A trial's curves")
    trial = st.selectbox("trial", trial_ids)
    wide = store.metrics_wide([trial])
    if wide.empty:
        st.caption("no epochs yet")
    else:
        ranks = sh.run_ranks(store.run(trial)["config"], wide.columns)
        left, right = st.columns(2)
        left.plotly_chart(plots.chain_vs_partial(wide), key="trial_chain")
        right.plotly_chart(plots.loss_curves(wide, ranks), key="trial_loss")
