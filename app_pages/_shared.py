"""Helpers shared by the dashboard pages: the store, the dataset choice, defaults, uploads.

Pages stay thin: they build a :class:`Config`, call the library (``workbench.launch``, the store's
readers, ``workbench.plots``) and lay out the result. The underscore keeps this module out of the
page list.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import streamlit as st

from workbench.config import Config, ConfigError, DataConfig, LossConfig, TrainConfig
from workbench.launch import default_store_path
from workbench.store import RunStore

MAX_UPLOAD_MB = 50
UPLOAD_TYPES = ("csv", "tsv", "txt", "parquet", "pq")
LIVE_REFRESH_S = 1.0

# a dataset and model that train in ~10 s on 2 CPU cores (30 epochs x ~0.15 s, plus ~5 s start-up)
DEFAULT_DATA: dict[str, Any] = {
    "NAME": "synthetic", "VAL_FRACTION": 0.2, "SEED": 0,
    "SYNTHETIC": {"N": 4000, "BRANCHING": [3, 3, 3], "NUM_FEATURES": 16, "NOISE": 1.0,
                  "NULL_RATES": [0.0, 0.1, 0.3], "IMBALANCE": 0.0},
}
DEFAULT_MODEL: dict[str, Any] = {"BACKBONE": "mlp", "HIDDEN": [128, 64], "HEAD": "independent", "DROPOUT": 0.1}
# DATA.NAMEs whose samples are images (the Train page offers the image backbones for these)
IMAGE_SOURCES = ("images", "animal_mnist")
from workbench.names import IMAGE_BACKBONES  # noqa: E402 (one home; offered for image data)
from workbench.names import SET_SOURCES  # noqa: E402,F401 (one home: built-in set data; DATA.GROUP_BY makes sets too)
SET_BACKBONES = ("set_attention", "mlp")  # offered for set data; mlp is refused there with the trainer's message
STATUS_COLOUR = {"queued": "gray", "running": "blue", "finished": "green", "failed": "red", "stopped": "orange"}
STATUS_ICON = {"queued": ":material/hourglass_top:", "running": ":material/play_arrow:",
               "finished": ":material/check_circle:", "failed": ":material/error:", "stopped": ":material/stop_circle:"}

METRIC_HELP = {
    "chain": "Chain accuracy: a sample counts as right only if every rank is right; a null (missing) "
             "target needs a null prediction.",
    "partial": "Partial-chain accuracy: over samples with at least one label, the fraction whose every "
               "labelled rank is right; null ranks are not scored. It does not punish a model for "
               "predicting a species where the label stops at genus.",
    "rank": "Accuracy per rank over samples labelled at that rank.",
    "threshold": "Per rank, the prediction is the most probable non-null class if its probability is "
                 ">= τ, else null (abstain). Coverage: labelled samples given a class. Selective "
                 "accuracy: correct among those. Accuracy (null-aware): prediction equals target over "
                 "all samples. Null false-positive rate: null-target samples given a class. ★ marks the "
                 "τ with the best null-aware accuracy.",
}


# ---------------------------------------------------------------------- store
def store_path() -> Path:
    return default_store_path()


def get_store() -> RunStore:
    """The dashboard's run store (``$WORKBENCH_STORE`` or ``runs/workbench.db``), created on first use."""
    return store_at(str(store_path().resolve()))


@st.cache_resource(show_spinner=False)
def store_at(path: str) -> RunStore:
    """The run store at ``path`` (one object per path and server process)."""
    return RunStore(path)


def status_badge(status: str) -> str:
    return f":{STATUS_COLOUR.get(status, 'gray')}-badge[{STATUS_ICON.get(status, '')} {status}]"


# What can give text a meaning in Streamlit's Markdown, escaped by md_escape. Anywhere: brackets
# (links, images, ``:red[...]`` directives), HTML and autolinks, code, emphasis, tables, LaTeX,
# strikethrough, entities, e-mail autolinks. A ``:`` only before a word or ``/`` (``:material/x:``,
# emoji shortcodes, ``http://``), the dot of ``www.`` (GFM autolinks), ``_`` only where it can
# delimit emphasis (not inside ``my_file``). At a line start: headings, quotes, lists, rules.
# Everything else stays as typed, so messages read the same in the page source and in tests.
_MD_ANYWHERE = re.compile(r"[\\`*{}\[\]<>|~$&@]|:(?=[\w/])|(?<=www)\.|(?<![^\W_])_|_(?![^\W_])", re.IGNORECASE)
_MD_LINE_START = re.compile(r"^(\s*)([#>+=-]|\d+(?=[.)]))", re.MULTILINE)


