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

from workbench.config import Config, ConfigError, DataConfig
from workbench.launch import default_store_path
from workbench.store import RunStore

MAX_UPLOAD_MB = 50
UPLOAD_TYPES = ("csv", "tsv", "parquet", "pq")
LIVE_REFRESH_S = 1.0

# a dataset and model that train in ~10 s on 2 CPU cores (30 epochs x ~0.15 s, plus ~5 s start-up)
DEFAULT_DATA: dict[str, Any] = {
    "NAME": "synthetic", "VAL_FRACTION": 0.2, "SEED": 0,
    "SYNTHETIC": {"N": 4000, "BRANCHING": [3, 3, 3], "NUM_FEATURES": 16, "NOISE": 1.0,
                  "NULL_RATES": [0.0, 0.1, 0.3], "IMBALANCE": 0.0},
}
DEFAULT_MODEL: dict[str, Any] = {"BACKBONE": "mlp", "HIDDEN": [128, 64], "HEAD": "independent", "DROPOUT": 0.1}
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


def run_label(run: dict) -> str:
    """``<id> · <name>`` (plain text: select boxes do not render icons; the status is shown beside)."""
    name = run.get("name") or run["id"]
    return run["id"] if name == run["id"] else f"{run['id']} · {name}"


# ---------------------------------------------------------------------- session state
# value widgets whose state survives page switches (never buttons, uploaders or table selections:
# Streamlit refuses to have their state set)
PERSIST_KEYS = (
    "d_source", "d_name", "d_n", "d_branching", "d_features", "d_noise", "d_nulls", "d_imbalance", "d_seed",
    "d_val", "d_ranks_builtin", "d_ranks", "d_feats", "d_weight", "d_nullvals", "d_count_rank",
    "tr_w", "tr_head", "tr_cw", "tr_mask_on", "tr_p0", "tr_p1", "tr_e0", "tr_e1", "tr_phase1", "tr_epochs",
    "tr_bs", "tr_lr", "tr_seed", "tr_wandb", "tr_wandb_mode", "tr_wandb_project", "tr_name", "tr_hidden",
    "tr_dropout", "tr_wd", "tr_watch",
    "ru_status", "ru_data", "ru_search", "ru_key", "ru_smooth", "ru_group", "ru_color", "ru_view", "ru_x",
    "ru_split",
)


def keep(*keys: str) -> None:
    """Keep widget values across page switches (Streamlit drops the state of unrendered widgets)."""
    for k in keys or PERSIST_KEYS:
        if k in st.session_state:
            st.session_state[k] = st.session_state[k]


def init(key: str, value: Any) -> None:
    """A widget's first value (the widget is then created with ``key`` only, no default argument)."""
    if key not in st.session_state:
        st.session_state[key] = value


def data_section() -> dict:
    """The ``DATA`` section chosen on the Data page (the default synthetic set until then)."""
    return json.loads(json.dumps(st.session_state.get("data_cfg") or DEFAULT_DATA))


def set_data_section(data: dict) -> None:
    st.session_state["data_cfg"] = data


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


def build_config(data: dict, model: dict, loss: dict, train: dict, schedule: dict, tracking: dict) -> Config:
    """Validate the form's sections as one :class:`Config` (``ConfigError`` names the bad key)."""
    return Config.from_dict({"DATA": data, "MODEL": model, "LOSS": loss, "TRAIN": train,
                             "SCHEDULE": {"NULL_MASKING": schedule}, "TRACKING": tracking}, source="form")


# ---------------------------------------------------------------------- data
def dataset_key(data: dict) -> str:
    """A cache key for a ``DATA`` section; a file's size and mtime are part of it."""
    key = dict(data)
    if data.get("NAME") == "file" and data.get("PATH") and Path(data["PATH"]).is_file():
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


def safe_upload_path(upload_dir: Path, filename: str, content: bytes) -> Path:
    """Where to save an upload: ``<upload_dir>/<content hash>-<sanitised name>``, always inside ``upload_dir``.

    The name keeps only letters, digits, ``.``, ``_`` and ``-`` of its last path component (no
    ``..``, no separators, no leading dot); the suffix must be one of :data:`UPLOAD_TYPES`.
    """
    from workbench.data import DataError

    base = re.split(r"[\\/]", str(filename))[-1]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip("._-")[:100] or "upload"
    suffix = Path(safe).suffix.lower().lstrip(".")
    if suffix not in UPLOAD_TYPES:
        raise DataError(f"{base}: unsupported file type {('.' + suffix) if suffix else '(none)'}; "
                        f"expected one of {', '.join('.' + t for t in UPLOAD_TYPES)}")
    digest = hashlib.sha256(content).hexdigest()[:10]
    root = Path(upload_dir).resolve()
    path = (root / f"{digest}-{safe}").resolve()
    if path.parent != root:  # cannot happen after sanitising; an invariant, not input validation
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


@st.cache_data(show_spinner=False, max_entries=8)
def read_columns(path: str, size: int, mtime: int):
    """The table at ``path`` (cached by size and mtime), read with the library's reader."""
    from workbench.data import read_table

    return read_table(path)


# ---------------------------------------------------------------------- runs
DEFAULT_RANKS = {"ratdat": ["taxa", "genus", "species"], "olive": ["region", "area"]}


def run_ranks(config: dict, columns=()) -> list[str]:
    """A run's ranks, coarse to fine, from its config (or, failing that, its metric keys)."""
    data = config.get("DATA", {})
    if data.get("RANKS"):
        return list(data["RANKS"])
    if data.get("NAME") == "synthetic":
        return [f"level{r}" for r in range(len(data.get("SYNTHETIC", {}).get("BRANCHING", [3, 3, 3])))]
    if data.get("NAME") in DEFAULT_RANKS:
        return DEFAULT_RANKS[data["NAME"]]
    return [c.split("/", 2)[2] for c in columns if str(c).startswith("val/acc/")]


def describe_data(data: dict) -> str:
    """One line about a ``DATA`` section, e.g. ``synthetic: N=20000, branching 3-3-3, null rates 0/0.1/0.3``."""
    if data["NAME"] == "synthetic":
        s = {**DEFAULT_DATA["SYNTHETIC"], **data.get("SYNTHETIC", {})}
        return (f"synthetic: N={s['N']:,}, branching {'-'.join(map(str, s['BRANCHING']))}, "
                f"null rates {'/'.join(f'{v:g}' for v in s['NULL_RATES'])}")
    if data["NAME"] == "file":
        return f"file {Path(data['PATH']).name}: ranks {' > '.join(data.get('RANKS') or [])}"
    return f"{data['NAME']}: ranks {' > '.join(data.get('RANKS') or DEFAULT_RANKS.get(data['NAME'], []))}"
