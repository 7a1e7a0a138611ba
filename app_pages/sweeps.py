"""Sweeps page: launch a Ray Tune sweep over `w` and the schedule, follow every sweep's status and
trials live, stop a sweep, open any trial.

A sweep runs as its own process (``sweeps/run.py``): it records its status (starting, running,
finished, failed, stopped) in ``<store dir>/sweeps/<id>/status.json`` and its driver writes every
trial's epochs into the store; this page reads both (``workbench.launch.list_sweeps``) and never
talks to the sweep process, except to stop it.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from app_pages import _shared as sh
from workbench import plots
from workbench.config import ConfigError
from workbench.importance import param_importance
from workbench.names import SEED_KEY
from workbench.launch import LaunchError, launch_sweep, list_sweeps, log_path, log_tail, stop_sweep
from workbench.store import metric_split
from workbench.sweep import SWEEP_ACTIVE
from workbench.names import TEST_PARTIAL_CHAIN_ACC, VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC, direction
from workbench.summaries import metric_values
from workbench.sweep_results import (
    NO_TEST_NOTE, accuracy_vs_key_figure, has_test, per_run_table, report_table, report_title, store_tidy, summarize,
)

LIVE_REFRESH_S = 2.0
LOG_LINES = 400  # of the sweep driver's log shown in the page
# the form's labels say what a value does; the help names the config key (as on the Train page)
W_LABEL = "Hierarchical loss weight w (values)"
END_LABEL = "Null-label ramp ends at epoch (values)"
HXE_LABEL = "HXE α (values, optional)"
PHASE1_LABELS = {"false": "off: nulls count (by the schedule)", "true": "on: nulls never count",
                 "both": "both (a grid over on and off)"}

st.title(":material/tune: Sweeps")
st.caption(
    "A Ray Tune grid over the hierarchical loss weight w or the HXE α (and optionally the null-masking ramp's "
    "end epoch and the phase-1 flag), repeated over seeds. Trials report every epoch; the sweep's driver "
    "writes them into the run store, so this page follows them live wherever they run."
)

ss = st.session_state
store = sh.get_store()


def request_stop(sweep_id: str) -> None:
    """``Stop sweep``: terminate the driver's process group (its Ray instance and trials)."""
    try:
        stop_sweep(sweep_id, store.path)
    except LaunchError as e:
        ss.sw_flash = ("error", str(e))
    else:
        ss.sw_flash = ("warning", f"Stopped sweep {sweep_id}.")


def sweep_loss_grid(w_text: str, hxe_text: str) -> dict[str, list]:
    """The loss part of the grid: ``LOSS.W`` values, or ``LOSS.HXE_ALPHA`` values with at most one w.

    HXE's α sets the rank weights, so a w grid beside it would train the same loss several times:
    a grid of α with more than one w is refused (:class:`ConfigError`); one w (or none) is allowed."""
    if not hxe_text.strip():
        return {"LOSS.W": sh.parse_numbers(w_text, float, W_LABEL)}
    grid = {"LOSS.HXE_ALPHA": sh.parse_numbers(hxe_text, float, HXE_LABEL)}
    if w_text.strip():
        w = sh.parse_numbers(w_text, float, W_LABEL)
        if len(w) > 1:
            raise ConfigError(f"{HXE_LABEL}: HXE's α sets the rank weights, so w is not used; give one w value "
                              f"(or clear the HXE values to sweep w), got w = {', '.join(f'{v:g}' for v in w)}")
        grid["LOSS.W"] = w
    return grid


sweeps = list_sweeps(store)
active = sweeps[sweeps["status"].isin(SWEEP_ACTIVE)]

