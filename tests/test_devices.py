"""The core on every device present (``device``: "cpu" always, "cuda" on a GPU machine; tests/conftest.py).

Every metric, curve, decoding and loss function run on a device gives the values it gives on the CPU, with its
tensors on that device (a CPU-made count tensor crashed ``threshold_curves`` on CUDA once); the trainer keeps
outputs and scoring on its device, keeps in-memory data there when it fits and uses the fused AdamW on CUDA.
On a CPU-only machine the CPU case still checks each function's device and dtype handling end to end.
"""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
import torch

import workbench.trainer as trainer_module
from workbench import metrics as M
from workbench.config import Config
from workbench.data import make_synthetic
from workbench.decoding import abstaining_predictions, argmax_classes, consistent_paths, rank_probabilities
from workbench.evaluation import score
from workbench.losses import balanced_class_weights, hierarchical_loss, rank_weights_from_w, target_rule
from workbench.masking import null_keep_mask
from workbench.trainer import Trainer

CUDA = torch.cuda.is_available()


def move(x, device):
    """``x`` (tensors inside lists, tuples and dicts) on ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(move(v, device) for v in x)
    if isinstance(x, dict):
        return {k: move(v, device) for k, v in x.items()}
    return x


def assert_same(got, ref, device: str, where: str = "result") -> None:
    """``got`` (computed on ``device``) equals ``ref`` (computed on the CPU): the same structure, each tensor on
    ``device`` with the CPU dtype and the CPU values (floats to 1e-5: reductions may run in another order there)."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{where}: a {type(got).__name__}, expected a tensor"
        assert got.device.type == device, f"{where}: on {got.device}, expected {device}"
        assert got.dtype == ref.dtype, f"{where}: dtype {got.dtype}, expected {ref.dtype}"
        torch.testing.assert_close(got.cpu(), ref, rtol=1e-5, atol=1e-6, equal_nan=True, msg=lambda m: f"{where}: {m}")
    elif isinstance(ref, dict):
        assert set(got) == set(ref), f"{where}: keys {sorted(got)} vs {sorted(ref)}"
        for k in ref:
            assert_same(got[k], ref[k], device, f"{where}[{k!r}]")
    elif isinstance(ref, (list, tuple)):
        assert len(got) == len(ref), f"{where}: {len(got)} items vs {len(ref)}"
        for i, (g, r) in enumerate(zip(got, ref)):
            assert_same(g, r, device, f"{where}[{i}]")
    elif isinstance(ref, float):
        assert (math.isnan(got) and math.isnan(ref)) or got == pytest.approx(ref, rel=1e-5, abs=1e-6), \
            f"{where}: {got} vs {ref}"
    elif isinstance(ref, pd.DataFrame):
        pd.testing.assert_frame_equal(got, ref, rtol=1e-5, atol=1e-6)
    else:
        assert got == ref, f"{where}: {got!r} vs {ref!r}"


@pytest.fixture(scope="module")
def case():
    """A 3-rank synthetic taxonomy with nulls at the finer ranks and a multi-label finest rank; random outputs."""
    ds = make_synthetic(n=500, branching=(3, 3, 3), null_rates=(0.0, 0.2, 0.4), multilabel_rank=2, seed=3)
    g = torch.Generator().manual_seed(0)
    logits = [3 * torch.randn(len(ds), k, generator=g) for k in ds.taxonomy.num_classes]
    probs = [torch.softmax(lg, dim=1) for lg in logits]
    preds = torch.stack([p.argmax(dim=1) for p in probs], dim=1)
    return {"ds": ds, "tax": ds.taxonomy, "logits": logits, "probs": probs, "preds": preds, "targets": ds.targets,
            "hot": ds.multilabel}


