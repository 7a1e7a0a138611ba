# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · The seeds' claims re-tested on tables (olive, ratdat)
#
# **Question.** Five claims this workbench started from, each re-tested with one protocol, on real tabular
# data, with the answer stated whether or not it agrees:
#
# 1. **A blog (pets, ResNet-18):** 20-40 % of the loss weight on the coarse rank helps *both* ranks.
# 2. **linnaeus:** phase 1 (null labels masked) then phase 2 trains more stably than nulls from the start.
# 3. **The multi-label seed:** thresholds chosen on validation transfer to test.
# 4. **The weighted-loss seed:** class weights fix imbalance (ratdat's rare taxa).
# 5. **The classical baseline:** does the network beat one gradient-boosted classifier per rank?
#
# **Protocol (every section).** Every run keeps the epoch with the best *validation* partial-chain accuracy
# (`TRAIN.SELECT_BY`'s default); any choice (the best `w`, a threshold `tau`) is made on validation; every
# number reported is the *test* number of that selection, evaluated once. At least 5 seeds (`TRAIN.SEED`
# 0..4) with the split fixed (`DATA.SEED = 0`; olive and ratdat have a fixed 60 / 20 / 20 split), so the
# spread is training noise; mean ± sd over seeds. Verdicts come from `workbench.findings`: `compare` (Welch
# t-test: "agree" = the claimed direction with p < 0.05, "disagree" = the opposite with p < 0.05, else
# "inconclusive"), `spread` (seed-to-seed sd, Levene) and `within` (the 95 % interval of a gap inside a
# margin). With 5 seeds these tests have little power: "inconclusive" is a finding, not a failure.
#
# Data: **olive** (572 oils, 8 fatty acids; region > area) and **ratdat** (35,549 rodent-survey captures;
# taxa > genus > species, with real partial labels: placeholder genera and "sp." are null). The animal_mnist
# (image) version of claims 1 and 2 is notebook 07's full run: its recorded per-seed numbers are quoted, not
# re-run.

# %% tags=["parameters"]
SMOKE = False  # CI: w in {0, 0.3, 1}, two seeds (a verdict needs two values), one epoch, a ratdat subset

# %%
import functools
import os
import shutil
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench import names as N
from workbench import plots
from workbench.bundle import run_bundle
from workbench.config import Config
from workbench.data import load_olive, load_ratdat
from workbench.findings import ALPHA, FINDINGS_COLUMNS, compare, mean_sd, spread, within
from workbench.launch import phase2_config
from workbench.predict import PRED, TRUE, Predictor, accuracy_summary, column, split_data
from workbench.store import RunStore
from workbench.sweep_results import per_run_table, store_tidy
from workbench.trainer import Trainer

SMOKE = SMOKE or os.environ.get("WORKBENCH_SMOKE") == "1"
RUNS = Path(os.environ.get("WORKBENCH_LAB_RUNS", "_runs")) / "09_claims_tabular"
shutil.rmtree(RUNS, ignore_errors=True)
RUNS.mkdir(parents=True)
torch.set_num_threads(1)  # small MLPs: one thread is fastest, and another notebook may share the 2 cores
pd.set_option("display.width", 200)
pd.set_option("display.max_colwidth", 80)
if SMOKE:  # the subset's fixed split is not exactly 60 / 20 / 20: the data says so once per run
    warnings.filterwarnings("ignore", message=".*has a fixed split.*")
T_START = time.perf_counter()

W_GRID = [0.0, 0.3, 1.0] if SMOKE else [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0]
W_STAR_CANDIDATES = [0.2, 0.3, 0.4]  # the claim's range: w* is the one of these with the best mean val partial chain
SEEDS = list(range(2 if SMOKE else 5))
EPOCHS = {"olive": 1 if SMOKE else 15, "ratdat": 1 if SMOKE else 15}
PHASE_EPOCHS = 1 if SMOKE else 8  # E: phase 1 E epochs, phase 2 E epochs; nulls from the start 2E epochs
W_FIXED = 0.3  # sections 2 and 4 train at the blog's middle value (notebook 07 did the same)
RARE_TAXA = ["Bird", "Rabbit", "Reptile"]  # ratdat's rare taxa (450, 75 and 14 of 35,549 captures)
GAP_MARGIN = 0.02  # claim 3: a val-to-test gap within ±0.02 "transfers"
NB = "notebook 09"  # the findings table's notebook column
print(f"SMOKE={SMOKE}: w {W_GRID} x {len(SEEDS)} seeds; epochs {EPOCHS}; phases E={PHASE_EPOCHS}")

# %% [markdown]
# ## The data and the runs
#
# One MLP per dataset with independent heads (one softmax per rank), nulls in the loss from the start
# (`SCHEDULE.NULL_MASKING.ENABLED: false`) unless a section says otherwise. Smoke mode keeps a ratdat subset
# (every capture of the rare taxa plus 3,000 others; a subset keeps the fixed split).

# %%
DATA = {"olive": load_olive(), "ratdat": load_ratdat()}
if SMOKE:
    rd = DATA["ratdat"]
    rare = torch.isin(rd.targets[:, 0], torch.tensor([rd.taxonomy.vocab[0].index(t) for t in RARE_TAXA]))
    others = torch.nonzero(~rare).flatten()
    others = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(0))[:3000]]
    DATA["ratdat"] = rd.subset(torch.sort(torch.cat([torch.nonzero(rare).flatten(), others])).values)
