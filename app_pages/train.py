"""Train page: configure a run, launch it in its own process, watch it live from the store."""

from __future__ import annotations

import time

import streamlit as st

from app_pages import _evaluation as ev
from app_pages import _shared as sh
from workbench import names as N
from workbench import plots
from workbench.config import ConfigError
from workbench.health import explain
from workbench.launch import (
    ACTIVE, RESUMABLE, LaunchError, checkpoint_path, launch_phase2, launch_resume, launch_run, log_tail, reconcile,
    stop_run,
)
from workbench.cluster_run import ClusterSettings
from workbench.masking import NullMaskSchedule
from workbench.data import DataError
from workbench.models import VISION_INSTALL, backbone_mismatch
from workbench.names import SET_POOLS
from workbench.store import StoreError
from workbench.taxonomy import TaxonomyError

LIBRARY_ERRORS = (ConfigError, DataError, TaxonomyError)  # what loading a DATA section can raise
LR_CHOICES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
BATCH_CHOICES = [32, 64, 128, 256, 512, 1024, 2048]
for _key, _value in sh.FORM_DEFAULTS.items():
    sh.init(_key, _value)
WHERE = {"local": "This machine", "cluster": "Ray cluster"}
# one process here by default: more workers is a data-parallel run (`--nproc`), a choice, not the default
for _key, _value in zip(sh.CLUSTER_KEYS, ("local", 1, 1.0, 0.0)):
    sh.init(_key, _value)
ss = st.session_state


def choices(options: list, current) -> list:
    """A select slider's options plus the current value (a run's config loaded into the form may use
    a batch size or learning rate that is not among the presets)."""
    return sorted(set(options) | {current})


def is_image_data(data: dict) -> bool:
    return data.get("NAME") in sh.IMAGE_SOURCES


def preset_forces() -> dict:
    """Form values the loss preset decides: HXE needs the marginal head (LOSS.HXE_ALPHA requires it), soft
    labels replace label smoothing (the config refuses both). The page writes them into the (then disabled)
    widgets before drawing them, so the form shows what the run gets; :func:`form_config` reads them too."""
    return {"hxe": {"tr_head": "marginal"}, "soft": {"tr_ls": 0.0}}.get(ss.tr_loss_preset, {})


def form_value(key: str):
    """The form's value of ``key`` as a run gets it (:func:`preset_forces` first, else the widget's)."""
    return preset_forces().get(key, ss[key])


def model_section(data: dict) -> dict:
    """``MODEL`` from the form: an image backbone for image data, the set backbone for set data, the MLP otherwise."""
    hidden = sh.parse_numbers(ss.tr_hidden, int, "Hidden layer sizes")
    model = {**sh.DEFAULT_MODEL, "HEAD": form_value("tr_head"), "HIDDEN": hidden, "DROPOUT": float(ss.tr_dropout)}
    if sh.is_set_data(data):
        model["BACKBONE"] = ss.tr_set_backbone
        if ss.tr_set_backbone == "set_attention":
            model["POOL"] = ss.tr_pool
        return model
    if not is_image_data(data):
        return model
    model.update(BACKBONE=ss.tr_img_backbone, FREEZE_BACKBONE=bool(ss.tr_freeze),
                 PRETRAINED=ss.tr_pretrained.strip() or None)
    if ss.tr_img_backbone == "resnet":
        model.update(WIDTH=int(ss.tr_width), DEPTH=int(ss.tr_depth))
    else:
        model["ARCH"] = ss.tr_arch.strip() or None
    return model


def loss_section() -> dict:
    """``LOSS`` from the form: w and class weights, the preset's HXE alpha or soft-label beta, label smoothing."""
    preset = ss.tr_loss_preset
    return {"W": float(ss.tr_w), "CLASS_WEIGHTS": ss.tr_cw,
            "HXE_ALPHA": float(ss.tr_hxe_alpha) if preset == "hxe" else None,
            "SOFT_LABELS_BETA": float(ss.tr_soft_beta) if preset == "soft" else None,
            "LABEL_SMOOTHING": float(form_value("tr_ls")), "SMOOTHING": ss.tr_smoothing}


def recipe_section() -> dict:
    """The recipe part of ``TRAIN`` (LR schedule, warmup, clipping, accumulation); LR steps only for ``step``."""
    step = ss.tr_lr_schedule == "step"
    return {"LR_SCHEDULE": ss.tr_lr_schedule, "WARMUP_EPOCHS": float(ss.tr_warmup),
            # the step schedule's epochs; empty text is left to the config's message ("must list at least one")
            "LR_STEPS": sh.parse_numbers(ss.tr_lr_steps, float, "LR steps") if step and ss.tr_lr_steps.strip() else [],
            "LR_GAMMA": float(ss.tr_lr_gamma), "CLIP_GRAD_NORM": float(ss.tr_clip) if ss.tr_clip_on else None,
            "ACCUMULATE": int(ss.tr_accumulate)}