# name -> f(case) with every tensor of case on one device; each runs on the CPU and on `device`
CORE = {
    "rank_accuracy": lambda c: M.rank_accuracy(c["preds"], c["targets"]),
    "rank_accuracy_with_null": lambda c: M.rank_accuracy(c["preds"], c["targets"], include_null=True),
    "chain_accuracy": lambda c: M.chain_accuracy(c["preds"], c["targets"]),
    "partial_chain_accuracy": lambda c: M.partial_chain_accuracy(c["preds"], c["targets"]),
    "consistency_rate": lambda c: M.consistency_rate(c["preds"], c["tax"]),
    "finest_labelled_rank": lambda c: M.finest_labelled_rank(c["targets"]),
    "sample_heights": lambda c: M.sample_heights(c["preds"], c["targets"], c["tax"]),
    "severity_heights": lambda c: M.severity_heights(c["preds"], c["targets"], c["tax"]),
    "mistake_severity": lambda c: M.mistake_severity(c["preds"], c["targets"], c["tax"]),
    "calibration_error": lambda c: M.calibration_error(c["probs"][1], c["targets"][:, 1]),
    "calibration_error_no_label": lambda c: M.calibration_error(c["probs"][1], torch.zeros_like(c["targets"][:, 1])),
    "threshold_curves": lambda c: M.threshold_curves(c["probs"], c["targets"], multilabel_targets={2: c["hot"][2]}),
    "threshold_curves_cpu_grid": lambda c: M.single_label_curves(c["probs"][0], c["targets"][:, 0],
                                                                 M.default_thresholds(11)),
    "multilabel_curves": lambda c: M.multilabel_curves(torch.sigmoid(c["logits"][2]), c["hot"][2],
                                                       M.default_thresholds(21)),
    "best_thresholds": lambda c: M.best_thresholds(M.threshold_curves(c["probs"], c["targets"])),
    "top_k_accuracy": lambda c: M.top_k_accuracy(c["probs"][2], c["targets"][:, 2], 3),
    "null_accuracy": lambda c: M.null_accuracy(c["preds"], c["targets"]),
    "hierarchical_prf": lambda c: M.hierarchical_prf(c["preds"], c["targets"]),
    "hdist_counts": lambda c: M.hdist_counts(c["probs"], c["targets"], c["tax"], 3),
    "hdist_at_k": lambda c: M.hdist_at_k(c["probs"], c["targets"], c["tax"], 3),
    "auroc": lambda c: M.auroc(c["probs"][2], c["targets"][:, 2]),
    "auroc_one_class": lambda c: M.auroc(c["probs"][2], torch.ones_like(c["targets"][:, 2])),
    "lca_height": lambda c: c["tax"].lca_height(2, c["preds"][:, 2], c["targets"][:, 2]),
    "marginal_log_probs": lambda c: c["tax"].marginal_log_probs(c["logits"][2]),
    "argmax_classes": lambda c: argmax_classes(c["logits"], {2}),
    "rank_probabilities": lambda c: rank_probabilities(c["logits"], {2}),
    "abstaining_predictions": lambda c: abstaining_predictions(c["probs"], [0.3, 0.5, 0.7]),
    "consistent_paths": lambda c: consistent_paths([torch.log_softmax(lg, 1) for lg in c["logits"]], c["tax"],
                                                   return_scores=True),
    "hierarchical_loss": lambda c: hierarchical_loss(c["logits"], c["targets"], c["targets"] != 0,
                                                     rank_weights_from_w(0.3, 3)),
    "hierarchical_loss_weighted_multilabel": lambda c: hierarchical_loss(
        c["logits"], c["targets"], torch.ones_like(c["targets"], dtype=torch.bool), torch.tensor([0.2, 0.3, 0.5]),
        class_weights=[w.to(c["targets"].device)
                       for w in balanced_class_weights(c["targets"].cpu(), c["tax"].num_classes)],
        sample_weight=torch.linspace(0.5, 2.0, c["targets"].shape[0], device=c["targets"].device),
        multilabel_targets={2: c["hot"][2]}),
    "null_keep_mask": lambda c: null_keep_mask(c["targets"], 0.4, phase1=False, training=True,
                                               generator=torch.Generator().manual_seed(5)),
}


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_function_same_on_device_as_on_cpu(case, device, name):
    fn = CORE[name]
    ref = fn(case)
    got = fn(move(case, device))
    assert_same(got, ref, device, name)


@pytest.mark.parametrize("rule", ["smoothing", "taxonomy", "soft_labels"])
def test_loss_target_rules_same_on_device(case, device, rule):
    over = {"smoothing": {"LOSS.LABEL_SMOOTHING": 0.1}, "soft_labels": {"LOSS.SOFT_LABELS_BETA": 2.0},
            "taxonomy": {"LOSS.LABEL_SMOOTHING": 0.1, "LOSS.SMOOTHING": "taxonomy"}}[rule]
    tr = target_rule(Config().with_overrides(over).LOSS, case["tax"])

    def loss(c, t):
        return hierarchical_loss(c["logits"], c["targets"], c["targets"] != 0, rank_weights_from_w(0.3, 3),
                                 target_rule=t)

    assert_same(loss(move(case, device), tr.to(device)), loss(case, tr), device, rule)