RANKS = {name: list(ds.taxonomy.ranks) for name, ds in DATA.items()}
SETUP = {
    "olive": {"DATA": {"NAME": "olive", "RANKS": RANKS["olive"], "VAL_FRACTION": 0.2, "SEED": 0},
              "MODEL": {"HIDDEN": [64, 32]}, "TRAIN": {"EPOCHS": EPOCHS["olive"], "BATCH_SIZE": 64, "LR": 0.01}},
    "ratdat": {"DATA": {"NAME": "ratdat", "RANKS": RANKS["ratdat"], "VAL_FRACTION": 0.2, "SEED": 0},
               "MODEL": {"HIDDEN": [256, 128]}, "TRAIN": {"EPOCHS": EPOCHS["ratdat"], "BATCH_SIZE": 256, "LR": 0.002}},
}
pd.concat({name: ds.summary_frame() for name, ds in DATA.items()})

# %%
store = RunStore(RUNS / "workbench.db")


def config(data: str, name: str, **overrides) -> Config:
    """The run config of ``data`` (:data:`SETUP`) with dotted ``overrides``; seeds via ``TRAIN.SEED``."""
    s = SETUP[data]
    return Config.from_dict({
        "DATA": s["DATA"], "MODEL": {**s["MODEL"], "HEAD": "independent", "DROPOUT": 0.1}, "LOSS": {"W": W_FIXED},
        "TRAIN": {**s["TRAIN"], "DEVICE": "cpu", "NUM_THREADS": 1},
        "SCHEDULE": {"NULL_MASKING": {"ENABLED": False}},
        # curves are read for test only (stored whatever this says): keep the last epoch's val curves only
        "TRACKING": {"STORE": str(store.path), "RUN_NAME": name, "CURVES": "last_epoch"},
    }).with_overrides(overrides)


def fit(cfg: Config, data: str, sweep: str) -> Trainer:
    """Train one run on the preloaded data; runs of one arm share ``sweep`` (their sweep id)."""
    trainer = Trainer(cfg, store=store, dataset=DATA[data], progress=False, sweep_id=sweep)
    trainer.fit()
    return trainer


def per_run(sweep: str, keys=("LOSS.W", "TRAIN.SEED")) -> pd.DataFrame:
    """One row per run of ``sweep`` at its val-selected epoch: val keys there, and the test keys (evaluated there
    once); plus ``run``, ``epoch`` and the config ``keys``."""
    table = per_run_table(store_tidy(store, sweep), list(keys))
    table = table[table["at"] == "best"].reset_index(drop=True)
    assert table["has_test"].all(), f"{sweep}: every run has its test numbers"
    return table


def verdict_row(claim: str, data: str, what: str, result: dict, notebook: str = NB) -> dict:
    """One row of a section's verdict table from :func:`workbench.findings.compare`."""
    return {"claim": claim, "data": data, "comparison": what,
            "treatment": f"{result['treatment_mean']:.3f} ± {result['treatment_sd']:.3f}",
            "control": f"{result['control_mean']:.3f} ± {result['control_sd']:.3f}",
            "diff": round(result["diff"], 3), "p": round(result["p"], 3), "verdict": result["verdict"],
            "notebook": notebook}


def combined(verdicts) -> str:
    """A claim made of parts holds when every part agrees; one part that disagrees refutes it."""
    verdicts = list(verdicts)
    if all(v == "agree" for v in verdicts):
        return "agree"
    return "disagree" if "disagree" in verdicts else "inconclusive"


findings = []  # FINDINGS_COLUMNS rows, filled section by section

# %% [markdown]
# ## 1 · 20-40 % of the weight on the coarse rank helps both ranks
#
# `L = sum_r a_r L_r` with `a = (w, 1 - w)` on olive; on ratdat the two coarser ranks share `w` equally
# (`w / 2` each on taxa and genus, `1 - w` on species). `w` in {0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1} × 5 seeds.
# **`w*`** = the `w` in {0.2, 0.3, 0.4} with the best mean *validation* partial-chain accuracy. The
# comparisons, on test:
#
# - **fine rank**: `w*` vs `w = 0` (the fine rank's loss only);
# - **coarse rank(s)**: `w*` vs `w = 1` (the coarse ranks' loss only). Against `w = 0` the coarse rank would win
#   trivially: with independent heads `w = 0` never trains the coarse head.

# %%
t0 = time.perf_counter()
for name in SETUP:
    for w in W_GRID:
        for seed in SEEDS:
            fit(config(name, f"{name}-w{w}-s{seed}", **{"LOSS.W": w, "TRAIN.SEED": seed}), name, f"w-{name}")
    print(f"{name}: {len(W_GRID) * len(SEEDS)} runs, {time.perf_counter() - t0:.0f} s so far", flush=True)
W_RUNS = {name: per_run(f"w-{name}") for name in SETUP}
W_SECONDS = time.perf_counter() - t0


def at_w(name: str, w: float, key: str) -> np.ndarray:
    """Per-seed values of ``key`` for the runs of ``name`` at ``w`` (seed order)."""
    runs = W_RUNS[name]
    return runs[np.isclose(runs["LOSS.W"], w)].sort_values("TRAIN.SEED")[key].to_numpy(dtype=float)


def choose_w(name: str) -> float:
    """w*: among :data:`W_STAR_CANDIDATES` in the grid, the best mean val partial-chain accuracy (chosen on val)."""
    runs = W_RUNS[name]
    candidates = runs[runs["LOSS.W"].round(6).isin(W_STAR_CANDIDATES)]
    return float(candidates.groupby("LOSS.W")[N.VAL_PARTIAL_CHAIN_ACC].mean().idxmax())


W_STAR = {name: choose_w(name) for name in SETUP}
print("w* (chosen on val):", W_STAR)