def form_config():
    """The run config from the form's widgets (``ConfigError`` on a bad value or combination)."""
    data = sh.data_section()
    return sh.build_config(
        data=data,
        model=model_section(data),
        loss=loss_section(),
        train={"EPOCHS": int(ss.tr_epochs), "BATCH_SIZE": int(ss.tr_bs), "LR": float(ss.tr_lr),
               "WEIGHT_DECAY": float(ss.tr_wd), "SEED": int(ss.tr_seed), "PHASE1_MASK_NULL_LOSS": bool(ss.tr_phase1),
               **recipe_section()},
        schedule={"ENABLED": bool(ss.tr_mask_on), "START_PROB": float(ss.tr_p0), "END_PROB": float(ss.tr_p1),
                  "START_EPOCH": float(ss.tr_e0), "END_EPOCH": float(ss.tr_e1)},
        tracking={"STORE": str(sh.store_path()), "RUN_NAME": ss.tr_name.strip() or None,
                  "WANDB": {"ENABLED": bool(ss.tr_wandb), "MODE": ss.tr_wandb_mode, "PROJECT": ss.tr_wandb_project}},
    )


def _launch_and_watch(launch, success) -> None:
    """Run ``launch()`` (returns a run id), then watch that run; a library error becomes the flash message."""
    try:
        run_id = launch()
    except (ConfigError, LaunchError, StoreError) as e:
        ss.tr_flash = ("error", sh.md_escape(e))
        return
    ss.tr_watch = run_id
    ss.tr_flash = ("success", success(run_id))


def set_backbone_refusal(data: dict) -> str | None:
    """The trainer's own refusal of the chosen set backbone for this set data (mlp on ``(N, S, F)``), or None.

    Shown on the page and raised by Start, so a run that cannot train is never launched."""
    if not sh.is_set_data(data) or ss.tr_set_backbone == "set_attention":
        return None
    try:
        ds = sh.load_dataset(data)
    except LIBRARY_ERRORS:  # the Data page shows why the data does not load; the run would fail the same way
        return None
    return backbone_mismatch(ss.tr_set_backbone, tuple(ds.features.shape), ds.name)


def cluster_settings() -> ClusterSettings | None:
    """Where the form's run trains: None for this machine, else the Ray cluster at the sidebar's address with the
    form's workers, CPUs and GPUs per worker (:class:`ConfigError` without an address)."""
    if ss.tr_where != "cluster":
        return None
    address = str(ss.get(sh.RAY_ADDRESS_KEY) or "").strip()
    if not address:
        raise ConfigError("training on the Ray cluster needs its address: enter it in the sidebar "
                          "('auto' or host:port)")
    return ClusterSettings(address=address, workers=int(ss.tr_workers), cpus_per_worker=float(ss.tr_cpw),
                           gpus_per_worker=float(ss.tr_gpw))


def launch_form_run() -> str:
    """Launch the form's run (here, or on the Ray cluster: :func:`cluster_settings`); a backbone that cannot train
    on the data is refused first (:class:`ConfigError`)."""
    refusal = set_backbone_refusal(sh.data_section())
    if refusal:
        raise ConfigError(refusal)
    cluster = cluster_settings()
    nproc = 1 if cluster is not None else int(ss.tr_workers)  # this machine: the workers are local processes
    return launch_run(form_config(), sh.store_path(), cluster=cluster, nproc=nproc)


def start_run() -> None:
    """``Start`` button: validate, launch, watch the new run."""
    where = ("on the Ray cluster (its driver runs here and records every epoch)" if ss.tr_where == "cluster"
             else "in its own process" if int(ss.tr_workers) == 1
             else f"on {int(ss.tr_workers)} data-parallel processes here")
    _launch_and_watch(launch_form_run,
                      lambda run_id: f"Started run `{run_id}`: training {where}; the panel below follows it.")


