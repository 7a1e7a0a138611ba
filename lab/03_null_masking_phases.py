# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Null masking in two phases
#
# **Question.** When many labels are null (missing at a rank), should the model learn from the
# labelled ranks only first (phase 1: null labels never count in the loss) and bring the nulls in
# later on a ramp (phase 2), or train with nulls in the loss from the start? Which metric tells the
# truth at each stage, and does chain accuracy recover in phase 2?
#
# The answer depends on *why* labels are null, so we use two versions of one synthetic 3 > 3 > 3
# hierarchy with the same null rates (0 / 33 % / 55 %, nested: a sample null at rank `r` is null at
# every finer rank):
#
# - **structured nulls**: nulls depend on what the sample is, as in real collections (one whole
#   coarse group is never identified below the coarse rank, two mid-rank groups never to the finest
#   rank). A model can learn *where* nulls occur.
# - **random nulls**: the same rates, missing completely at random (`make_synthetic(null_rates=...)`).
#   Whether a label is null is then unrelated to the sample.
#
# Runs per dataset and seed:
#
# | run | epochs | null labels in the loss |
# |---|---|---|
# | **phase 1 → phase 2** | `E1` + `E2` | never (`TRAIN.PHASE1_MASK_NULL_LOSS: true`), then a new run with `TRAIN.INIT_FROM: <phase-1 run id>` and a ramp `p: 0 → 1` |
# | **phase 1 only** | `E1` + `E2` | never (control: is phase 2's effect more than extra epochs?) |
# | **nulls from the start** | `E1` + `E2` | always (`p = 1`) |
#
# **Select on val, report on test.** Each dataset is split 60 / 20 / 20 into train / validation / test
# (`DATA.TEST_FRACTION: 0.2`). Each run keeps the epoch that is best on validation, by the metric its
# loss is meant to improve: partial-chain accuracy for the phase-1 runs (nulls masked: what they can
# learn), chain accuracy for the runs that count nulls (phase 2, nulls from the start: they learn to
# predict null). The timelines below are validation; the table of results is the selected weights on
# the test split, and the thresholds in it are chosen on validation.

# %% tags=["parameters"]
SMOKE = False  # CI: 600 samples, 1 + 2 epochs, one seed

# %%
import os
import shutil
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench import metrics as M
from workbench import plots
from workbench.config import Config
from workbench.data import load_dataset, make_synthetic
from workbench.launch import phase2_config
from workbench.masking import NullMaskSchedule
from workbench.names import NULL_INCLUSION_PROB, VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC, core_key, val_acc
from workbench.store import RunStore
from workbench.summaries import test_epoch, test_values
from workbench.trainer import Trainer, load_checkpoint

SMOKE = SMOKE or os.environ.get("WORKBENCH_SMOKE") == "1"
RUNS = Path(os.environ.get("WORKBENCH_LAB_RUNS", "_runs")) / "03_null_masking_phases"
shutil.rmtree(RUNS, ignore_errors=True)
RUNS.mkdir(parents=True)
torch.set_num_threads(1)
pd.set_option("display.width", 160)

E1, E2 = (1, 2) if SMOKE else (10, 10)
RAMP_EPOCHS = 1 if SMOKE else 5  # phase 2: p goes 0 -> 1 over its first RAMP_EPOCHS epochs
SEEDS = 1 if SMOKE else 3
N = 600 if SMOKE else 4000
NULL_RATES = [0.0, 0.33, 0.55]

# %% [markdown]
# ## Two datasets, same features, same null rates
#
# The structured version is written to a CSV file and loaded through the library's file loader
# (`DATA.NAME: file`), the way a user's own table would be.

# %%
SYN = {"N": N, "BRANCHING": [3, 3, 3], "NUM_FEATURES": 16, "NOISE": 1.0}
full = make_synthetic(n=N, branching=(3, 3, 3), num_features=16, noise=1.0, null_rates=(0, 0, 0), seed=0)
table = full.raw.copy()  # level0 > level1 > level2 label strings, all labelled
table[["level1", "level2"]] = table[["level1", "level2"]].mask(table["level0"] == "c2")  # never identified below level0
table["level2"] = table["level2"].mask(table["level1"].isin(["c0.0", "c1.0"]))  # never identified to level2
for i, name in enumerate(full.feature_names):
    table[name] = full.features[:, i].numpy()