with st.expander("Launch a sweep", expanded=sweeps.empty):
    data = sh.data_section()
    st.caption(f"Data: {sh.md_escape(sh.describe_data(data))} (change it on the Data page)")
    # Enter in a text field must not start a sweep (each one starts a Ray instance): only the button does
    with st.form("sweep_form", enter_to_submit=False):
        c1, c2, c3 = st.columns(3)
        w_text = c1.text_input(W_LABEL, "0, 0.25, 0.5, 0.75, 1", key="sw_w",
                               help="LOSS.W, comma-separated values in [0, 1]. Loss = w x coarse-rank CE + "
                                    "(1 - w) x finest-rank CE; with more ranks the coarser ones share w.")
        seeds = c2.number_input("Seeds per point", 1, 10, 2, key="sw_seeds",
                                help="Each grid point is trained with TRAIN.SEED = 0, 1, ..., n - 1.")
        epochs = c3.number_input("Epochs per trial", 1, 500, 5, key="sw_epochs", help="TRAIN.EPOCHS of every trial.")
        c4, c5, c6 = st.columns(3)
        end_text = c4.text_input(END_LABEL, "", key="sw_end",
                                 help="SCHEDULE.NULL_MASKING.END_EPOCH, comma-separated: the epoch at which null "
                                      "labels count fully. Empty = the default schedule.")
        phase1 = c5.selectbox("Phase 1", list(PHASE1_LABELS), format_func=PHASE1_LABELS.get,
                              key="sw_phase1", help="TRAIN.PHASE1_MASK_NULL_LOSS: null labels are left out of the loss.")
        concurrent = c6.number_input("Trials at once", 1, 64, 2, key="sw_concurrent",
                                     help="Ray Tune's max_concurrent_trials; each trial holds the CPUs and GPUs "
                                          "per trial below, so fewer may run at once.")
        c7, c8, _ = st.columns(3)
        cpus = c7.number_input("CPUs per trial", 0.5, 256.0, 1.0, 0.5, key="sw_cpus",
                               help="CPUs Ray reserves for each trial (its torch threads: the whole number of them).")
        gpus = c8.number_input("GPUs per trial", 0.0, 64.0, 0.0, 0.25, key="sw_gpus",
                               help="GPUs Ray reserves for each trial: 0 = CPU only; a fraction shares one GPU between "
                                    "trials; above 1, whole GPUs. A local Ray needs them on this machine.")
        hxe_text = st.text_input(
            HXE_LABEL, "", key="sw_hxe",
            help="LOSS.HXE_ALPHA, comma-separated values >= 0; empty = no HXE. Every trial then trains HXE(α) on the "
                 "marginal head (MODEL.HEAD marginal); α sets the rank weights, so w is not used: give at most one w.")
        address = st.text_input("Ray cluster address (optional)", "", key="sw_address",
                                help="Empty = a local Ray instance on 127.0.0.1; 'auto' or host:port = a running cluster.")
        use_wandb = st.toggle("Log trials to Weights & Biases (offline)", value=False, key="sw_wandb")
        alongside = False
        if not active.empty:
            alongside = st.checkbox(f"Run alongside the active sweep {active['id'].iloc[0]}", value=False,
                                    key="sw_alongside",
                                    help="Both sweeps then share this machine's CPUs; each trial takes longer.")
        start = st.form_submit_button("Start sweep", type="primary", icon=":material/play_arrow:")
    if start:
        try:
            grid = sweep_loss_grid(w_text, hxe_text)
            if end_text.strip():
                grid["SCHEDULE.NULL_MASKING.END_EPOCH"] = sh.parse_numbers(end_text, float, END_LABEL)
            grid["TRAIN.PHASE1_MASK_NULL_LOSS"] = [True, False] if phase1 == "both" else [phase1 == "true"]
            # the input kind decides the backbone: sets need the set backbone, images the plain-torch ResNet (the
            # one that trains everywhere; other image backbones: a sweep config from the CLI), tables the MLP
            model = ({"BACKBONE": "set_attention"} if sh.is_set_data(data)
                     else {"BACKBONE": "resnet", "HIDDEN": []} if data.get("NAME") in sh.IMAGE_SOURCES else {})
            if "LOSS.HXE_ALPHA" in grid:  # HXE is defined on the marginal head only (the config refuses others)
                model["HEAD"] = "marginal"
            config = sh.build_config(data, model, {}, {"EPOCHS": int(epochs)}, {}, {"STORE": str(store.path)})
            sweep_id = launch_sweep(config, grid, seeds=int(seeds), store_path=store.path, max_concurrent=int(concurrent),
                                    address=address.strip() or None, wandb=use_wandb, allow_concurrent=alongside,
                                    cpus_per_trial=float(cpus), gpus_per_trial=float(gpus))
        except (ConfigError, LaunchError, ValueError) as e:
            st.error(sh.md_escape(e), icon=":material/error:")
        else:
            ss["sweep_id"] = ss["sw_pick"] = sweep_id  # (the picker below is not drawn yet in this run)
            st.success(f"Started sweep `{sweep_id}`; Ray needs a few seconds before the first trial reports.")
            sweeps = list_sweeps(store, reconcile_first=False)

flash = ss.pop("sw_flash", None)
if flash:
    getattr(st, flash[0])(sh.md_escape(flash[1]))

if sweeps.empty:
    st.info("No sweeps yet. Launch one above, or from the command line: `python sweeps/run.py --w 0:1:0.25 --seeds 2`.")
    st.stop()


def when(t) -> str:
    return "" if t is None or pd.isna(t) else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))


st.subheader("All sweeps")
listing = pd.DataFrame({
    "status": sweeps["status"].tolist(),
    "trials": [f"{int(t)}" + (f" / {int(n)}" if pd.notna(n) else "") for t, n in zip(sweeps["trials"], sweeps["n_trials"])],
    "failed trials": sweeps["trials_failed"].tolist(),
    "started": sweeps["started"].map(when).tolist(),
    "reason": sweeps["reason"].fillna("").tolist(),
}, index=pd.Index(sweeps["id"].tolist(), name="sweep"))
st.dataframe(listing, width="stretch", key="sw_list")