def where_widgets() -> None:
    """This machine or the Ray cluster (the sidebar's address), with the cluster run's workers and resources."""
    c1, c2, c3, c4 = st.columns([1.4, 1, 1, 1])
    c1.radio("Train on", list(WHERE), format_func=WHERE.get, key="tr_where", horizontal=True,
             help="This machine: the run here, on one process or N data-parallel ones (`train --nproc N`). Ray "
                  "cluster: the same trainer on N data-parallel Ray Train workers of the cluster at the sidebar's "
                  "address; the run is recorded in this store as any run, and Stop works the same.")
    cluster = ss.tr_where == "cluster"
    c2.number_input("Workers", 1, 1024, step=1, key="tr_workers",
                    help="Data-parallel processes, each training on its share of every epoch's rows (gradients "
                         "averaged, metrics exact): here, `train --nproc N` (one GPU each on CUDA); on the cluster, "
                         "Ray Train workers. 1 = one process.")
    c3.number_input("CPUs per worker", 0.0, 1024.0, step=0.5, key="tr_cpw", disabled=not cluster, format="%g",
                    help="CPUs each worker reserves on the cluster (fractions allowed); also its torch threads.")
    c4.number_input("GPUs per worker", 0.0, 64.0, step=1.0, key="tr_gpw", disabled=not cluster, format="%g",
                    help="0: CPU workers (gloo). 1 or more: each worker trains on its GPU (NCCL).")
    if cluster:
        address = str(ss.get(sh.RAY_ADDRESS_KEY) or "").strip()
        if address:
            st.caption(f"Ray cluster: {sh.md_escape(address)} (change it in the sidebar)")
        else:
            st.warning("Enter the Ray cluster's address in the sidebar ('auto' or host:port).",
                       icon=":material/lan:")


def start_phase2(parent_id: str) -> None:
    overrides = {
        "TRAIN.EPOCHS": int(ss.p2_epochs), "TRAIN.LR": float(ss.p2_lr),
        "SCHEDULE.NULL_MASKING.ENABLED": True, "SCHEDULE.NULL_MASKING.START_PROB": float(ss.p2_p0),
        "SCHEDULE.NULL_MASKING.END_PROB": float(ss.p2_p1), "SCHEDULE.NULL_MASKING.START_EPOCH": 0.0,
        "SCHEDULE.NULL_MASKING.END_EPOCH": float(ss.p2_e1),
    }
    _launch_and_watch(lambda: launch_phase2(parent_id, sh.store_path(), overrides),
                      lambda run_id: f"Started phase 2 of `{parent_id}` as run `{run_id}`.")


def request_stop(run_id: str) -> None:
    stop_run(run_id, sh.store_path())


def resume(run_id: str) -> None:
    """``Resume`` button: continue a failed or stopped run from its checkpoint, in a new process."""
    _launch_and_watch(lambda: launch_resume(run_id, sh.store_path()),
                      lambda run_id: f"Resumed run `{run_id}` from its last checkpoint.")


BACKBONE_HELP = {
    "resnet": "A small ResNet in plain torch (3 stages of WIDTH, 2xWIDTH, 4xWIDTH channels, DEPTH basic blocks "
              "each): works on every machine.",
    "timm": "An architecture from timm by name (MODEL.ARCH: resnet18, convnext_tiny, ...).",
    "torchvision": "An architecture from torchvision.models by name (MODEL.ARCH: resnet18, ...).",
}


SET_BACKBONE_HELP = ("set_attention: each element of a set is encoded by the MLP (hidden sizes below), then "
                     "pooled into one embedding; padding gets zero weight. mlp: one row per sample, so it cannot "
                     "train on sets (shown only to say why).")
POOL_HELP = ("attention: a learned score per element, softmax over the set (MODEL.POOL attention). mean: the plain "
             "mean of the set's real elements (the baseline).")


def set_backbone_widgets(data: dict) -> None:
    """Backbone choice for set data: ``set_attention`` with its pooling; ``mlp`` shows the trainer's refusal."""
    st.subheader("Set backbone", divider="gray")
    c1, c2 = st.columns(2)
    c1.radio("Backbone", list(sh.SET_BACKBONES), key="tr_set_backbone", horizontal=True, help=SET_BACKBONE_HELP)
    c2.radio("Pooling", list(SET_POOLS), key="tr_pool", horizontal=True, help=POOL_HELP,
             disabled=ss.tr_set_backbone != "set_attention")
    refusal = set_backbone_refusal(data)
    if refusal:
        st.error(sh.md_escape(refusal), icon=":material/block:")