# The ends train only some heads, so their val partial-chain accuracy (which needs every rank) is near 0 and picks
# an epoch almost at random. A check, not the protocol's verdict: the ends again, each selected on val accuracy at
# the rank it trains and is compared at (w = 0: the finest rank; w = 1: the finest coarse rank).
OWN_RANK = {name: {0.0: RANKS[name][-1], 1.0: RANKS[name][-2]} for name in SETUP}
t1 = time.perf_counter()
for name in SETUP:
    for w, rank in OWN_RANK[name].items():
        for seed in SEEDS:
            fit(config(name, f"{name}-w{w}-own-s{seed}", **{"LOSS.W": w, "TRAIN.SEED": seed,
                                                             "TRAIN.SELECT_BY": N.val_acc(rank)}), name, f"own-{name}")
OWN_RUNS = {name: per_run(f"own-{name}") for name in SETUP}
OWN_SECONDS = time.perf_counter() - t1
W_SECONDS += OWN_SECONDS


def at_own(name: str, w: float, key: str) -> np.ndarray:
    """Per-seed values of ``key`` for the end ``w`` of ``name`` selected on its own rank (seed order)."""
    runs = OWN_RUNS[name]
    return runs[np.isclose(runs["LOSS.W"], w)].sort_values("TRAIN.SEED")[key].to_numpy(dtype=float)

# test accuracy vs w, mean ± sd over seeds
vs_w = []
for name in SETUP:
    for w in W_GRID:
        row = {"data": name, "w": w, "val partial chain (selects)": mean_sd(at_w(name, w, N.VAL_PARTIAL_CHAIN_ACC))}
        for rank in RANKS[name]:
            row[f"test {rank}"] = mean_sd(at_w(name, w, N.rank_key("test", N.ACC, rank)))
        row["test partial chain"] = mean_sd(at_w(name, w, N.TEST_PARTIAL_CHAIN_ACC))
        vs_w.append(row)
pd.DataFrame(vs_w).fillna("")

# %%
fig = make_subplots(rows=1, cols=len(SETUP), horizontal_spacing=0.06, subplot_titles=[
    f"{name}: test accuracy vs w (w* = {W_STAR[name]:g})" for name in SETUP])
for j, name in enumerate(SETUP, start=1):
    colours = plots.rank_colours(RANKS[name])
    x = np.array(W_GRID)
    for rank in RANKS[name]:
        vals = [at_w(name, w, N.rank_key("test", N.ACC, rank)) for w in W_GRID]
        mean = np.array([v.mean() for v in vals])
        sd = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals])
        fig.add_trace(go.Scatter(x=x, y=mean, error_y={"type": "data", "array": sd, "visible": True},
                                 mode="lines+markers", name=f"{name}: {rank}", line={"color": colours[rank]}),
                      row=1, col=j)
    fig.add_vrect(x0=0.2, x1=0.4, fillcolor="#888", opacity=0.08, line_width=0, row=1, col=j)
    fig.add_vline(x=W_STAR[name], line={"dash": "dot", "color": "#666"}, row=1, col=j)
fig.update_xaxes(title_text="w (weight of the coarser ranks)")
fig.update_yaxes(title_text="test accuracy", range=[0, 1.02])
fig.update_layout(template="plotly_white", height=430, width=1100,
                  title=f"Test accuracy at the val-selected epoch, mean ± sd over {len(SEEDS)} seeds (grey: 0.2-0.4)")
if not SMOKE:  # key figure -> docs/lab_09.png (python lab/run.py 09 --png)
    fig.write_html(RUNS / "lab_09.html", include_plotlyjs=True, config={"displayModeBar": False})
fig.show()

# %% [markdown]
# **animal_mnist (notebook 07's full run, 2026-11-30, not re-run here).** Notebook 07 swept `w` in
# {0, 0.2, ..., 1} × 5 seeds (small ResNet, 4 epochs, every image) with the same protocol. Its mean val
# partial-chain accuracy was 0.739 at `w = 0.2` and 0.767 at `w = 0.4`, so its `w*` = 0.4. The per-seed test
# numbers below are read from its run store (seeds 0..4); their means are the ones in its last cell
# (fine rank `animal`: 0.645 ± 0.209 at `w = 0`, 0.819 ± 0.029 at 0.4; coarse rank `class`: 0.975 ± 0.007 at
# 0.4, 0.953 ± 0.034 at 1).

# %%
NB07 = {  # notebook 07's full run (2026-11-30): test numbers at each run's val-selected epoch, seeds 0..4
    "w_star": 0.4,
    "animal": {0.0: [0.809444, 0.286111, 0.704444, 0.767222, 0.657222], 0.4: [0.796111, 0.796111, 0.850556, 0.801667, 0.852222]},
    "class": {0.4: [0.97, 0.9755, 0.9655, 0.979, 0.9825], 1.0: [0.9815, 0.8955, 0.957, 0.9595, 0.9715]},
    # phase 1 (4 epochs) -> phase 2 (4 epochs, ramp over 2) vs nulls from the start (8 epochs), w = 0.3, birds
    "phase 1 -> 2": {"chain": [0.802, 0.795, 0.889, 0.7885, 0.863], "partial chain": [0.804, 0.803, 0.8925, 0.8265, 0.865]},
    "nulls from the start": {"chain": [0.8415, 0.8715, 0.893, 0.874, 0.894],
                             "partial chain": [0.8425, 0.8775, 0.8945, 0.879, 0.896]},
}
assert mean_sd(NB07["animal"][0.0]) == "0.645 ± 0.209" and mean_sd(NB07["animal"][0.4]) == "0.819 ± 0.029"