ids = sweeps["id"].tolist()
status_of = dict(zip(sweeps["id"], sweeps["status"]))
if ss.get("sw_pick") not in ids:
    ss["sw_pick"] = ss.get("sweep_id") if ss.get("sweep_id") in ids else ids[0]
sweep_id = st.selectbox("Sweep", ids, key="sw_pick", format_func=lambda s: f"{s} · {status_of[s]}")


def trial_numbers(tidy: pd.DataFrame) -> pd.DataFrame:
    """Per trial: its last epoch's val chain / partial-chain accuracy, its selected epoch (0-based, chosen on
    val) and, when it has one, its test partial-chain accuracy there. Empty before the first epoch."""
    if tidy.empty:
        return pd.DataFrame()
    final = metric_values(tidy, "last", run="run", key="metric")
    out = pd.DataFrame(index=final.index)
    for key, label in ((VAL_CHAIN_ACC, "val chain (last epoch)"),
                       (VAL_PARTIAL_CHAIN_ACC, "val partial chain (last epoch)")):
        if key in final:
            out[label] = final[key]
    best = per_run_table(tidy, []).query("at == 'best'").set_index("run")
    out["selected epoch"] = best["epoch"].astype(int)
    if TEST_PARTIAL_CHAIN_ACC in best:
        out["test partial chain (selected epoch)"] = best[TEST_PARTIAL_CHAIN_ACC]
    return out


def live_sweep(sweep_id: str, was_active: bool) -> None:
    """The sweep's status, reason, log, trials and chart, re-read every few seconds while it is active."""

    @st.fragment(run_every=LIVE_REFRESH_S if was_active else None)
    def panel() -> None:
        rows = list_sweeps(store)
        row = rows[rows["id"] == sweep_id].iloc[0]
        status = row["status"]
        if was_active and status not in SWEEP_ACTIVE:
            st.rerun()  # it ended: redraw the page once (the list, the Stop button, this timer)
        trials = store.runs(sweep_id=sweep_id, with_config=True)
        head, stop = st.columns([5, 1], vertical_alignment="center")
        planned = f" of {int(row['n_trials'])}" if pd.notna(row["n_trials"]) else ""
        head.markdown(f"{sh.status_badge(status)} {sh.md_escape(sweep_id)} · **{len(trials)} trials**{planned} "
                      f"({int(row['trials_finished'])} finished, {int(row['trials_failed'])} failed) · "
                      f"started {when(row['started'])}")
        if status in SWEEP_ACTIVE:
            stop.button("Stop sweep", icon=":material/stop_circle:", key="sw_stop", on_click=request_stop,
                        args=(sweep_id,), width="stretch",
                        help="Terminates the sweep's driver, its Ray instance and its trials now.")
        reason = row["reason"] if isinstance(row["reason"], str) else ""
        if reason:
            show = st.error if status == "failed" else st.warning
            show(sh.md_escape(reason), icon=":material/error:" if status == "failed" else ":material/warning:")
        log = log_path(store, sweep_id)
        with st.expander("Sweep log", expanded=status == "failed" and trials.empty):
            if log.is_file():
                st.caption(f"last {LOG_LINES} lines of {sh.md_escape(log)}")
                st.code(log_tail(store, sweep_id, LOG_LINES) or "(empty: the process is starting)",
                        language=None, wrap_lines=True)
            else:
                st.caption("No log here: this sweep was started from the command line, which printed it.")
        if trials.empty:
            if status in SWEEP_ACTIVE:
                st.info("Waiting for the first trial (Ray takes a few seconds to start)...",
                        icon=":material/hourglass_top:")
            return
        tidy = store_tidy(store, sweep_id)
        keys = [k for k in ("LOSS.W", "LOSS.HXE_ALPHA", "SCHEDULE.NULL_MASKING.END_EPOCH", "TRAIN.PHASE1_MASK_NULL_LOSS")
                if k in trials and trials[k].nunique() > 1] or ["LOSS.W"]
        if not tidy.empty:
            summary = summarize(tidy, keys)
            ranks = store.run_ranks(trials["id"].iloc[0])
            st.plotly_chart(accuracy_vs_key_figure(summary, keys[0], ranks), key="sweep_acc")
            # select on val, report test (DESIGN.md 3.5): one row per swept point, mean ± std over seeds
            st.markdown("**Results per swept point**")
            title = report_title(summary)
            st.caption(sh.md_escape(f"{title[:1].upper()}{title[1:]}; mean ± std over seeds."))
            if not has_test(summary):
                st.warning(sh.md_escape(f"{NO_TEST_NOTE[:1].upper()}{NO_TEST_NOTE[1:]}: each trial's epoch was "
                                        "selected on these same val numbers, so they are optimistic."),
                           icon=":material/warning:")
            st.dataframe(report_table(summary), width="stretch", hide_index=True, key="sw_summary")
        show = trials.set_index("id")[["status", "epochs_done", *keys, "TRAIN.SEED"]]
        st.dataframe(show.join(trial_numbers(tidy)), width="stretch", key="sw_trials")
        for trial in trials[trials["status"] == "failed"].itertuples():
            with st.expander(f"trial {trial.id} failed"):
                st.code((trial.error or "")[-3000:], language=None, wrap_lines=True)

    panel()