def image_backbone_widgets() -> None:
    """Backbone choice for image data: the plain-torch resnet (width, depth) or a timm/torchvision architecture."""
    st.subheader("Image backbone", divider="gray")
    st.radio("Backbone", list(sh.IMAGE_BACKBONES), key="tr_img_backbone", horizontal=True,
             help=" ".join(f"{k}: {v}" for k, v in BACKBONE_HELP.items()))
    c1, c2 = st.columns(2)
    if ss.tr_img_backbone == "resnet":
        c1.number_input("Width (channels of the first stage)", 1, 1024, step=8, key="tr_width")
        c2.number_input("Depth (blocks per stage)", 1, 16, step=1, key="tr_depth")
    else:
        c1.text_input("Architecture", key="tr_arch", help=BACKBONE_HELP[ss.tr_img_backbone])
        c2.caption(f"Needs the optional vision extra ({sh.md_escape(VISION_INSTALL)}); on a machine where "
                   f"{ss.tr_img_backbone} cannot be imported, the run stops with a config error that says why. "
                   "Nothing is downloaded: pretrained weights come from a local file.")
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    c1.text_input("Pretrained backbone weights (local file, optional)", key="tr_pretrained",
                  placeholder="/path/backbone.safetensors", help="MODEL.PRETRAINED: .safetensors, or .pt/.pth.")
    c2.toggle("Freeze backbone", key="tr_freeze", help="Train the heads only (MODEL.FREEZE_BACKBONE).")


def loss_widgets() -> None:
    """The loss preset (w, HXE(alpha), soft labels(beta)), label smoothing, the head and class weights."""
    for key, value in preset_forces().items():  # before the widgets are drawn: they show what the run gets
        ss[key] = value
    preset = ss.tr_loss_preset
    st.radio("Loss preset", list(sh.LOSS_PRESETS), key="tr_loss_preset", horizontal=True,
             format_func=sh.LOSS_PRESETS.get,
             help="w: rank weights from w (below). HXE (α): Making Better Mistakes' hierarchical cross-entropy, "
                  "rank weights exp(-α depth) on the marginal head (LOSS.HXE_ALPHA). Soft labels (β): targets "
                  "exp(-β LCA height) over the classes, rank weights from w (LOSS.SOFT_LABELS_BETA).")
    c1, c2, c3 = st.columns([2, 1, 1])
    c1.slider("Coarse-rank weight w", 0.0, 1.0, step=0.05, key="tr_w", disabled=preset == "hxe",
              help="Loss = w x coarse-rank CE + (1 - w) x finest-rank CE; with more ranks the coarser ones "
                   "share w equally." + (" Not used by HXE: α sets the rank weights." if preset == "hxe" else ""))
    c2.number_input("HXE α", 0.0, 100.0, step=0.05, key="tr_hxe_alpha", disabled=preset != "hxe", format="%g",
                    help="LOSS.HXE_ALPHA: a node at depth d weighs exp(-α d); 0 = plain finest-rank CE, larger "
                         "= more weight on the coarse ranks.")
    c3.number_input("Soft-label β", 0.0, 1000.0, step=1.0, key="tr_soft_beta", disabled=preset != "soft",
                    format="%g", help="LOSS.SOFT_LABELS_BETA: target of class c ∝ exp(-β x LCA height of the true "
                                      "class and c); larger = closer to one-hot.")
    c1, c2 = st.columns(2)
    c1.number_input("Label smoothing ε", 0.0, 0.99, step=0.05, key="tr_ls", disabled=preset == "soft",
                    format="%g", help="LOSS.LABEL_SMOOTHING: the target mass moved off the true class "
                                      "(0 = one-hot)." + (" Off with soft labels." if preset == "soft" else ""))
    c2.radio("Smoothing over", ["uniform", "taxonomy"], key="tr_smoothing", horizontal=True,
             disabled=preset == "soft",
             help="LOSS.SMOOTHING: ε spread evenly over the other classes, or more of it to taxonomic neighbours.")
    c1, c2 = st.columns(2)
    c1.radio("Head", ["independent", "marginal"], key="tr_head", horizontal=True, disabled=preset == "hxe",
             help="independent: one softmax per rank. marginal: one softmax over the finest rank; coarser "
                  "ranks are sums over their descendants (always consistent)."
                  + (" HXE needs the marginal head." if preset == "hxe" else ""))
    c2.radio("Class weights", ["none", "balanced"], key="tr_cw", horizontal=True,
             help="balanced: n / (K x count) per class over labelled samples.")
    if preset == "hxe":
        st.caption("HXE is defined on one distribution over the finest rank: the run uses the marginal head.")