def test_accumulator_same_on_device(case, device):
    """The accumulator counts on the inputs' device; its sums (and values) are the CPU ones, kept on the CPU."""
    accs = [M.HierarchicalAccuracy(3), M.HierarchicalAccuracy(3)]
    for acc, c in zip(accs, (case, move(case, device))):
        for part in torch.arange(len(case["targets"])).split(128):
            acc.update(c["preds"][part.to(c["preds"].device)], c["targets"][part.to(c["targets"].device)])
    assert_same(accs[1].compute(), accs[0].compute(), "cpu", "HierarchicalAccuracy")


def test_score_same_on_device(case, device):
    """``evaluation.score`` (every stored metric of a split and its curves) on device tensors equals the CPU."""
    def run(c):
        return score(c["logits"], c["targets"], c["tax"], "val", {2: c["hot"][2]},
                     loss=(torch.tensor(1.5, device=c["targets"].device), torch.ones(3, device=c["targets"].device)))

    (m_ref, f_ref, p_ref), (m, f, p) = run(case), run(move(case, device))
    assert_same(m, m_ref, device, "metrics")
    assert_same(f, f_ref, device, "curves")
    assert_same(p, p_ref, device, "preds")


# ---------------------------------------------------------------------- the trainer on its device
def tiny(tmp_path, device: str, **over) -> Config:
    return Config().with_overrides({
        "DATA.NAME": "synthetic", "MODEL.HIDDEN": [16], "TRAIN.EPOCHS": 1, "TRAIN.BATCH_SIZE": 64,
        "TRAIN.DEVICE": device, "TRAIN.NUM_THREADS": 1, "TRACKING.STORE": str(tmp_path / "runs.db"), **over})


@pytest.fixture(scope="module")
def small_ds():
    return make_synthetic(n=600, num_features=8, null_rates=(0.0, 0.1, 0.3), seed=1)


def test_trainer_scores_on_its_device(tmp_path, device, small_ds):
    """Outputs stay on the training device and are scored there; the values equal scoring them on the CPU."""
    t = Trainer(tiny(tmp_path, device), dataset=small_ds, progress=False)
    t.train_epoch(0)
    logits, z = t.predict(t.val_ds)
    assert {lg.device.type for lg in logits} == {device} and z.device.type == device
    metrics, frame, out = t.evaluate(t.val_ds, split="val")
    assert {v.device.type for k, v in out.items() if v is not None} == {device}
    cpu = score([lg.cpu() for lg in logits], t.val_ds.targets, t.taxonomy, "val")[0]
    assert_same({k: metrics[k] for k in cpu}, cpu, device, "val metrics")


def test_fused_adamw_on_cuda_only(tmp_path, device, small_ds):
    t = Trainer(tiny(tmp_path, device), dataset=small_ds, progress=False)
    assert bool(t.optimizer.param_groups[0]["fused"]) == (device == "cuda")


def test_in_memory_data_resident_on_cuda(tmp_path, device, small_ds, monkeypatch):
    """On CUDA an in-memory split lives on the device (batches gathered there); over the memory rule it is copied
    per batch instead, and both roads draw the same batches: the same training metrics. The CPU needs no copy."""
    t = Trainer(tiny(tmp_path, device), dataset=small_ds, progress=False)
    resident = t._resident(t.train_ds)
    if device == "cpu":
        assert resident is None
        return
    assert resident.features.device.type == "cuda" and resident.targets.device.type == "cuda"
    batch, _ = next(t._batches(t.train_ds, 64))  # not shuffled: draws nothing from the shuffle generator
    assert batch.features.device.type == "cuda"
    one = t.train_epoch(0)
    monkeypatch.setattr(trainer_module, "RESIDENT_FRACTION", 0.0)  # nothing fits: the per-batch copy road
    u = Trainer(tiny(tmp_path, device, **{"TRACKING.STORE": str(tmp_path / "other.db")}), dataset=small_ds,
                progress=False)
    assert u._resident(u.train_ds) is None
    two = u.train_epoch(0)
    for k in one:
        assert two[k] == pytest.approx(one[k], rel=1e-4, abs=1e-6, nan_ok=True), k