IMPORTANCE_MIN_TRIALS = 2  # fANOVA needs runs that differ; fewer finished trials: the section says why


@st.cache_data(show_spinner="Computing parameter importance (fANOVA)...", max_entries=16)
def sweep_importance(_table: pd.DataFrame, store_key: str, sweep_id: str, version: tuple, params: tuple[str, ...],
                     metric: str) -> pd.Series:
    """:func:`workbench.importance.param_importance` of ``metric`` over ``_table`` (one row per finished trial),
    cached per sweep, store version and metric (the table itself is not hashed: its lists are not hashable)."""
    return param_importance(_table, list(params), metric, "minimize" if direction(metric) == "min" else "maximize")


def importance_section(sweep_id: str) -> None:
    """Parameter importance (fANOVA) and a slice plot of a val metric at each finished trial's selected epoch."""
    st.subheader("Parameter importance")
    trials = store.runs(sweep_id=sweep_id, with_config=True)
    finished = trials[trials["status"] == "finished"] if len(trials) else trials
    if len(finished) < IMPORTANCE_MIN_TRIALS:
        st.info(f"Parameter importance needs at least {IMPORTANCE_MIN_TRIALS} finished trials; this sweep has "
                f"{len(finished)} so far.", icon=":material/info:")
        return
    swept = plots.varying_config_keys(finished)
    if not swept:
        st.info(f"No config key differs between this sweep's {len(finished)} finished trials: there is nothing "
                "to rank.", icon=":material/info:")
        return
    tidy = store_tidy(store, sweep_id)
    per_run = per_run_table(tidy[tidy["run"].isin(set(finished["id"]))], swept)
    if per_run.empty:
        st.info("The finished trials have no epochs in the store yet.", icon=":material/info:")
        return
    # select on val, report test: importance analyses the selection metric, so test keys are not offered
    table = per_run[per_run["at"] == "best"].set_index("run")
    metrics = [c for c in table.columns if isinstance(c, str) and metric_split(c) == "val"]
    if not metrics:
        st.info("The finished trials logged no val metric to analyse.", icon=":material/info:")
        return
    selectors = [s for s in dict.fromkeys(table["select_by"]) if s in metrics]
    default = selectors[0] if selectors else metrics[0]
    metric = st.selectbox("Metric (val, at each trial's selected epoch)", metrics, index=metrics.index(default),
                          key="sw_imp_metric", format_func=lambda k: f"{plots.metric_label(k)} ({k})")
    seed_note = (f" {SEED_KEY} varies too: its bar is the share that is seed noise, the part no setting explains."
                 if SEED_KEY in swept else "")
    by = ", ".join(dict.fromkeys(table["select_by"]))
    st.caption(sh.md_escape(
        f"How much of the variance of {metric} (val, at each trial's selected epoch, chosen on val by {by}; test "
        f"numbers are reported, never analysed) over {len(table)} finished trials each swept key explains: "
        f"Optuna's fANOVA, a random forest fitted to the trials.{seed_note}"))
    try:
        importance = sweep_importance(table, str(store.path), sweep_id, store.data_version(), tuple(swept), metric)
    except ValueError as e:  # too few trials with this metric, or it is the same in every trial
        st.info(sh.md_escape(e), icon=":material/info:")
    else:
        st.plotly_chart(plots.importance_bar(importance), key="sw_importance")
    st.plotly_chart(plots.slice_plot(table, swept, metric), key="sw_slice")


live_sweep(sweep_id, status_of[sweep_id] in SWEEP_ACTIVE)
importance_section(sweep_id)

trial_ids = store.runs(sweep_id=sweep_id)["id"].tolist()
if trial_ids:
    st.subheader("A trial's curves")
    trial = st.selectbox("Trial", trial_ids, key="sw_trial")
    wide = store.metrics_wide([trial])
    if wide.empty:
        st.caption("no epochs yet")
    else:
        ranks = store.run_ranks(trial)
        left, right = st.columns(2)
        left.plotly_chart(plots.chain_vs_partial(wide), key="trial_chain")
        right.plotly_chart(plots.loss_curves(wide, ranks), key="trial_loss")