def recipe_widgets() -> None:
    """The training recipe (TRAIN.LR_SCHEDULE, WARMUP_EPOCHS, LR_STEPS, LR_GAMMA, CLIP_GRAD_NORM, ACCUMULATE)."""
    with st.expander("Recipe: LR schedule, warmup, clipping, accumulation"):
        step = ss.tr_lr_schedule == "step"
        c1, c2, c3 = st.columns(3)
        c1.selectbox("LR schedule", ["constant", "cosine", "step"], key="tr_lr_schedule",
                     help="TRAIN.LR_SCHEDULE: constant LR; cosine decay to 0 at the last epoch (after warmup); or "
                          "x γ at each LR step.")
        c2.text_input("LR steps (epochs)", key="tr_lr_steps", disabled=not step, placeholder="e.g. 10, 15",
                      help="TRAIN.LR_STEPS (step schedule only): increasing, comma-separated epochs at which the LR "
                           "is multiplied by γ.")
        c3.number_input("LR γ", 0.0, 1.0, step=0.05, key="tr_lr_gamma", disabled=not step, format="%g",
                        help="TRAIN.LR_GAMMA (step schedule only): the factor applied at each LR step.")
        c1, c2, c3 = st.columns(3)
        c1.number_input("Warmup epochs", 0.0, 10_000.0, step=0.5, key="tr_warmup", format="%g",
                        help="TRAIN.WARMUP_EPOCHS: the LR rises linearly from 0 over this many epochs (fractions "
                             "allowed; 0 = off).")
        c2.number_input("Accumulate batches", 1, 4096, step=1, key="tr_accumulate",
                        help="TRAIN.ACCUMULATE: batches averaged into one optimizer step (effective batch = batch "
                             "size x this).")
        c3.toggle("Clipping", key="tr_clip_on",
                  help="TRAIN.CLIP_GRAD_NORM: off, or rescale the gradient to at most this global L2 norm.")
        c3.number_input("Max gradient norm", 0.0, 1e6, step=0.5, key="tr_clip", disabled=not ss.tr_clip_on,
                        format="%g", help="The global L2 norm the gradient is clipped to before each step.")


# ---------------------------------------------------------------------- configure
st.title("Train")
data = sh.data_section()
st.caption(f"Dataset: **{sh.describe_data(data)}** (change it on the Data page). A run trains in its own "
           "process and writes every epoch to the run store; this page only reads the store.")

with st.container(border=True):
    left, right = st.columns([1.15, 1], gap="large")
    with left:
        st.subheader("Loss and model", divider="gray")
        loss_widgets()
        st.subheader("Optimisation", divider="gray")
        c1, c2, c3, c4 = st.columns(4)
        c1.number_input("Epochs", 1, 10_000, step=1, key="tr_epochs")
        c2.select_slider("Batch size", choices(BATCH_CHOICES, ss.tr_bs), key="tr_bs")
        c3.select_slider("Learning rate", choices(LR_CHOICES, ss.tr_lr), key="tr_lr", format_func=lambda v: f"{v:g}")
        c4.number_input("Seed", 0, 1_000_000, step=1, key="tr_seed")
        recipe_widgets()
        if is_image_data(data):
            image_backbone_widgets()
        elif sh.is_set_data(data):
            set_backbone_widgets(data)
        with st.expander("Model, name and tracking"):
            c1, c2, c3 = st.columns(3)
            images = is_image_data(data)  # an image backbone feeds the heads directly: no MLP layers, no dropout
            c1.text_input("Hidden layer sizes", key="tr_hidden", disabled=images,
                          help="MLP widths, comma-separated." + (" Not used by image backbones." if images else ""))
            c2.slider("Dropout", 0.0, 0.9, step=0.05, key="tr_dropout", disabled=images,
                      help="Not used by image backbones." if images else None)
            c3.select_slider("Weight decay", choices([0.0, 1e-5, 1e-4, 1e-3, 1e-2], ss.tr_wd), key="tr_wd",
                             format_func=lambda v: f"{v:g}")
            c1, c2, c3 = st.columns(3)
            c1.text_input("Run name", key="tr_name", placeholder="run id", help="Optional; the run id by default.")
            c2.toggle("W&B logging", key="tr_wandb",
                      help="Also log to Weights & Biases (an extra sink; the run store always has everything).")
            c3.selectbox("W&B mode", ["offline", "online"], key="tr_wandb_mode", disabled=not ss.tr_wandb)
    with right:
        st.subheader("Null-label masking", divider="gray")
        c1, c2 = st.columns(2)
        c1.toggle("Phase 1", key="tr_phase1",
                  help="Null labels never count (TRAIN.PHASE1_MASK_NULL_LOSS): null-labelled elements are left "
                       "out of the loss; the schedule is not consulted. Continue as phase 2 later to bring them in.")
        c2.toggle("Null schedule", key="tr_mask_on", disabled=ss.tr_phase1,
                  help="On: null labels count with probability p(t), the ramp below. Off: every null label "
                       "counts (p = 1).")
        off = ss.tr_phase1 or not ss.tr_mask_on
        c1, c2 = st.columns(2)
        c1.slider("Start probability", 0.0, 1.0, step=0.05, key="tr_p0", disabled=off)
        c2.slider("End probability", 0.0, 1.0, step=0.05, key="tr_p1", disabled=off)
        ramp_help = ("In epochs trained: the ramp runs from t = start to t = end, so an end of 10 means the "
                     "ramp is over after the 10th epoch.")
        c1.number_input("Ramp start (epoch)", 0, 10_000, step=1, key="tr_e0", disabled=off, help=ramp_help)
        c2.number_input("Ramp end (epoch)", 0, 10_000, step=1, key="tr_e1", disabled=off, help=ramp_help)
        try:
            if ss.tr_phase1:
                schedule = NullMaskSchedule(True, 0.0, 0.0, 0, 0)
            else:
                schedule = NullMaskSchedule(bool(ss.tr_mask_on), float(ss.tr_p0), float(ss.tr_p1),
                                            float(ss.tr_e0), float(ss.tr_e1))
            st.plotly_chart(plots.schedule_preview(schedule, int(ss.tr_epochs)), key="schedule_preview")
            st.caption("Probability that a null (missing) label counts in the training loss, per batch; "
                       "phase 1 is p = 0 throughout.")
        except ValueError as e:  # ScheduleError: start epoch after end epoch, ...
            st.error(sh.md_escape(e))

    # the form's config, validated as a whole (Config's own rules: LR steps for step, HXE on the marginal head,
    # ...); a problem is shown beside Start, and Start refuses the same config with the same message
    try:
        resolved, problem = form_config(), None
    except ConfigError as e:
        resolved, problem = None, e
    where_widgets()
    c1, c2 = st.columns([1, 4], vertical_alignment="center")
    c1.button("Start run", type="primary", icon=":material/play_arrow:", on_click=start_run, key="tr_start",
              width="stretch", disabled=set_backbone_refusal(data) is not None)
    with c2:
        if problem is not None:
            st.error(sh.md_escape(problem), icon=":material/error:")
        with st.expander("Resolved config (YAML)"):
            if resolved is not None:
                st.code(resolved.to_yaml(), language="yaml")
            else:
                st.caption("No valid config yet: see the error above.")