table.to_csv(RUNS / "structured_nulls.csv", index=False)

DATA = {
    "structured nulls": {"NAME": "file", "PATH": str(RUNS / "structured_nulls.csv"),
                         "RANKS": ["level0", "level1", "level2"], "FEATURE_PREFIX": "x"},
    "random nulls": {"NAME": "synthetic", "SYNTHETIC": {**SYN, "NULL_RATES": NULL_RATES}},
}
datasets = {name: load_dataset(Config.from_dict({"DATA": {**d, "VAL_FRACTION": 0.2, "SEED": 0}}).DATA)
            for name, d in DATA.items()}
ranks = list(datasets["random nulls"].taxonomy.ranks)
pd.concat({name: ds.summary_frame() for name, ds in datasets.items()})

# %% [markdown]
# Only samples labelled at every rank can be right under *chain* accuracy unless the model predicts
# null for the others. A model that never predicts null is therefore capped at the fraction of
# fully-labelled samples, whatever it learned:

# %%
for name, ds in datasets.items():
    print(f"{name}: fully labelled {float((ds.targets != 0).all(dim=1).float().mean()):.3f}; "
          f"null at the finest rank {float((ds.targets[:, -1] == 0).float().mean()):.3f}")

# %% [markdown]
# ## Phase 2's schedule
#
# `p(t)` is the probability that a null-labelled element is included in the loss at fractional epoch
# `t`; each element is drawn independently per batch from a seeded generator.

# %%
ramp = {"ENABLED": True, "START_PROB": 0.0, "END_PROB": 1.0, "START_EPOCH": 0, "END_EPOCH": RAMP_EPOCHS}
plots.schedule_preview(NullMaskSchedule(True, 0.0, 1.0, 0, RAMP_EPOCHS), E2).show()

# %% [markdown]
# ## Train

# %%
store = RunStore(RUNS / "workbench.db")


def train(dataset: str, name: str, seed: int, **overrides) -> Trainer:
    cfg = Config.from_dict({
        "DATA": {**DATA[dataset], "VAL_FRACTION": 0.2, "SEED": 0},
        "MODEL": {"HIDDEN": [128, 64], "HEAD": "independent"},
        "LOSS": {"W": 0.3},
        "TRAIN": {"BATCH_SIZE": 128, "LR": 0.003, "DEVICE": "cpu", "NUM_THREADS": 1, "SEED": seed},
        "TRACKING": {"STORE": str(store.path), "RUN_NAME": f"{dataset}-{name}-s{seed}"},
    }).with_overrides(overrides)
    return fit(cfg, dataset)


def fit(cfg: Config, dataset: str) -> Trainer:
    trainer = Trainer(cfg, store=store, dataset=datasets[dataset], progress=False)
    trainer.fit()
    return trainer


def phase2(dataset: str, parent: Trainer, seed: int) -> Trainer:
    """Phase 2 as the dashboard's "Continue as phase 2" makes it (`launch.phase2_config`: the parent's config,
    `TRAIN.INIT_FROM` = the parent, nulls counted again), with this notebook's ramp."""
    cfg = phase2_config(store.run(parent.run_id), {
        "TRAIN.EPOCHS": E2, "TRACKING.RUN_NAME": f"{dataset}-phase2-s{seed}", "TRAIN.SELECT_BY": VAL_CHAIN_ACC,
        **{f"SCHEDULE.NULL_MASKING.{k}": v for k, v in ramp.items()}})
    return fit(cfg, dataset)


models, lineage = {}, []
for dataset in DATA:
    for seed in range(SEEDS):
        p1 = train(dataset, "phase1", seed, **{"TRAIN.EPOCHS": E1, "TRAIN.PHASE1_MASK_NULL_LOSS": True})
        p2 = phase2(dataset, p1, seed)
        p1_long = train(dataset, "phase1-only", seed, **{"TRAIN.EPOCHS": E1 + E2, "TRAIN.PHASE1_MASK_NULL_LOSS": True})
        nulls = train(dataset, "nulls-from-start", seed, **{"TRAIN.EPOCHS": E1 + E2, "SCHEDULE.NULL_MASKING.ENABLED": False,
                                                            "TRAIN.SELECT_BY": VAL_CHAIN_ACC})
        lineage += [(dataset, seed, "phase 1 → phase 2", p1.run_id, 0), (dataset, seed, "phase 1 → phase 2", p2.run_id, E1),
                    (dataset, seed, "phase 1 only", p1_long.run_id, 0), (dataset, seed, "nulls from the start", nulls.run_id, 0)]
        models[dataset, seed] = {"after phase 1": p1, "after phase 2": p2, "phase 1 only": p1_long,
                                 "nulls from the start": nulls}