claim1 = "20-40% of the loss weight on the coarse rank helps both ranks (blog, pets/ResNet-18)"
rows, checks = [], []
for name in SETUP:
    ws, ranks = W_STAR[name], RANKS[name]
    fine = N.rank_key("test", N.ACC, ranks[-1])
    rows.append(verdict_row(claim1, name, f"fine ({ranks[-1]}): w*={ws:g} vs w=0",
                            compare(at_w(name, ws, fine), at_w(name, 0.0, fine))))
    for rank in ranks[:-1]:
        key = N.rank_key("test", N.ACC, rank)
        rows.append(verdict_row(claim1, name, f"coarse ({rank}): w*={ws:g} vs w=1",
                                compare(at_w(name, ws, key), at_w(name, 1.0, key))))
    checks.append(verdict_row(claim1, name, f"fine ({ranks[-1]}): w*={ws:g} vs w=0 selected on val {ranks[-1]}",
                              compare(at_w(name, ws, fine), at_own(name, 0.0, fine))))
    for rank in ranks[:-1]:
        key = N.rank_key("test", N.ACC, rank)
        checks.append(verdict_row(claim1, name, f"coarse ({rank}): w*={ws:g} vs w=1 selected on val {ranks[-2]}",
                                  compare(at_w(name, ws, key), at_own(name, 1.0, key))))
rows.append(verdict_row(claim1, "animal_mnist", "fine (animal): w*=0.4 vs w=0",
                        compare(NB07["animal"][0.4], NB07["animal"][0.0]), "notebook 07"))
rows.append(verdict_row(claim1, "animal_mnist", "coarse (class): w*=0.4 vs w=1",
                        compare(NB07["class"][0.4], NB07["class"][1.0]), "notebook 07"))
section1 = pd.DataFrame(rows)
section1_check = pd.DataFrame(checks)
for data, part in section1.groupby("data", sort=False):
    number = "; ".join(f"{c}: {t} vs {k} (p={p:.3f})" for c, t, k, p in
                       zip(part["comparison"], part["treatment"], part["control"], part["p"]))
    fine_check = section1_check[(section1_check["data"] == data) & section1_check["comparison"].str.startswith("fine")]
    if len(fine_check):
        c = fine_check.iloc[0]
        number += f"; check, w=0 selected on its own rank: {c['control']} (p={c['p']:.3f}, {c['verdict']})"
    findings.append({"claim": claim1, "data": data, "our number": number,
                     "verdict": combined(part["verdict"]), "notebook": part["notebook"].iloc[0]})
section1.drop(columns="claim")

# %% [markdown]
# **Check: the ends selected on their own rank.** `w = 0` trains only the fine head, so its val partial-chain
# accuracy (which needs the coarse ranks right too) stays near 0 and its "selected" epoch is close to arbitrary;
# likewise `w = 1` for the fine rank. Below, the same comparisons with each end selected on val accuracy at the rank
# it trains (`TRAIN.SELECT_BY: val/acc/<rank>`; `w = 1` on the finest coarse rank). This is the fairer control for
# "does a coarse weight help the fine rank"; the findings table keeps the protocol's verdict and quotes this check.

# %%
print(f"ends selected on their own rank: {sum(len(t) for t in OWN_RUNS.values())} runs in {OWN_SECONDS:.0f} s")
section1_check.drop(columns=["claim", "notebook"])

# %% [markdown]
# ## 2 · Phase 1 then phase 2 trains more stably (ratdat's real partial labels)
#
# ratdat's placeholder genera (`Rodent`, `Sparrow`, `Lizard`) are null at genus, `sp.` is null at species:
# about 2 % of the captures, real partial labels. Arms × 5 seeds, `w = 0.3`, every run selected on val
# partial-chain accuracy:
#
# - **phase 1 → 2**: `E` epochs with null labels out of the loss (`TRAIN.PHASE1_MASK_NULL_LOSS`), then a phase-2
#   run of `E` epochs (`launch.phase2_config`: `TRAIN.INIT_FROM` = the phase-1 run) whose nulls come in on a
#   ramp `p: 0 → 1` over `E / 2` epochs; the arm's numbers are the phase-2 run's;
# - **nulls from the start**: `2E` epochs with every null label in the loss.
#
# "More stably" = a smaller seed-to-seed sd (`spread`: the sd ratio and Levene's test); also the test
# partial-chain and chain accuracy themselves (`compare`), and the *last* epoch's val partial-chain accuracy
# (the final state of training, not a selected one).

# %%
ramp = {"SCHEDULE.NULL_MASKING.ENABLED": True, "SCHEDULE.NULL_MASKING.START_PROB": 0.0,
        "SCHEDULE.NULL_MASKING.END_PROB": 1.0, "SCHEDULE.NULL_MASKING.START_EPOCH": 0.0,
        "SCHEDULE.NULL_MASKING.END_EPOCH": PHASE_EPOCHS / 2}
t0 = time.perf_counter()
for seed in SEEDS:
    common = {"LOSS.W": W_FIXED, "TRAIN.SEED": seed}
    p1 = fit(config("ratdat", f"phase1-s{seed}", **common, **{"TRAIN.EPOCHS": PHASE_EPOCHS,
                                                             "TRAIN.PHASE1_MASK_NULL_LOSS": True}), "ratdat", "phase1")
    p2_cfg = phase2_config(store.run(p1.run_id), {"TRAIN.EPOCHS": PHASE_EPOCHS, "TRACKING.RUN_NAME": f"phase2-s{seed}",
                                                  **ramp})
    fit(p2_cfg, "ratdat", "phase2")
    fit(config("ratdat", f"nulls-from-start-s{seed}", **common, **{"TRAIN.EPOCHS": 2 * PHASE_EPOCHS}), "ratdat",
        "nulls-from-start")