def md_escape(text: Any) -> str:
    """``text`` made literal inside Markdown (st.markdown, st.caption, st.error, ...).

    Every value a user or a file controls (run names, errors, file names, config values) goes
    through this before it is interpolated: a run named ``![x](http://host/p.png)`` must show those
    characters, not make every viewer's browser fetch an image. Line breaks stay line breaks.
    """
    text = str(text).replace("\r\n", "\n")
    text = _MD_ANYWHERE.sub(lambda m: "\\" + m.group(0), text)
    text = _MD_LINE_START.sub(lambda m: m.group(1) + ("\\" + m.group(2) if not m.group(2)[0].isdigit()
                                                       else m.group(2) + "\\"), text)
    return text.replace("\n", "  \n")


def run_label(run: dict) -> str:
    """``<id> · <name>`` (plain text: select boxes do not render icons; the status is shown beside)."""
    name = run.get("name") or run["id"]
    return run["id"] if name == run["id"] else f"{run['id']} · {name}"


# ---------------------------------------------------------------------- session state
# value widgets whose state survives page switches (never buttons, uploaders or table selections:
# Streamlit refuses to have their state set)
RAY_ADDRESS_KEY = "ray_address"  # the sidebar's Ray cluster address: where the Train page sends cluster runs
CLUSTER_KEYS = ("tr_where", "tr_workers", "tr_cpw", "tr_gpw")  # the Train page's local / cluster choice
PERSIST_KEYS = (
    RAY_ADDRESS_KEY, *CLUSTER_KEYS,
    "d_source", "d_name", "d_n", "d_branching", "d_features", "d_noise", "d_nulls", "d_imbalance", "d_seed",
    "d_val", "d_ranks_builtin", "d_ranks", "d_feats", "d_weight", "d_nullvals", "d_count_rank", "d_count_log",
    "tr_w", "tr_head", "tr_cw", "tr_mask_on", "tr_p0", "tr_p1", "tr_e0", "tr_e1", "tr_phase1", "tr_epochs",
    "tr_bs", "tr_lr", "tr_seed", "tr_wandb", "tr_wandb_mode", "tr_wandb_project", "tr_name", "tr_hidden",
    "tr_dropout", "tr_wd", "tr_watch", "tr_img_backbone", "tr_width", "tr_depth", "tr_arch", "tr_freeze",
    "tr_pretrained", "tr_set_backbone", "tr_pool",
    # the recipe and the loss preset (issue 18)
    "tr_lr_schedule", "tr_warmup", "tr_lr_steps", "tr_lr_gamma", "tr_clip_on", "tr_clip", "tr_accumulate",
    "tr_loss_preset", "tr_hxe_alpha", "tr_soft_beta", "tr_ls", "tr_smoothing",
    "ru_status", "ru_data", "ru_search", "ru_key", "ru_smooth", "ru_group", "ru_color", "ru_view", "ru_x",
    "ru_split", "ru_split_by", "ru_continue", "ru_summary", "ru_filter", "ru_tag_filter", "ru_show_archived",
    "ru_band", "ru_thresh_rank", "ru_thresh_epoch", "ru_live",
    "d_img_from", "d_img_path", "d_img_ranks", "d_img_size", "d_thumb_rank",
)


def keep(*keys: str) -> None:
    """Keep widget values across page switches (Streamlit drops the state of unrendered widgets).

    Called with no keys (by ``app.py``, at the start of every rerun) it also keeps the Train form
    and the chosen dataset across a reload of the browser tab (:func:`sync_ui_state`).
    """
    for k in keys or PERSIST_KEYS:
        if k in st.session_state:
            st.session_state[k] = st.session_state[k]
    if not keys:
        sync_ui_state()


def init(key: str, value: Any) -> None:
    """A widget's first value (the widget is then created with ``key`` only, no default argument)."""
    if key not in st.session_state:
        st.session_state[key] = value


def is_set_data(data: dict) -> bool:
    """Whether a ``DATA`` section gives sets ``(N, S, F)``: a built-in set dataset, or rows grouped by ``GROUP_BY``."""
    return data.get("NAME") in SET_SOURCES or bool(data.get("GROUP_BY"))


def data_section() -> dict:
    """The ``DATA`` section chosen on the Data page (the default synthetic set until then)."""
    return json.loads(json.dumps(st.session_state.get("data_cfg") or DEFAULT_DATA))


def set_data_section(data: dict) -> None:
    st.session_state["data_cfg"] = data
    save_ui_state()