def test_resident_road_trains_and_scores_like_the_copy_road(tmp_path, device):
    """The device-resident road (batches gathered from a copy of the split on the device, labels scored there)
    trains and evaluates exactly as the per-batch road; forced here on every device, so the CPU runs it too.
    Sets (a valid mask) and sample weights travel with the copy."""
    ds = make_synthetic(n=600, num_features=8, null_rates=(0.0, 0.1, 0.3), seed=2)
    ds.sample_weight = torch.linspace(0.5, 1.5, len(ds))
    ds.features, ds.valid = ds.features[:, None, :].repeat(1, 3, 1), torch.rand(len(ds), 3) < 0.7
    ds.valid[:, 0] = True
    over = {"MODEL.BACKBONE": "set_attention", "SCHEDULE.NULL_MASKING.START_PROB": 0.3}
    plain = Trainer(tiny(tmp_path, device, **over), dataset=ds, progress=False)
    a, (ma, _, oa) = plain.train_epoch(0), plain.evaluate(plain.val_ds)
    # built after the first one trained: its construction reseeds the global RNG (dropout) the same way
    forced = Trainer(tiny(tmp_path, device, **over, **{"TRACKING.STORE": str(tmp_path / "f.db")}), dataset=ds,
                     progress=False)
    copies = {}
    forced._resident = lambda d: copies.setdefault(id(d), trainer_module.dataset_on(d, forced.device))
    b, (mb, _, ob) = forced.train_epoch(0), forced.evaluate(forced.val_ds)
    assert len(copies) == 2  # train and val went the resident road
    tol = {} if device == "cpu" else {"rel": 1e-4, "abs": 1e-6}  # the CPU: bit for bit
    for k in a:
        assert b[k] == pytest.approx(a[k], nan_ok=True, **tol), k
    for k in ma:
        assert mb[k] == pytest.approx(ma[k], nan_ok=True, **tol), k
    assert torch.equal(oa["preds"], ob["preds"]) or device != "cpu"


def test_eval_batch_size_config_gives_the_same_outputs(tmp_path, device, small_ds):
    """``TRAIN.EVAL_BATCH_SIZE`` only changes how many rows go through one forward."""
    default = Trainer(tiny(tmp_path, device), dataset=small_ds, progress=False)
    small = Trainer(tiny(tmp_path, device, **{"TRAIN.EVAL_BATCH_SIZE": 7, "TRACKING.STORE": str(tmp_path / "b.db")}),
                    dataset=small_ds, progress=False)
    calls = []
    forward = small.model_forward
    small.model_forward = lambda *a: calls.append(a[0].shape[0]) or forward(*a)
    (a, _), (b, _) = default.predict(default.val_ds), small.predict(small.val_ds)
    assert calls and max(calls) == 7 and sum(calls) == len(small.val_ds)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


COMPILE_BUDGET_S = 120  # an inductor compile on a shared 2-core machine; slower than that is skipped, not failed


@pytest.mark.slow
def test_compile_trains_a_tiny_run(tmp_path, small_ds):
    """``TRAIN.COMPILE: true`` trains and evaluates a run through torch.compile; the weights stay the model's."""
    t = Trainer(tiny(tmp_path, "cpu", **{"TRAIN.COMPILE": True, "TRAIN.EPOCHS": 2}), dataset=small_ds,
                progress=False)
    assert t.model_forward is not t.model.forward_with_embedding
    t0 = time.perf_counter()
    try:
        status = t.fit()
    except torch._dynamo.exc.BackendCompilerFailed as e:  # inductor without a working C++ toolchain here
        pytest.skip(f"torch.compile cannot compile on this machine: {str(e)[:300]}")
    took = time.perf_counter() - t0
    if took > COMPILE_BUDGET_S:
        pytest.skip(f"torch.compile took {took:.0f} s here (> {COMPILE_BUDGET_S} s); the run itself finished")
    assert status == "finished"
    rows = t.store.metrics(t.run_id)
    assert len(rows[rows["split"] == "val"]["epoch"].unique()) == 2


@pytest.mark.skipif(CUDA, reason="with CUDA the script measures for minutes: a benchmark, not a test")
def test_bench_gpu_without_cuda_measures_nothing_and_says_so():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device here; nothing measured" in proc.stdout