PHASE_SECONDS = time.perf_counter() - t0
ARMS = {"phase 1 → 2": per_run("phase2"), "nulls from the start": per_run("nulls-from-start")}
FINAL_KEY = "final val partial chain"  # the last epoch's val partial-chain accuracy, per run
for arm, table in ARMS.items():
    last = per_run_table(store_tidy(store, "phase2" if arm == "phase 1 → 2" else "nulls-from-start"), ["TRAIN.SEED"])
    last = last[last["at"] == "final"].set_index("run")[N.VAL_PARTIAL_CHAIN_ACC]
    table[FINAL_KEY] = table["run"].map(last)
    ARMS[arm] = table.sort_values("TRAIN.SEED")

PHASE_METRICS = {"test partial chain": N.TEST_PARTIAL_CHAIN_ACC, "test chain": N.TEST_CHAIN_ACC, FINAL_KEY: FINAL_KEY}
claim2 = "phase 1 (nulls masked) then phase 2 trains more stably (linnaeus)"
rows = []
for label, key in PHASE_METRICS.items():
    a, b = ARMS["phase 1 → 2"][key].to_numpy(float), ARMS["nulls from the start"][key].to_numpy(float)
    sp, cmp = spread(a, b), compare(a, b)
    rows.append({"data": "ratdat", "metric": label, "phase 1 → 2": mean_sd(a), "nulls from the start": mean_sd(b),
                 "sd ratio": round(sp["ratio"], 2), "Levene p": round(sp["p"], 3), "stability verdict": sp["verdict"],
                 "mean diff": round(cmp["diff"], 3), "Welch p": round(cmp["p"], 3), "mean verdict": cmp["verdict"]})
for label in ("partial chain", "chain"):
    a, b = NB07["phase 1 -> 2"][label], NB07["nulls from the start"][label]
    sp, cmp = spread(a, b), compare(a, b)
    rows.append({"data": "animal_mnist birds (notebook 07)", "metric": f"test {label}", "phase 1 → 2": mean_sd(a),
                 "nulls from the start": mean_sd(b), "sd ratio": round(sp["ratio"], 2), "Levene p": round(sp["p"], 3),
                 "stability verdict": sp["verdict"], "mean diff": round(cmp["diff"], 3), "Welch p": round(cmp["p"], 3),
                 "mean verdict": cmp["verdict"]})
section2 = pd.DataFrame(rows)
for data, part in section2.groupby("data", sort=False):
    main = part[part["metric"] == "test partial chain"].iloc[0]
    findings.append({
        "claim": claim2, "data": data.replace(" (notebook 07)", ""),
        "our number": "; ".join(f"{m}: {a} vs {b} (sd ratio {r:.2f}, Levene p={p:.3f})" for m, a, b, r, p in zip(
            part["metric"], part["phase 1 → 2"], part["nulls from the start"], part["sd ratio"], part["Levene p"])),
        "verdict": main["stability verdict"], "notebook": "notebook 07" if "notebook 07" in data else NB})
print(f"phase runs: {PHASE_SECONDS:.0f} s")
section2

# %% [markdown]
# ## 3 · Thresholds chosen on validation transfer to test
#
# Every run of section 1 chose, per rank, the abstention threshold `tau*` with the best *validation* accuracy
# curve (abstaining counts as right on a null target, wrong on a labelled one) at its selected epoch: stored as
# `val/best_tau/<rank>` and its value `val/best_tau_accuracy/<rank>`. The trainer applied that same `tau*` to the
# test split (`test/tau/<rank>`; test coverage and selective accuracy there). Gap = test accuracy at `tau*`
# (read off the run's stored test curves at the same grid point) − val accuracy at `tau*`. The claim holds where
# the 95 % interval of the mean gap lies inside ±0.02 (`within`). First row per rank: the runs at `w*`;
# second: every `w` (more runs, including the untrained heads at `w = 0` and `w = 1`).
#
# On olive no label is null, so abstaining is never right under this curve: `tau*` = 0 (never abstain) and the gap
# is the plain val-to-test accuracy gap of the val-selected epoch. ratdat's nulls (about 2 % per rank) make
# abstention worth something there, and `tau*` > 0.

# %%
@functools.lru_cache(maxsize=None)
def test_curves(run_id: str) -> pd.DataFrame:
    """The run's test threshold curves (stored once, at its selected epoch)."""
    return store.curves(run_id, split="test")


def test_curve_at(run_id: str, rank: str, tau: float, curve: str = "accuracy") -> float:
    """The run's test curve ``curve`` at rank ``rank`` at the grid point nearest ``tau`` (val and test share
    one grid, so a val-chosen tau is a grid point)."""
    c = test_curves(run_id)
    c = c[(c["rank"] == rank) & (c["curve"] == curve)]
    return float(c["value"].iloc[int((c["tau"] - tau).abs().to_numpy().argmin())])


gap_rows = []
for name in SETUP:
    for rec in W_RUNS[name].to_dict("records"):
        for rank in RANKS[name]:
            tau = rec[N.rank_key("test", N.TAU, rank)]
            val = rec[N.best_tau_value("accuracy", rank)]
            test = test_curve_at(rec["run"], rank, tau)
            gap_rows.append({"data": name, "rank": rank, "w": rec["LOSS.W"], "seed": rec["TRAIN.SEED"], "tau*": tau,
                             "val at tau*": val, "test at tau*": test, "gap": test - val,
                             "test coverage": rec[N.rank_key("test", N.COVERAGE_AT_TAU, rank)],
                             "test selective acc": rec[N.rank_key("test", N.SELECTIVE_ACCURACY_AT_TAU, rank)]})