# ---------------------------------------------------------------------- the form across reloads
# A reload of the tab starts a new Streamlit session with empty state. The Train form's values and the
# chosen DATA section are therefore also kept in <store dir>/ui_state.json (one file per store, shared
# by the tabs that use it: the last change wins) and read back when a session starts.
from workbench.names import UI_STATE_FILE  # noqa: E402 (one home: names.py)

# first values of widgets whose config key is null by default (the widget is off or disabled until chosen): a
# small HXE alpha, a moderate soft-label beta, max norm 1; starting points to edit, not recommendations
HXE_ALPHA_START = 0.1
SOFT_BETA_START = 10.0
CLIP_NORM_START = 1.0
LOSS_PRESETS = {"w": "w (coarse-rank weight)", "hxe": "HXE (α)", "soft": "Soft labels (β)"}
# the Train form's value widgets and their first values (every key the page's form_config reads);
# config_to_form fills the same keys from a run's config
FORM_DEFAULTS: dict[str, Any] = {
    "tr_w": 0.3, "tr_head": "independent", "tr_cw": "none", "tr_mask_on": True, "tr_p0": 0.0, "tr_p1": 1.0,
    "tr_e0": 0, "tr_e1": 10, "tr_phase1": False, "tr_epochs": 30, "tr_bs": 256, "tr_lr": 3e-3, "tr_seed": 0,
    "tr_wandb": False, "tr_wandb_mode": "offline", "tr_wandb_project": "workbench", "tr_name": "",
    "tr_hidden": ", ".join(map(str, DEFAULT_MODEL["HIDDEN"])), "tr_dropout": 0.1, "tr_wd": 1e-4,
    "tr_img_backbone": "resnet", "tr_width": 32, "tr_depth": 1, "tr_arch": "resnet18", "tr_freeze": False,
    "tr_pretrained": "", "tr_set_backbone": "set_attention", "tr_pool": "attention",
    # the training recipe: the config's own defaults, so an untouched form trains what it did before issue 18
    "tr_lr_schedule": TrainConfig.model_fields["LR_SCHEDULE"].default,
    "tr_warmup": float(TrainConfig.model_fields["WARMUP_EPOCHS"].default), "tr_lr_steps": "",
    "tr_lr_gamma": float(TrainConfig.model_fields["LR_GAMMA"].default),
    "tr_clip_on": TrainConfig.model_fields["CLIP_GRAD_NORM"].default is not None, "tr_clip": CLIP_NORM_START,
    "tr_accumulate": int(TrainConfig.model_fields["ACCUMULATE"].default),
    # the loss preset: w (LOSS.W's rank weights), hxe (LOSS.HXE_ALPHA) or soft (LOSS.SOFT_LABELS_BETA)
    "tr_loss_preset": "w", "tr_hxe_alpha": HXE_ALPHA_START, "tr_soft_beta": SOFT_BETA_START,
    "tr_ls": float(LossConfig.model_fields["LABEL_SMOOTHING"].default),
    "tr_smoothing": LossConfig.model_fields["SMOOTHING"].default,
}
FORM_KEYS = tuple(FORM_DEFAULTS)


def ui_state_path() -> Path:
    return store_path().parent / UI_STATE_FILE


def _ui_state() -> dict:
    ss = st.session_state
    return {"form": {k: ss[k] for k in FORM_KEYS if k in ss}, "data": ss.get("data_cfg")}


def save_ui_state() -> None:
    """Write the form and dataset to :func:`ui_state_path` when they changed since the last write."""
    state = json.dumps(_ui_state(), sort_keys=True)
    if st.session_state.get("_ui_saved") == state:
        return
    path = ui_state_path()
    st.session_state["_ui_saved"] = state  # also on failure: one notice, not one per rerun
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(state)
        tmp.replace(path)  # atomic: another tab never reads half a file
    except OSError as e:  # a read-only store folder: the pages still work, only a reload forgets the form
        st.toast(md_escape(f"Could not save the form to {path} ({e.strerror or e}); a reload of the tab will forget it."))