flash = ss.pop("tr_flash", None)
if flash:
    getattr(st, flash[0])(flash[1])


# ---------------------------------------------------------------------- watch
st.header("Watch a run")
store = sh.get_store()
runs = store.runs()
if not runs.empty and reconcile(store, list(runs.loc[runs["status"].isin(ACTIVE), "id"])):
    runs = store.runs()  # a dead process was marked failed
if runs.empty:
    st.info("No runs yet. Press **Start run** above.")
    st.stop()

ids = list(runs["id"])
labels = {r["id"]: sh.run_label(r) for r in runs.to_dict("records")}
if ss.get("tr_watch") not in ids:
    wanted = st.query_params.get("run")
    ss.tr_watch = wanted if wanted in ids else ids[0]
run_id = st.selectbox("Run", ids, format_func=labels.get, key="tr_watch")
st.query_params["run"] = run_id
run = store.run(run_id)
is_active = run["status"] in ACTIVE

if run["status"] in ("finished", "stopped") and checkpoint_path(store, run_id).is_file():
    with st.expander("Continue as phase 2", icon=":material/fast_forward:"):
        st.caption("A new run starts from this run's weights with null labels brought back in by a ramp "
                   "(TRAIN.INIT_FROM = this run, PHASE1_MASK_NULL_LOSS off). The store records the parent.")
        parent_train = run["config"].get("TRAIN", {})
        c1, c2, c3, c4, c5 = st.columns(5)
        c1.number_input("Epochs", 1, 10_000, int(parent_train.get("EPOCHS", 10)), key="p2_epochs",
                        help="Epochs of the phase-2 run.")
        c2.select_slider("Learning rate", LR_CHOICES, value=min(LR_CHOICES, key=lambda v: abs(v - float(parent_train.get("LR", 1e-3)))),
                         key="p2_lr", format_func=lambda v: f"{v:g}")
        c3.slider("Start p", 0.0, 1.0, 0.0, 0.05, key="p2_p0",
                  help="Probability that a null label counts in the loss at the start of phase 2.")
        c4.slider("End p", 0.0, 1.0, 1.0, 0.05, key="p2_p1", help="... and at the end of the ramp.")
        c5.number_input("Ramp end (epoch)", 0, 10_000, max(int(parent_train.get("EPOCHS", 10)) // 2, 1), key="p2_e1",
                        help="Phase-2 epochs until the end probability is reached.")
        st.button("Continue as phase 2", icon=":material/fast_forward:", on_click=start_phase2, args=(run_id,),
                  key="tr_phase2")
if run["status"] in RESUMABLE:
    has_ckpt = checkpoint_path(store, run_id).is_file()
    st.button("Resume this run", icon=":material/restart_alt:", on_click=resume, args=(run_id,), key="tr_resume",
              help=("Continue from the last checkpoint, in the same run, up to its configured epochs." if has_ckpt
                    else "No checkpoint was saved: the run starts again from its first epoch."))


@st.cache_resource(max_entries=16, show_spinner=False)
def run_view(store_path: str, run_id: str, version: tuple):
    """A run's per-epoch metrics and figures, rebuilt only when the run's row changed (``version``).

    The live panel reruns every second; with nothing new in the store it reuses these (read-only).
    """
    store = sh.store_at(store_path)
    wide = store.metrics_wide([run_id])
    ranks = store.run_ranks(run_id)
    if wide.empty:
        return wide, ranks, {}
    wide = wide.sort_values("epoch").reset_index(drop=True)
    figures = {"chain": plots.chain_vs_partial(wide), "loss": plots.loss_curves(wide, ranks),
               "rank": plots.rank_accuracy(wide, ranks)}
    return wide, ranks, figures


@st.cache_resource(max_entries=32, show_spinner=False)
def tau_view(store_path: str, run_id: str, epoch: int, version: tuple, ranks: tuple, best: tuple):
    """The threshold curves of one stored (0-based) epoch and the best-τ table; ``(None, None)`` without curves."""
    curves = sh.store_at(store_path).curves(run_id, epoch=epoch)
    if curves.empty:
        return None, None
    table = plots.best_tau_table(curves, list(ranks))
    return plots.threshold_curves(curves, dict(best), ranks=list(ranks)), table


DELTA_VS = "vs previous epoch"
TAU_TABLE_COLUMNS = {  # st.column_config per best_tau_table column; others are shown as they are
    "rank": st.column_config.TextColumn("rank"),
    "by": st.column_config.TextColumn("best by", help="The curve whose maximum picks τ."),
    "tau": st.column_config.NumberColumn("best τ", format="%.2f"),
    **{name: st.column_config.NumberColumn(label, format="%.3f") for name, label in plots.CURVE_LABELS.items()},
}


def live_panel(run_id: str, active: bool) -> None:
    """The run's status and charts, re-read from the store every second while the run is active."""

    @st.fragment(run_every=sh.LIVE_REFRESH_S if active else None)
    def panel() -> None:
        store = sh.get_store()
        if active:
            reconcile(store, [run_id])
        run = store.run(run_id)
        if active and run["status"] not in ACTIVE:
            st.rerun()  # the run ended: redraw the page once (stops this timer, shows phase-2 controls)
        config = run["config"]
        epochs = int(config.get("TRAIN", {}).get("EPOCHS", 1))
        version = (run["epochs_done"], run["updated"], run["status"])
        wide, ranks, figures = run_view(str(store.path), run_id, version)

        head, stop = st.columns([5, 1], vertical_alignment="center")
        parent = f" · phase 2 of `{run['parent_id']}`" if run.get("parent_id") else ""
        age = time.time() - float(run["updated"])
        head.markdown(f"{sh.status_badge(run['status'])} **{sh.md_escape(run['name'])}** `{run_id}`{parent} · "
                      f"{sh.describe_data(config['DATA'])} · updated {age:,.0f} s ago")
        if run["status"] in ACTIVE:
            stop.button("Stop", icon=":material/stop_circle:", key="tr_stop", on_click=request_stop, args=(run_id,),
                        disabled=bool(run.get("stop_requested")), width="stretch",
                        help="Stops after the current epoch (the checkpoint is kept).")
        if run["status"] in ACTIVE and run.get("stop_requested"):
            st.caption(":material/stop_circle: Stop requested: the run stops after its current epoch.")
        done = int(run.get("epochs_done") or 0)
        st.progress(min(done / max(epochs, 1), 1.0), text=f"epoch {done} / {epochs}")

        if run["status"] == "failed" and run.get("error"):
            st.error("The run failed:", icon=":material/error:")
            st.code("\n".join(str(run["error"]).rstrip().splitlines()[-60:]), language=None)
        health = run.get("health")
        if health:
            import json

            for check, message in json.loads(health).items():
                st.warning(sh.md_escape(explain(check, message)), icon=":material/warning:")

        if wide.empty:
            if run["status"] in ACTIVE:
                st.info("Waiting for the first epoch (the process loads data and builds the model)...",
                        icon=":material/hourglass_top:")
            tail = log_tail(store, run_id, 15)
            if tail:
                with st.expander("Process log"):
                    st.code(tail, language=None)
            return
        last = wide.iloc[-1]
        prev = wide.iloc[-2] if len(wide) > 1 else None

        def metric(col, label, key, digits=3, unit="", help="", colour="normal"):
            """The latest epoch's value; the arrow is the change vs the previous epoch, shown only when it
            is non-zero at the displayed precision. ``colour``: "normal" (up is good), "inverse" (losses,
            times: up is bad), "off" (neither)."""
            value = last.get(key)
            help = f"{help} The arrow: change {DELTA_VS}.".strip()
            if value is None or value != value:
                col.metric(label, "–", help=help)
                return
            before = None if prev is None else prev.get(key)
            change = None if before is None or before != before else float(value) - float(before)
            delta = None if change is None or round(change, digits) == 0 else f"{change:+.{digits}f}{unit}"
            col.metric(label, f"{value:.{digits}f}{unit}", delta, help=help, delta_color=colour,
                       delta_description=DELTA_VS if delta else None)

        st.caption(f"At epoch {int(plots.display_epoch(last['epoch']))} of {epochs}.")
        cols = st.columns(5)
        metric(cols[0], "val partial-chain acc", N.VAL_PARTIAL_CHAIN_ACC, help=sh.METRIC_HELP["partial"])
        metric(cols[1], "val chain acc", N.VAL_CHAIN_ACC, help=sh.METRIC_HELP["chain"])
        metric(cols[2], "val loss", N.VAL_LOSS, colour="inverse")
        metric(cols[3], "null inclusion p", N.NULL_INCLUSION_PROB, 2, colour="off",
               help="Mean probability over the epoch's batches that a null label counted in the loss.")
        metric(cols[4], "epoch time", N.EPOCH_SECONDS, 2, " s", colour="inverse")

        c1, c2 = st.columns(2)
        with c1:
            st.plotly_chart(figures["chain"], key="live_chain")
        with c2:
            st.plotly_chart(figures["loss"], key="live_loss")
        st.caption(f"{sh.METRIC_HELP['chain']} {sh.METRIC_HELP['partial']} Train curves (dashed) are measured "
                   "on the training batches as they are trained on.")
        c1, c2 = st.columns([1, 1.6])
        with c1:
            st.plotly_chart(figures["rank"], key="live_rank")
            st.caption(sh.METRIC_HELP["rank"])
        with c2:
            # the slider shows 1-based epochs (as the charts and the progress bar); the store's are 0-based
            latest = int(plots.display_epoch(last["epoch"]))
            shown = latest
            if len(wide) > 1:
                shown = st.slider("Threshold curves at epoch", int(plots.display_epoch(wide["epoch"].min())), latest,
                                  latest, help="Follows the latest epoch while the run is live.")
            stored = shown - plots.EPOCH_OFFSET
            row = wide[wide["epoch"] == stored].iloc[0]
            best = tuple((r, float(row[N.best_tau(r)])) for r in ranks if N.best_tau(r) in row)
            fig, table = tau_view(str(store.path), run_id, stored, version, tuple(ranks), best)
            if fig is None:
                st.info(f"No threshold curves stored for epoch {shown}.")
            else:
                st.plotly_chart(fig, key="live_tau")
                st.caption(sh.METRIC_HELP["threshold"])
                st.markdown(f"**Best threshold per rank**, epoch {shown}")
                first = ["rank", "tau", "accuracy", "coverage", "selective_accuracy"]
                order = [c for c in first if c in table] + [c for c in table if c not in first and c != "by"]
                if table["by"].nunique() > 1:  # a multi-label rank picks τ by micro-F1: say which curve
                    order.append("by")
                st.dataframe(table, hide_index=True, key="live_tau_table", column_config=TAU_TABLE_COLUMNS,
                             column_order=order)
        if run["status"] not in ACTIVE:  # test is evaluated once, when the run has ended
            st.subheader("Test", divider="gray")
            if ev.test_numbers(store, run_id, "tr_ev"):
                st.caption("Confusions per rank and the predictions table: the Runs page, under Evaluate a run.")

    panel()


live_panel(run_id, is_active)