gaps = pd.DataFrame(gap_rows)
claim3 = "thresholds chosen on val transfer to test (multi-label seed)"
rows = []
for (name, rank), part in gaps.groupby(["data", "rank"], sort=False):
    for which, sel in ((f"w*={W_STAR[name]:g}", np.isclose(part["w"], W_STAR[name])), ("all w", part["w"].notna())):
        g = part[sel]
        res = within(g["gap"], GAP_MARGIN)
        rows.append({"data": name, "rank": rank, "runs": which, "n": res["n"], "tau*": mean_sd(g["tau*"], 2),
                     "val at tau*": mean_sd(g["val at tau*"]), "test at tau*": mean_sd(g["test at tau*"]),
                     "gap": mean_sd(g["gap"]), "95% CI": f"[{res['ci_low']:+.3f}, {res['ci_high']:+.3f}]",
                     "verdict": res["verdict"], "test coverage": mean_sd(g["test coverage"]),
                     "test selective acc": mean_sd(g["test selective acc"])})
section3 = pd.DataFrame(rows)
for name, part in section3.groupby("data", sort=False):
    at_star = part[part["runs"].str.startswith("w*")]
    findings.append({"claim": claim3, "data": name,
                     "our number": f"test - val at tau*, w*={W_STAR[name]:g}: " + "; ".join(
                         f"{r} {g} (CI {ci})" for r, g, ci in zip(at_star["rank"], at_star["gap"], at_star["95% CI"])),
                     "verdict": combined(at_star["verdict"]), "notebook": NB})
section3

# %% [markdown]
# ## 4 · Class weights fix imbalance (ratdat's rare taxa)
#
# `LOSS.CLASS_WEIGHTS: balanced` weights each class `n / (K * count)` at every rank. ratdat at `w = 0.3`,
# 5 seeds: the `none` arm is section 1's `w = 0.3` runs (the same config), the `balanced` arm is new. With each
# run's selected weights we predict the test split through the project's predict API (`bundle.run_bundle` →
# `predict.Predictor`, the run's own test split via `predict.split_data`) and count, per rare taxon, the recall
# (share of its test captures predicted as that taxon) and how often it is predicted at all. The verdict is on
# the rare-class recall (the mean of the three taxa's recalls); the cost is the overall test accuracy.

# %%
t0 = time.perf_counter()
for seed in SEEDS:
    fit(config("ratdat", f"balanced-s{seed}", **{"LOSS.W": W_FIXED, "TRAIN.SEED": seed, "LOSS.CLASS_WEIGHTS": "balanced"}),
        "ratdat", "class-weights")
CW_SECONDS = time.perf_counter() - t0
none_runs = W_RUNS["ratdat"][np.isclose(W_RUNS["ratdat"]["LOSS.W"], W_FIXED)].sort_values("TRAIN.SEED")
CW_RUNS = {"none": none_runs, "balanced": per_run("class-weights").sort_values("TRAIN.SEED")}
TAXA = RANKS["ratdat"][0]


def test_predictions(run_id: str) -> pd.DataFrame:
    """The predictions frame of the run's test split, with its selected (val) weights, via the predict API."""
    bundle = run_bundle(store, run_id, dataset=DATA["ratdat"])
    part, sources = split_data(bundle, "test", DATA["ratdat"])
    return Predictor.from_bundle(bundle).frame(part, sources, truth=True, progress=False)


cw_rows = []
for arm, runs in CW_RUNS.items():
    for rec in runs.to_dict("records"):
        frame = test_predictions(rec["run"])
        # the predict API and the trainer's own test evaluation agree (same weights, same split)
        assert abs(accuracy_summary(frame, RANKS["ratdat"])["partial_chain"] - rec[N.TEST_PARTIAL_CHAIN_ACC]) < 1e-6
        true, pred = frame[column(TRUE, TAXA)], frame[column(PRED, TAXA)]
        row = {"arm": arm, "seed": rec["TRAIN.SEED"]}
        for taxon in RARE_TAXA:
            row[f"{taxon} recall"] = float((pred[true == taxon] == taxon).mean())
            row[f"{taxon} predicted"] = int((pred == taxon).sum())
        row["rare recall"] = float(np.mean([row[f"{t} recall"] for t in RARE_TAXA]))
        row["test taxa acc"] = rec[N.rank_key("test", N.ACC, TAXA)]
        row["test species acc"] = rec[N.rank_key("test", N.ACC, RANKS["ratdat"][-1])]
        row["test partial chain"] = rec[N.TEST_PARTIAL_CHAIN_ACC]
        cw_rows.append(row)
cw = pd.DataFrame(cw_rows)
test_counts = {t: int((true == t).sum()) for t in RARE_TAXA}  # the same test split in every run
print("test captures per rare taxon:", test_counts, f"(balanced runs: {CW_SECONDS:.0f} s)")
per_arm = cw.drop(columns="seed").groupby("arm", sort=False).agg(lambda s: mean_sd(s))
per_arm.T

# %%
claim4 = "class weights (balanced) fix imbalance: rare-class recall (weighted-loss seed)"
arm = {a: cw[cw["arm"] == a].sort_values("seed") for a in CW_RUNS}
rows = [{"metric": m, **{k: v for k, v in compare(arm["balanced"][m], arm["none"][m]).items()
                         if k in ("treatment_mean", "control_mean", "diff", "p", "verdict")}}
        for m in ["rare recall", *[f"{t} recall" for t in RARE_TAXA], "test taxa acc", "test species acc",
                  "test partial chain"]]