def sync_ui_state() -> None:
    """Once per session, restore the saved form and dataset (values already in the session win);
    then save what changed."""
    ss = st.session_state
    if "_ui_restored" not in ss:
        ss["_ui_restored"] = True
        path = ui_state_path()
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
                if not isinstance(saved, dict) or not isinstance(saved.get("form", {}), dict):
                    raise ValueError("expected {\"form\": {...}, \"data\": {...}}")
            except (OSError, ValueError) as e:  # a damaged file costs the saved form, never the page
                st.toast(md_escape(f"{path}: could not read the saved form ({e}); starting from the defaults"))
                saved = {}
            for key, value in (saved.get("form") or {}).items():
                if key in FORM_KEYS and key not in ss and isinstance(value, (bool, int, float, str)):
                    ss[key] = value
            if isinstance(saved.get("data"), dict) and not ss.get("data_cfg"):
                ss["data_cfg"] = saved["data"]
    save_ui_state()


def config_to_form(config: dict) -> dict[str, Any]:
    """The Train form's values (:data:`FORM_KEYS`) for a run's config: the inverse of the page's ``form_config``.

    A recipe or loss key a stored config lacks (a run from before issue 18) gets the config's default, so a
    loaded old run never keeps the recipe the form had before."""
    model, loss, train = config.get("MODEL", {}), config.get("LOSS", {}), config.get("TRAIN", {})
    recipe = {**TrainConfig().model_dump(), **train}
    targets = {**LossConfig().model_dump(), **loss}
    nm = config.get("SCHEDULE", {}).get("NULL_MASKING", {})
    tracking = config.get("TRACKING", {})
    wandb = tracking.get("WANDB", {})
    values = {
        "tr_w": loss.get("W"), "tr_head": model.get("HEAD"), "tr_cw": loss.get("CLASS_WEIGHTS"),
        "tr_mask_on": nm.get("ENABLED"), "tr_p0": nm.get("START_PROB"), "tr_p1": nm.get("END_PROB"),
        "tr_e0": None if nm.get("START_EPOCH") is None else int(nm["START_EPOCH"]),
        "tr_e1": None if nm.get("END_EPOCH") is None else int(nm["END_EPOCH"]),
        "tr_phase1": train.get("PHASE1_MASK_NULL_LOSS"), "tr_epochs": train.get("EPOCHS"),
        "tr_bs": train.get("BATCH_SIZE"), "tr_lr": train.get("LR"), "tr_seed": train.get("SEED"),
        "tr_wandb": wandb.get("ENABLED"), "tr_wandb_mode": wandb.get("MODE"), "tr_wandb_project": wandb.get("PROJECT"),
        "tr_name": "", "tr_dropout": model.get("DROPOUT"), "tr_wd": train.get("WEIGHT_DECAY"),
        "tr_hidden": None if model.get("HIDDEN") is None else ", ".join(map(str, model["HIDDEN"])),
        # a table run's config leaves the image widgets at their defaults (they are shown for image data only)
        "tr_img_backbone": model["BACKBONE"] if model.get("BACKBONE") in IMAGE_BACKBONES else FORM_DEFAULTS["tr_img_backbone"],
        "tr_width": model.get("WIDTH"), "tr_depth": model.get("DEPTH"),
        "tr_arch": model.get("ARCH") or FORM_DEFAULTS["tr_arch"], "tr_freeze": model.get("FREEZE_BACKBONE"),
        "tr_pretrained": model.get("PRETRAINED") or "",
        # a set run's backbone; other runs leave the set widgets at their defaults (shown for set data only)
        "tr_set_backbone": "set_attention" if model.get("BACKBONE") == "set_attention" else FORM_DEFAULTS["tr_set_backbone"],
        "tr_pool": model.get("POOL") or FORM_DEFAULTS["tr_pool"],
        # the recipe; a null CLIP_GRAD_NORM is the toggle off (the norm widget keeps its first value)
        "tr_lr_schedule": recipe["LR_SCHEDULE"], "tr_warmup": float(recipe["WARMUP_EPOCHS"]),
        "tr_lr_steps": format_numbers(recipe["LR_STEPS"] or []), "tr_lr_gamma": float(recipe["LR_GAMMA"]),
        "tr_clip_on": recipe["CLIP_GRAD_NORM"] is not None,
        "tr_clip": CLIP_NORM_START if recipe["CLIP_GRAD_NORM"] is None else float(recipe["CLIP_GRAD_NORM"]),
        "tr_accumulate": int(recipe["ACCUMULATE"]),
        # the loss preset: HXE_ALPHA wins over SOFT_LABELS_BETA (config_not_in_form names a config with both)
        "tr_loss_preset": loss_preset(targets),
        "tr_hxe_alpha": HXE_ALPHA_START if targets["HXE_ALPHA"] is None else float(targets["HXE_ALPHA"]),
        "tr_soft_beta": SOFT_BETA_START if targets["SOFT_LABELS_BETA"] is None else float(targets["SOFT_LABELS_BETA"]),
        "tr_ls": float(targets["LABEL_SMOOTHING"]), "tr_smoothing": targets["SMOOTHING"],
    }
    return {k: v for k, v in values.items() if v is not None}