# the store records phase 2's parent
print("phase 2 parent:", store.run(p2.run_id)["parent_id"], "== phase 1 run", p1.run_id)

# %% [markdown]
# ## Chain vs partial-chain accuracy through the phases
#
# One timeline per strategy (phase 2's epochs are shifted by `E1`), mean over seeds. The dotted line
# is the fraction of fully-labelled validation samples: the ceiling of chain accuracy for a model
# that never predicts null.

# %%
keys = [VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC, NULL_INCLUSION_PROB, *[val_acc(r) for r in ranks]]
frames = []
for dataset, seed, strategy, run_id, offset in lineage:
    h = store.metrics_wide([run_id])
    frames.append(h.assign(dataset=dataset, seed=seed, strategy=strategy, step=h["epoch"] + offset + 1))
timeline = pd.concat(frames, ignore_index=True)
mean = timeline.groupby(["dataset", "strategy", "step"])[keys].mean().reset_index()

colours = {"phase 1 → phase 2": plots.PARTIAL_COLOUR, "phase 1 only": plots.PALETTE[2],
           "nulls from the start": plots.CHAIN_COLOUR}
panels = [(VAL_CHAIN_ACC, "chain acc"), (VAL_PARTIAL_CHAIN_ACC, "partial-chain acc")]
fig = make_subplots(rows=1, cols=4, horizontal_spacing=0.05, shared_yaxes=True,
                    subplot_titles=[f"{d}: {label}" for d in DATA for _, label in panels])
for i, dataset in enumerate(DATA):
    val_fully = float((models[dataset, 0]["after phase 1"].val_ds.targets != 0).all(dim=1).float().mean())
    for j, (key, _) in enumerate(panels):
        col = 2 * i + j + 1
        for strategy, colour in colours.items():
            m = mean[(mean["dataset"] == dataset) & (mean["strategy"] == strategy)]
            fig.add_trace(go.Scatter(x=m["step"], y=m[key], mode="lines+markers", name=strategy, legendgroup=strategy,
                                     showlegend=col == 1, line={"color": colour, "width": 2}, marker={"size": 4}),
                          row=1, col=col)
        fig.add_vline(x=E1 + 0.5, line={"dash": "dash", "color": "#bbb"}, row=1, col=col)
        if j == 0:
            fig.add_hline(y=val_fully, line={"dash": "dot", "color": "#888"}, row=1, col=col,
                          annotation_text="fully labelled", annotation_position="bottom right")
fig.update_xaxes(title_text="epoch (total)")
fig.update_yaxes(range=[0, 1.02])
fig.update_layout(template="plotly_white", height=430, width=1100,
                  legend={"orientation": "h", "y": -0.2},
                  title=f"Phase 1 ({E1} epochs, nulls masked) → phase 2 ({E2} epochs, p: 0→1 over {RAMP_EPOCHS}); "
                        f"validation, mean of {SEEDS} seed(s)")
if not SMOKE:  # key figure -> docs/lab_03.png (python lab/run.py 03 --png)
    fig.write_html(RUNS / "lab_03.html", include_plotlyjs=True, config={"displayModeBar": False})
fig.show()

# %% [markdown]
# ## Why: what each model predicts
#
# On the test set, with each run's selected weights (`best.pt`), per model: the selected epoch, chain
# and partial-chain accuracy, and at the finest rank how
# often it predicts null, its accuracy on labelled samples (`labelled acc`: what partial-chain
# accuracy is made of) and its null-aware accuracy (`null-aware acc`: a null target needs a null
# prediction, what chain accuracy is made of). `after phase 1 + per-rank tau` is the phase-1 model
# abstaining below per-rank thresholds chosen on validation (a cheap alternative to phase 2).