section4 = pd.DataFrame(rows).rename(columns={"treatment_mean": "balanced", "control_mean": "none"}).round(3)
rare, cost = section4.set_index("metric").loc["rare recall"], section4.set_index("metric").loc["test partial chain"]
findings.append({"claim": claim4, "data": "ratdat",
                 "our number": (f"mean recall of {', '.join(RARE_TAXA)}: {mean_sd(arm['balanced']['rare recall'])} "
                                f"balanced vs {mean_sd(arm['none']['rare recall'])} none (p={rare['p']:.3f}); cost: "
                                f"test partial chain {mean_sd(arm['balanced']['test partial chain'])} vs "
                                f"{mean_sd(arm['none']['test partial chain'])} (p={cost['p']:.3f})"),
                 "verdict": rare["verdict"], "notebook": NB})
section4

# %% [markdown]
# ## 5 · The classical baseline: one gradient-boosted classifier per rank
#
# `workbench.baseline.fit_gradient_boosting` fits scikit-learn's `HistGradientBoostingClassifier` per rank on
# the same train split (with its module defaults: early stopping on its own piece of the training rows, and an
# L2 penalty on leaf values, without which the multi-class loss diverges on ratdat's rare species), and scores the
# same val and test splits with the same metric functions (keys as a run stores them; test at each rank's
# val-chosen `tau`). Seeds 0..4 (its `random_state` and early-stopping piece), against the network at `w*`
# (section 1's runs), test, mean ± sd; "agree" = the network is better with p < 0.05. Nothing is tuned on either
# side beyond `w*`.

# %%
from workbench.baseline import fit_gradient_boosting  # noqa: E402

GB_SMOKE = {"max_iter": 5} if SMOKE else {}  # CI: a few boosting iterations
t0 = time.perf_counter()
gb_rows = []
for name in SETUP:
    for seed in SEEDS:
        result = fit_gradient_boosting(config(name, f"{name}-gb-s{seed}", **{"TRAIN.SEED": seed}), DATA[name],
                                       seed=seed, progress=False, **GB_SMOKE)
        gb_rows.append({"data": name, "seed": seed, **result.metrics})
GB_SECONDS = time.perf_counter() - t0
gb = pd.DataFrame(gb_rows)
print(f"gradient boosting: {len(gb)} fits in {GB_SECONDS:.0f} s")
claim5 = "the network beats one gradient-boosted classifier per rank (classical baseline)"
rows = []
for name in SETUP:
    keys = {"partial chain": N.TEST_PARTIAL_CHAIN_ACC, "chain": N.TEST_CHAIN_ACC,
            **{rank: N.rank_key("test", N.ACC, rank) for rank in RANKS[name]}}
    base_runs = gb[gb["data"] == name].sort_values("seed")
    for label, key in keys.items():
        net, base = at_w(name, W_STAR[name], key), base_runs[key].to_numpy(float)
        res = compare(net, base)
        rows.append({"data": name, "metric": f"test {label}", "network (w*)": mean_sd(net),
                     "gradient boosting": mean_sd(base), "diff": round(res["diff"], 3), "p": round(res["p"], 3),
                     "verdict": res["verdict"]})
section5 = pd.DataFrame(rows)
for name, part in section5.groupby("data", sort=False):
    main = part[part["metric"] == "test partial chain"].iloc[0]
    findings.append({"claim": claim5, "data": name,
                     "our number": (f"test partial chain: network (w*={W_STAR[name]:g}) {main['network (w*)']} vs "
                                    f"gradient boosting {main['gradient boosting']} (p={main['p']:.3f})"),
                     "verdict": main["verdict"], "notebook": NB})
section5

# %% [markdown]
# ## Findings
#
# One row per claim × data set (the README's "Findings" table is made from these rows). A claim made of parts
# (claim 1: both ranks; claim 3: every rank) agrees only where every part agrees, and disagrees where one part
# disagrees.

# %%
findings_table = pd.DataFrame(findings, columns=FINDINGS_COLUMNS)
print(f"alpha = {ALPHA}; wall time {time.perf_counter() - T_START:.0f} s "
      f"(w sweep and its check {W_SECONDS:.0f} s, phases {PHASE_SECONDS:.0f} s, class weights {CW_SECONDS:.0f} s, "
      f"gradient boosting {GB_SECONDS:.0f} s)")
with pd.option_context("display.max_colwidth", None):
    print(findings_table.to_string(index=False))
findings_table