def loss_preset(loss: dict) -> str:
    """The Train form's loss preset (a :data:`LOSS_PRESETS` key) of a config's ``LOSS`` section."""
    if loss.get("HXE_ALPHA") is not None:
        return "hxe"
    return "soft" if loss.get("SOFT_LABELS_BETA") is not None else "w"


# the config keys the Train form sets (config_to_form's sources); DATA is carried whole
FORM_CONFIG_KEYS = frozenset((
    "LOSS.W", "LOSS.CLASS_WEIGHTS", "MODEL.HEAD", "MODEL.HIDDEN", "MODEL.DROPOUT", "TRAIN.EPOCHS", "TRAIN.BATCH_SIZE",
    "TRAIN.LR", "TRAIN.WEIGHT_DECAY", "TRAIN.SEED", "TRAIN.PHASE1_MASK_NULL_LOSS", "SCHEDULE.NULL_MASKING.ENABLED",
    "SCHEDULE.NULL_MASKING.START_PROB", "SCHEDULE.NULL_MASKING.END_PROB", "SCHEDULE.NULL_MASKING.START_EPOCH",
    "SCHEDULE.NULL_MASKING.END_EPOCH", "MODEL.BACKBONE", "MODEL.WIDTH", "MODEL.DEPTH", "MODEL.ARCH",
    "MODEL.FREEZE_BACKBONE", "MODEL.PRETRAINED", "MODEL.POOL",
    "TRAIN.LR_SCHEDULE", "TRAIN.WARMUP_EPOCHS", "TRAIN.LR_STEPS", "TRAIN.LR_GAMMA", "TRAIN.CLIP_GRAD_NORM",
    "TRAIN.ACCUMULATE", "LOSS.LABEL_SMOOTHING", "LOSS.SMOOTHING", "LOSS.SOFT_LABELS_BETA", "LOSS.HXE_ALPHA",
))


def config_not_in_form(config: dict) -> list[str]:
    """``KEY=value`` for the settings of ``config`` that the Train form cannot carry (they differ from the
    defaults a form run gets, e.g. ``TRAIN.INIT_FROM`` of a phase-2 run or ``LOSS.RANK_WEIGHTS``)."""
    from workbench.config import flatten

    baseline = flatten(Config().with_overrides({f"MODEL.{k}": v for k, v in DEFAULT_MODEL.items()}).to_dict())
    left_out = [f"{k}={v}" for k, v in flatten(config).items()
                if k.split(".")[0] in ("MODEL", "LOSS", "TRAIN", "SCHEDULE") and k not in FORM_CONFIG_KEYS
                and v != baseline.get(k)]
    backbone = config.get("MODEL", {}).get("BACKBONE", "mlp")
    carried = ("mlp", *IMAGE_BACKBONES, *(SET_BACKBONES if is_set_data(config.get("DATA") or {}) else ()))
    if backbone not in carried:  # the form offers mlp for tables, IMAGE_BACKBONES for images, set_attention for sets
        left_out.insert(0, f"MODEL.BACKBONE={backbone}")
    loss = config.get("LOSS") or {}
    if loss.get("HXE_ALPHA") is not None and loss.get("SOFT_LABELS_BETA") is not None:
        # the form's loss preset is one of w, HXE and soft labels: it carries HXE (loss_preset) and drops beta
        left_out.append(f"LOSS.SOFT_LABELS_BETA={loss['SOFT_LABELS_BETA']}")
    return left_out


def load_config_into_form(config: dict) -> list[str]:
    """Put a run's config into the Train form and its DATA section on the Data page; returns
    :func:`config_not_in_form` (what the form leaves out, to tell the user).

    The Data page's widgets are dropped so that it re-reads them from the new DATA section.
    """
    ss = st.session_state
    for key, value in config_to_form(config).items():
        ss[key] = value
    uploaders = ("d_upload", "d_img_zip")  # Streamlit refuses to have an uploader's state touched
    for key in [k for k in ss if str(k).startswith("d_") and k not in uploaders]:
        del ss[key]
    set_data_section(json.loads(json.dumps(config["DATA"])))
    return config_not_in_form(config)