# %%
def describe_preds(preds: torch.Tensor, y: torch.Tensor) -> dict:
    out = {"chain": float(M.chain_accuracy(preds, y)), "partial chain": float(M.partial_chain_accuracy(preds, y))}
    labelled = M.rank_accuracy(preds, y)
    null_aware = M.rank_accuracy(preds, y, include_null=True)
    for r, rank in enumerate(ranks):
        out[f"pred null {rank}"] = float((preds[:, r] == 0).float().mean())
        out[f"labelled acc {rank}"] = float(labelled[r])
        out[f"null-aware acc {rank}"] = float(null_aware[r])
    return out


def abstain(probs: list[torch.Tensor], taus: list[float]) -> torch.Tensor:
    """The top non-null class where its probability reaches the rank's tau, null (0) otherwise: (N, R)."""
    out = []
    for p, tau in zip(probs, taus):
        conf, cls = p[:, 1:].max(dim=1)
        out.append(torch.where(conf >= tau, cls + 1, torch.zeros_like(cls)))
    return torch.stack(out, dim=1)


tests = test_values(store.metrics())  # the numbers each trainer stored for its test split
selected_epochs = test_epoch(store.metrics())
rows = []
for (dataset, seed), runs in models.items():
    for label, trainer in runs.items():
        trainer.model.load_state_dict(load_checkpoint(trainer.best_path, ("model",))["model"])  # the selected epoch
        logits, _ = trainer.predict(trainer.test_ds)
        preds = torch.stack([lg.argmax(dim=1) for lg in logits], dim=1)  # (N, R)
        y = trainer.test_ds.targets
        described = describe_preds(preds, y)
        assert abs(described["partial chain"] - tests.loc[trainer.run_id, core_key("test", "partial_chain_acc")]) < 1e-6
        epoch = int(selected_epochs[trainer.run_id]) + 1 + (E1 if label == "after phase 2" else 0)
        rows.append({"dataset": dataset, "model": label, "seed": seed, "selected epoch": epoch, **described})
        if label == "after phase 1":
            val_logits, _ = trainer.predict(trainer.val_ds)
            best = M.best_thresholds(M.threshold_curves(trainer.probabilities(val_logits), trainer.val_ds.targets),
                                     by="accuracy")  # chosen on validation
            rows.append({"dataset": dataset, "model": "after phase 1 + per-rank tau", "seed": seed,
                         "selected epoch": epoch,
                         **describe_preds(abstain(trainer.probabilities(logits), [best[r][0] for r in range(len(ranks))]), y)})
per_seed = pd.DataFrame(rows)
fine = ranks[-1]
cols = ["chain", "partial chain", f"pred null {fine}", f"labelled acc {fine}", f"null-aware acc {fine}"]
summary = per_seed.groupby(["dataset", "model"], sort=False)[["selected epoch", *cols]].mean()
summary = summary.join(per_seed.groupby(["dataset", "model"], sort=False)[["chain", "partial chain"]].std()
                       .rename(columns=lambda c: f"{c} sd"))
summary.round(3)

# %%
# every rank, for the record
per_seed.groupby(["dataset", "model"], sort=False).mean(numeric_only=True).drop(columns="seed").T.round(3)

# %% [markdown]
# Reading the numbers:
#
# - **After phase 1** the model (almost) never predicts null, so its chain accuracy sits at or below
#   the fully-labelled fraction whatever it learned, while partial-chain accuracy and labelled
#   per-rank accuracy measure exactly what phase 1 trains. That is why partial-chain accuracy is the
#   metric to watch, and to select checkpoints on, in phase 1.
# - **Structured nulls:** phase 2 teaches the model *where* labels stop (which groups are never
#   identified further), so chain accuracy climbs towards partial-chain accuracy as `p` ramps up,
#   at little cost to labelled accuracy.
# - **Random nulls:** nothing about a sample says its label will be missing, so the only way to
#   gain null-aware accuracy is to abstain where the fine class is uncertain. Phase 2 (and nulls
#   from the start) make the model predict null for many *labelled* samples: labelled fine accuracy
#   and partial-chain accuracy fall, and chain accuracy does not recover (the timelines). Selecting
#   phase 2's epoch on validation chain accuracy then keeps its first epoch, before the ramp has
#   brought many nulls in: a model close to the phase-1 one. With nulls like these, report
#   partial-chain accuracy and keep the phase-1 model (add abstention thresholds if nulls must be
#   predicted).
# - **Phase 1 only** vs **phase 1 → phase 2** separates the effect of the nulls from that of extra
#   epochs; **nulls from the start** shows whether the two-phase schedule buys anything over the
#   plain loss.