# %% [markdown]
# ## What the full run found
#
# Full run of 2026-12-01 as configured above: 958 s wall on a 2-core CPU machine shared with other jobs (load
# average 4-10; w sweep and its check 596 s for 100 runs, phases 171 s, class weights 62 s, gradient boosting 118 s;
# an earlier identical run without the check took 756 s on a quieter machine). olive: 15 epochs, 114 test oils
# (one oil = 0.009); ratdat: 15 epochs, 7,109 test captures. **Test** numbers at each run's val-selected epoch,
# mean ± sd over seeds 0..4; verdicts at p < 0.05. Summary: of the five claims only two are supported, each on
# one data set (thresholds on ratdat, class weights for rare-class recall); the rest are inconclusive or refuted.
#
# | claim | data | our number | verdict |
# |---|---|---|---|
# | `w` in 0.2-0.4 helps both ranks | olive | fine: area 0.925 ± 0.015 at `w*` = 0.3 vs 0.928 ± 0.020 at `w` = 0 (p = 0.76); coarse: region 0.996 ± 0.005 vs 0.905 ± 0.091 at `w` = 1 (p = 0.09) | inconclusive |
# | | ratdat | fine: species 0.764 ± 0.003 at `w*` = 0.4 vs 0.734 ± 0.038 (p = 0.15); coarse vs `w` = 1: taxa 0.981 vs 0.981 (p = 0.97), genus 0.865 ± 0.003 vs 0.852 ± 0.020 (p = 0.23) | inconclusive |
# | | animal_mnist (07) | fine: animal 0.819 ± 0.029 at `w*` = 0.4 vs 0.645 ± 0.209 (p = 0.14); coarse: class 0.975 ± 0.007 vs 0.953 ± 0.034 (p = 0.23) | inconclusive |
# | phase 1 → 2 is more stable | ratdat | test partial chain 0.755 ± 0.004 vs 0.753 ± 0.005 (sd ratio 0.95, Levene p = 1.00); chain 0.754 ± 0.005 vs 0.751 ± 0.005; last-epoch val partial chain 0.747 ± 0.003 vs 0.749 ± 0.002 | inconclusive |
# | | animal_mnist birds (07) | test partial chain 0.838 ± 0.039 vs 0.878 ± 0.022 (sd ratio 1.83, Levene p = 0.24) | inconclusive |
# | val thresholds transfer to test | olive | test − val at `tau*`: region −0.004 ± 0.005, area **−0.040 ± 0.016** (95 % CI [−0.060, −0.021]) | disagree |
# | | ratdat | taxa +0.000 ± 0.001, genus +0.006 ± 0.001, species +0.003 ± 0.003 (every CI inside [−0.001, +0.007]) | agree |
# | class weights fix imbalance | ratdat | mean recall of Bird, Rabbit, Reptile 0.463 ± 0.071 balanced vs 0.073 ± 0.021 (p < 0.001); cost: partial chain 0.614 ± 0.018 vs 0.753 ± 0.005 | agree |
# | the network beats gradient boosting | olive | partial chain 0.925 ± 0.015 vs 0.933 ± 0.012 (p = 0.33) | inconclusive |
# | | ratdat | partial chain 0.754 ± 0.003 vs **0.763 ± 0.002** (p = 0.001) | disagree |
#
# **1 · The coarse-rank weight: not supported on these data.** `w*` (chosen on val among 0.2-0.4) is 0.3 on olive and
# 0.4 on ratdat, but val partial-chain accuracy is flat within 0.006 over every `w` in 0.1-0.7 on both, and so is test
# accuracy at every rank (olive area 0.914-0.937, ratdat species 0.764-0.766). No data set shows a gain at `w*` that
# five seeds can tell from noise, at either rank. The protocol's controls also flatter `w*`: `w = 0` trains no coarse
# head, so its val partial-chain accuracy stays near 0 and picks a near-arbitrary epoch (ratdat: epochs 1, 2 and 3 for
# three seeds, species 0.672-0.767). Selected instead on val accuracy at its own rank, `w = 0` gives species
# **0.767 ± 0.005** on ratdat (vs 0.764 ± 0.003 at `w*`, p = 0.25) and area 0.933 ± 0.005 on olive (vs 0.925 ± 0.015),
# and `w = 1` gives region 0.993 ± 0.004 and genus 0.866 ± 0.002, level with `w*`: on these tables the coarse rank's
# weight helps neither rank. Notebook 07's animal_mnist gain (+0.17 at the fine rank, which it read as agreement) is
# not significant by Welch's test over its 5 seeds (its `w = 0` sd is 0.21) and its `w = 0` runs were selected the same
# way, so the same artefact may be part of it; that check was not re-run here. What holds everywhere: the ends of the
# range fail at the rank they do not train (independent heads: olive region 0.14 at `w = 0`, fine ranks 0.04-0.05 at
# `w = 1`), which is a trivial win, not the claim.
#
# **2 · Phase 1 → 2: not supported (no difference).** On ratdat the two arms have the same spread (sd ratio 0.95-1.17,
# Levene p ≥ 0.97) and the same accuracy (within 0.002); with about 2 % null labels per rank, masking them in phase 1
# changes little. On animal_mnist's birds (notebook 07) phase 1 → 2 was *less* stable (sd 0.039 vs 0.022) and lower
# (0.838 vs 0.878, p = 0.09), not significantly: the claim leans the other way there.
#
# **3 · Val thresholds transfer to test: supported on ratdat, refuted on olive.** On ratdat `tau*` is 0.2-0.4 (test
# coverage 0.99) and the val number at `tau*` predicts test within 0.006 at every rank, at `w*` and over all 40 runs.
# On olive `tau*` is always 0 (no null labels: abstaining never pays), so what fails is not the threshold but the val
# number itself: with 114 val oils and the epoch selected on val, val area accuracy (0.965) overstates test (0.925) by
# 0.04 (−0.029 over all `w`). Expect val numbers at a val-selected point to be optimistic on small validation splits.
#
# **4 · Class weights: supported for rare-class recall, at a large cost.** Unweighted, Rabbit and Reptile are never
# predicted (Bird is, 32 times per run, recall 0.22, so "never predicted" holds for two of the three taxa here);
# `balanced` lifts Bird recall to 0.80 and Rabbit to 0.59 (15 test captures; sd 0.25). Reptile (2 test captures) is
# never recalled by either arm. The price is everywhere else: `balanced` weights every rank's classes, and test taxa
# accuracy drops from 0.981 to 0.965, species from 0.764 to 0.643 and partial chain from 0.753 to 0.614 (all p < 0.001):
# it predicts Bird 320 and Rabbit 153 times for 91 and 15 true ones. Weight the coarse rank only, or tune the weights
# on val, before using it.
#
# **5 · The network does not beat gradient boosting.** On ratdat one `HistGradientBoostingClassifier` per rank is
# better at every rank (taxa 0.986 vs 0.981, genus 0.878 vs 0.865, species 0.777 vs 0.764; p < 0.001) and on partial
# chain (0.763 vs 0.754); the network wins only chain accuracy (0.752 vs 0.746, p = 0.01), because it can predict
# null and the baseline never does. On olive the two are level (0.933 vs 0.925, p = 0.33). A hierarchical MLP on
# these tables is a baseline to beat, not a given improvement.