def parse_numbers(text: str, kind=float, what: str = "value") -> list:
    """``"3, 3, 3"`` -> ``[3, 3, 3]``; a :class:`ConfigError` names the bad entry."""
    out = []
    for part in [p.strip() for p in str(text).replace(";", ",").split(",") if p.strip()]:
        try:
            out.append(kind(part))
        except ValueError:
            raise ConfigError(f"{what}: {part!r} is not a valid {kind.__name__}; use comma-separated numbers") from None
    if not out:
        raise ConfigError(f"{what}: give at least one number")
    return out


def format_numbers(values) -> str:
    """``[10.0, 12.5]`` -> ``"10, 12.5"``: the text :func:`parse_numbers` reads back to the same numbers."""
    return ", ".join(f"{v:g}" if float(f"{v:g}") == v else repr(float(v)) for v in values)


def build_config(data: dict, model: dict, loss: dict, train: dict, schedule: dict, tracking: dict) -> Config:
    """Validate the form's sections as one :class:`Config` (``ConfigError`` names the bad key)."""
    return Config.from_dict({"DATA": data, "MODEL": model, "LOSS": loss, "TRAIN": train,
                             "SCHEDULE": {"NULL_MASKING": schedule}, "TRACKING": tracking}, source="form")


# ---------------------------------------------------------------------- data
def dataset_key(data: dict) -> str:
    """A cache key for a ``DATA`` section; a file's size and mtime are part of it."""
    key = dict(data)
    if data.get("NAME") in ("file", "images") and data.get("PATH") and Path(data["PATH"]).exists():
        # a table's or manifest's size and mtime; a folder tree's root mtime (changes when a class folder is
        # added or removed; the library's decode cache is keyed by the images' content anyway)
        stat = Path(data["PATH"]).stat()
        key["_file"] = [stat.st_size, stat.st_mtime_ns]
    return json.dumps(key, sort_keys=True)


def load_dataset(data: dict):
    """The dataset of a ``DATA`` section, cached; raises the library's ConfigError/DataError/TaxonomyError."""
    return _load_dataset(dataset_key(data))


@st.cache_resource(show_spinner="Loading dataset...", max_entries=4)
def _load_dataset(key: str):
    from workbench.data import load_dataset as load

    data = json.loads(key)
    data.pop("_file", None)
    try:
        cfg = DataConfig.model_validate(data)
    except Exception as e:  # pydantic's ValidationError -> the one error template
        from pydantic import ValidationError

        from workbench.config import format_validation_error

        if isinstance(e, ValidationError):
            raise ConfigError(format_validation_error(e, "DATA")) from None
        raise
    return load(cfg)


MAX_TREE_SCAN = 10_000  # files looked at by tree_depth before it answers


def tree_depth(root: Path) -> int:
    """How many folder levels below ``root`` hold files (the number of ranks a folder tree implies);
    hidden entries are skipped, and the walk stops after :data:`MAX_TREE_SCAN` files. At least 1."""
    import os

    depth, seen = 1, 0
    root = Path(root)
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files = [f for f in files if not f.startswith(".")]
        if files:
            depth = max(depth, len(Path(folder).relative_to(root).parts))
            seen += len(files)
            if seen >= MAX_TREE_SCAN:
                break
    return depth


@st.cache_resource(show_spinner="Drawing thumbnails...", max_entries=8)
def _thumbnail_grid(key: str, rank: str):
    from workbench.plots import thumbnail_grid

    return thumbnail_grid(_load_dataset(key), rank)


def thumbnail_grid(data: dict, rank: str):
    """:func:`workbench.plots.thumbnail_grid` of the dataset of the ``DATA`` section ``data`` at ``rank``,
    cached per dataset and rank."""
    return _thumbnail_grid(dataset_key(data), rank)


def safe_name(name: str) -> str:
    """One path component made safe: letters, digits, spaces, ``.``, ``_`` and ``-`` only (others become
    ``_``), no leading dot, dash or space (so never ``..`` or hidden), at most 100 characters."""
    return re.sub(r"[^A-Za-z0-9._ -]+", "_", str(name)).lstrip("._- ")[:100].rstrip() or "upload"