# %% [markdown]
# ## What the full run found
#
# Full run: 4,000 samples split 60 / 20 / 20 (2,400 train / 800 validation / 800 test), `E1 = E2 = 10`
# epochs, ramp over 5 epochs, 3 seeds, both datasets (24 runs, 61 s on 2 busy cores). The structured
# dataset's taxonomy has 6 mid-rank and 12 finest-rank classes (the never-identified groups never
# appear as labels) against 9 and 27 for the random one. **Test** numbers with each run's weights of the
# epoch selected on validation (partial-chain accuracy for the phase-1 runs, chain accuracy for the runs
# that count nulls), mean over seeds (sd ≤ 0.01 unless given); "epoch" is the mean selected epoch on the
# 20-epoch timeline:
#
# | dataset | model | epoch | chain | partial chain | predicts null at finest rank | labelled acc, finest | null-aware acc, finest |
# |---|---|---|---|---|---|---|---|
# | structured nulls (43 % fully labelled) | after phase 1 | 8.3 | 0.368 | 0.931 | 0 % | 0.866 | 0.375 |
# | | after phase 2 | 16.7 | **0.936** | 0.936 | 57 % (true: 57 %) | 0.865 | 0.939 |
# | | phase 1 only (20 epochs) | 16.7 | 0.374 | 0.936 | 0 % | 0.868 | 0.376 |
# | | nulls from the start | 17.0 | 0.941 | 0.941 | 57 % | 0.871 | 0.943 |
# | random nulls (47 % fully labelled) | after phase 1 | 9.0 | 0.388 | 0.917 | 0 % | 0.826 | 0.389 |
# | | after phase 2 | 11.0 | 0.378 | 0.902 | 1 % | 0.810 | 0.389 |
# | | phase 1 only (20 epochs) | 13.7 | 0.399 | 0.927 | 0 % | 0.853 | 0.401 |
# | | nulls from the start | 14.3 | 0.303 | 0.655 ± 0.02 | 63 % | 0.331 | 0.482 |
#
# The old validation-only report (80 / 20 split, final epoch) had the same picture with numbers up to
# 0.03 higher (more training data): structured after phase 2 chain 0.946, nulls from the start 0.941;
# random nulls from the start 0.322 / 0.669. **The conclusions hold on test:**
#
# - In phase 1 chain accuracy is pinned below the fully-labelled fraction (0.37 vs 0.43, 0.39 vs
#   0.47) while partial-chain accuracy is already 0.92-0.93: chain accuracy says nothing about
#   phase-1 progress; partial-chain accuracy does.
# - **Structured nulls: chain accuracy recovers in phase 2**, from 0.37 to 0.94 within about two
#   epochs of the ramp starting (timeline), and equals partial-chain accuracy at the selected epoch;
#   labelled accuracy is unchanged (0.866 → 0.865). Ten more phase-1 epochs change nothing (0.374).
#   Training with nulls from the start reaches the same place (0.941, within 0.005), so the two-phase
#   schedule bought no accuracy here; its value is the phase-1 checkpoint, a model that never learned
#   to abstain.
# - **Random nulls: chain accuracy does not recover.** On the validation timeline phase 2 falls to
#   0.32 chain / 0.65 partial-chain as the model learns to predict null for most samples, labelled or
#   not; selection on validation chain accuracy therefore keeps phase 2's first epoch (epoch 11 in
#   every seed), whose test numbers are the phase-1 model's (0.378 / 0.902). Nulls from the start is
#   worse than phase 1 on every test number (chain 0.303, partial-chain 0.655, labelled fine accuracy
#   0.331).
# - Phase 1 plus one global abstention threshold per rank (chosen on validation) is no substitute for
#   phase 2 (test chain 0.394 ± 0.08 and 0.232): "where labels stop" depends on the class, not on the
#   model's confidence alone.
#
# Practical rule: check whether nulls are predictable from the inputs (a phase-2 or nulls-included
# run whose null-aware accuracy beats the phase-1 model's) before trusting chain accuracy; if they
# are not, report partial-chain accuracy and keep the phase-1 model.