def safe_upload_path(upload_dir: Path, filename: str, content: bytes) -> Path:
    """Where to save an upload: ``<upload_dir>/<content hash>/<sanitised name>``, always inside ``upload_dir``.

    The hash lives in the folder only, so the file keeps the name the user gave it (shown on the
    pages, in the run table and in errors). The name keeps only letters, digits, spaces, ``.``,
    ``_`` and ``-`` of its last path component (no ``..``, no separators, no leading dot or
    space); the suffix must be one of :data:`UPLOAD_TYPES`.
    """
    from workbench.data import DataError

    base = re.split(r"[\\/]", str(filename))[-1]
    safe = safe_name(base)
    suffix = Path(safe).suffix.lower().lstrip(".")
    if suffix not in UPLOAD_TYPES:
        raise DataError(f"{base}: unsupported file type {('.' + suffix) if suffix else '(none)'}; "
                        f"expected one of {', '.join('.' + t for t in UPLOAD_TYPES)}")
    digest = hashlib.sha256(content).hexdigest()[:10]
    root = Path(upload_dir).resolve()
    path = (root / digest / safe).resolve()
    if path.parent.parent != root:  # cannot happen after sanitising; an invariant, not input validation
        raise DataError(f"{base}: refusing to write outside {root}")
    return path


def save_upload(upload_dir: Path, filename: str, content: bytes) -> Path:
    """Save an upload (size-checked) and return its path."""
    from workbench.data import DataError

    if len(content) > MAX_UPLOAD_MB * 1024 * 1024:
        raise DataError(f"{filename}: {len(content) / 2**20:.1f} MB is over the {MAX_UPLOAD_MB} MB upload limit")
    if not content:
        raise DataError(f"{filename}: file is empty")
    path = safe_upload_path(upload_dir, filename, content)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(content)
        tmp.replace(path)
    return path


MAX_UNZIPPED_MB = 1024  # a zip bomb stops here: the extracted tree may be at most this large
MAX_ZIP_MEMBERS = 200_000
ZIP_SKIPPED_FOLDERS = ("__MACOSX",)  # macOS resource forks: never images


def extract_zip_upload(upload_dir: Path, filename: str, content: bytes) -> Path:
    """Extract an uploaded zip of an image folder tree; returns the tree's root folder.

    The tree goes to ``<upload_dir>/<content hash>/<sanitised zip stem>/``, never anywhere else:
    a member with an absolute path, a drive letter or a ``..`` component, a symlink, or a name that
    two members share after sanitising is a :class:`DataError` naming the member, and nothing is
    written. Each path component is sanitised as upload names are (:func:`safe_name`); hidden
    members (a component starting with ``.``) and ``__MACOSX/`` are left out. A zip made from one
    folder (``zip -r animals.zip animals/``: every member under ``animals/``, the zip's own stem) has
    that folder removed, so the tree's first level is the coarsest rank. The upload limit
    (:data:`MAX_UPLOAD_MB`) applies to the zip; :data:`MAX_UNZIPPED_MB` to what it expands to.
    """
    import io
    import shutil
    import stat
    import zipfile

    from workbench.data import DataError

    base = re.split(r"[\\/]", str(filename))[-1]
    if len(content) > MAX_UPLOAD_MB * 1024 * 1024:
        raise DataError(f"{base}: {len(content) / 2**20:.1f} MB is over the {MAX_UPLOAD_MB} MB upload limit")
    if Path(base).suffix.lower() != ".zip":
        raise DataError(f"{base}: expected a .zip of a folder tree")
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile as e:
        raise DataError(f"{base}: not a readable zip file ({e})") from None
    members = archive.infolist()
    if len(members) > MAX_ZIP_MEMBERS:
        raise DataError(f"{base}: {len(members):,} members, more than the {MAX_ZIP_MEMBERS:,} allowed")
    total = sum(m.file_size for m in members)
    if total > MAX_UNZIPPED_MB * 1024 * 1024:
        raise DataError(f"{base}: expands to {total / 2**20:,.0f} MB, over the {MAX_UNZIPPED_MB} MB limit")
    stem = safe_name(Path(base).stem)
    plan: dict[tuple[str, ...], zipfile.ZipInfo] = {}  # sanitised relative path -> member
    for m in members:
        name = m.filename
        parts = [p for p in re.split(r"[\\/]", name) if p not in ("", ".")]
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise DataError(f"{base}: member {name!r} points outside the folder (absolute path or '..'); "
                            "refusing the whole zip")
        if stat.S_ISLNK(m.external_attr >> 16):
            raise DataError(f"{base}: member {name!r} is a symbolic link; links are not accepted")
        if m.is_dir() or not parts or parts[0] in ZIP_SKIPPED_FOLDERS or any(p.startswith(".") for p in parts):
            continue
        key = tuple(safe_name(p) for p in parts)
        if key in plan:
            raise DataError(f"{base}: members {plan[key].filename!r} and {name!r} have the same name after "
                            f"removing unsafe characters ({'/'.join(key)!r}); rename one")
        plan[key] = m
    if not plan:
        raise DataError(f"{base}: no files in the zip (hidden files and __MACOSX/ are left out)")
    if all(len(k) > 1 and k[0] == stem for k in plan):  # a zip of one folder: that folder is the root
        plan = {k[1:]: m for k, m in plan.items()}
    root = Path(upload_dir).resolve()
    dest = (root / hashlib.sha256(content).hexdigest()[:10] / stem).resolve()
    if dest.parent.parent != root:  # cannot happen after sanitising; an invariant, not input validation
        raise DataError(f"{base}: refusing to write outside {root}")
    if dest.is_dir():  # the same bytes were extracted before
        return dest
    tmp = dest.with_name(f".{stem}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for key, m in plan.items():
            target = tmp.joinpath(*key).resolve()
            if not target.is_relative_to(tmp.resolve()):  # invariant, as above
                raise DataError(f"{base}: member {m.filename!r} would be written outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)  # stops at the member's declared size (checked above)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as e:  # bad CRC, compression, encrypted
                raise DataError(f"{base}: member {m.filename!r} could not be extracted ({e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
        raise
    tmp.replace(dest)  # atomic: a page never sees a half-extracted tree
    return dest


@st.cache_data(show_spinner=False, max_entries=8)
def read_columns(path: str, size: int, mtime: int):
    """The table at ``path`` (cached by size and mtime), read with the library's reader."""
    from workbench.data import read_table

    return read_table(path)


DELIMITER_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "'|'"}


def delimiter_note(path: str | Path) -> str:
    """``", separated by semicolons (decimal commas)"`` for a sniffed .csv/.txt file, else ``""``."""
    from workbench.data import SNIFFED_SUFFIXES, sniff_csv

    if Path(path).suffix.lower() not in SNIFFED_SUFFIXES:
        return ""
    delimiter, decimal = sniff_csv(path)
    return f", separated by {DELIMITER_NAMES[delimiter]}" + (" (decimal commas)" if decimal == "," else "")


# ---------------------------------------------------------------------- runs
def split_report(ds, val_fraction: float, seed: int, test_fraction: float | None = None) -> tuple[str, list[str]]:
    """The train/val/test split a run on ``ds`` will use (the trainer's own :func:`split_dataset`; ``test_fraction``
    None = the config's default), as a one-line caption naming each part's size, and the data's warnings (the
    loader's and the split's, e.g. a fraction it could not honour or a fixed split used instead), so the Data
    page says what the CLI prints as ``warning:`` lines."""
    import warnings as _warnings

    from workbench.data import DataWarning, split_dataset

    if test_fraction is None:
        test_fraction = DataConfig.model_fields["TEST_FRACTION"].default
    with _warnings.catch_warnings():  # shown on the page, not in the server log
        _warnings.simplefilter("ignore", DataWarning)
        train, val, test = split_dataset(ds, val_fraction, test_fraction, seed)
    info = val.split or {}
    how = "fixed by the data's source" if info.get("fixed") else f"stratified by label path, seed {seed}"
    tested = f"{len(test):,} test" if test is not None else "no test"
    caption = (f"Split: {len(train):,} train / {len(val):,} val / {tested} ({info.get('val_fraction', 0):.1%} val, "
               f"{info.get('test_fraction', 0):.1%} test, {how}; asked {val_fraction:.0%} val, {test_fraction:.0%} test).")
    return caption, list(dict.fromkeys([*ds.warnings, *val.warnings]))


def describe_data(data: dict) -> str:
    """One line about a ``DATA`` section, e.g. ``synthetic: N=20000, branching 3-3-3, null rates 0/0.1/0.3``."""
    if data["NAME"] == "synthetic":
        s = {**DEFAULT_DATA["SYNTHETIC"], **data.get("SYNTHETIC", {})}
        return (f"synthetic: N={s['N']:,}, branching {'-'.join(map(str, s['BRANCHING']))}, "
                f"null rates {'/'.join(f'{v:g}' for v in s['NULL_RATES'])}")
    if data["NAME"] == "file":
        grouped = f", sets grouped by {data['GROUP_BY']}" if data.get("GROUP_BY") else ""
        return f"file {Path(data['PATH']).name}: ranks {' > '.join(data.get('RANKS') or [])}{grouped}"
    if data["NAME"] == "images":
        return f"images {Path(data['PATH']).name}: ranks {' > '.join(data.get('RANKS') or [])}"
    from workbench.data import BUILTIN_RANKS

    return f"{data['NAME']}: ranks {' > '.join(data.get('RANKS') or BUILTIN_RANKS.get(data['NAME'], ()))}"
