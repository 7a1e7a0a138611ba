"""One typed config (DESIGN.md section 4): YAML load/save, dotted overrides, one error template.

Every validation error reads like "`LOSS.W` must be in [0, 1], got 1.5": the key path, the rule,
the value received. Unknown keys are rejected with the list of allowed keys. Every float refuses NaN
and inf, numbers refuse booleans and flags refuse numbers. Config YAML (files and ``--set`` values) is
read within bounds (MAX_CONFIG_BYTES, MAX_YAML_VALUES after alias expansion, MAX_YAML_DEPTH) and a key
given twice in one mapping is an error, so no file hangs the loader or is silently half-read.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

# A config is a few kilobytes of YAML; these bounds refuse files that would hang or exhaust memory while
# loading (a "billion laughs" alias bomb expands 1 kB of aliases into 10^9 values) with a clear error.
MAX_CONFIG_BYTES = 1_000_000
MAX_YAML_VALUES = 100_000  # scalars + lists + mappings after alias expansion; a full config has ~60
MAX_YAML_DEPTH = 32  # nesting (after alias expansion); a config nests 4 deep
# torch.manual_seed takes 64 bits, numpy's legacy np.random.seed 32: a seed valid for every generator
MAX_SEED = 2**32 - 1
MAX_THREADS = 1024  # TRAIN.NUM_THREADS: torch starts that many threads; more than any machine has cores
MAX_SYNTHETIC_LEAVES = 100_000  # DATA.SYNTHETIC: classes at the finest rank (one mean vector each)
MAX_SYNTHETIC_VALUES = 100_000_000  # DATA.SYNTHETIC: N x NUM_FEATURES (0.8 GB of float64)
EMPTY_CONFIG = "the config is empty; expected sections such as DATA, MODEL, TRAIN"
SHOWN_CHARS = 80  # a value quoted in an error message is cut to this many characters
# the error type of a rule whose message already names the offending value ("lists 'genus' twice")
_STATED = "value_stated"


from workbench.errors import ConfigError  # noqa: E402,F401 (defined once in errors.py; re-exported here)
from workbench.names import DEFAULT_STORE, SELECT_BY_DEFAULT, SET_POOLS, SET_SOURCES, is_val_key  # noqa: E402


def _bound(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _in_range(lo: float, hi: float):
    def check(v: float) -> float:
        if not lo <= v <= hi:
            raise ValueError(f"must be in [{_bound(lo)}, {_bound(hi)}]")
        return v
    return AfterValidator(check)


def _at_least(lo: float):
    def check(v: float) -> float:
        if v < lo:
            raise ValueError(f"must be >= {_bound(lo)}")
        return v
    return AfterValidator(check)


def _not_bool(kind: str):
    """Pydantic reads ``true`` as 1 where a number is expected; a boolean there is a mistake, not a number."""
    def check(v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"must be {kind}")
        return v
    return BeforeValidator(check)


def _only_bool(v: Any) -> Any:
    """Pydantic reads 1, "yes" or "off" as booleans; only YAML's true/false (Python bools) are booleans here."""
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _no_repeats(v: list[str] | None) -> list[str] | None:
    if v is not None:
        seen = set()
        for item in v:
            if item in seen:
                raise PydanticCustomError(_STATED, "lists {item} twice", {"item": _shown(item)})
            seen.add(item)
    return v


def _not_empty(v: Any) -> Any:
    if len(v) == 0:
        raise ValueError("must not be empty")
    return v


def _positive_sum(v: list[float] | None) -> list[float] | None:
    if v is not None and not sum(v) > 0:
        raise ValueError("must have a positive sum")
    return v


def _val_metric(v: str) -> str:
    """Selection uses val only (DESIGN.md 3.5): a train or test metric there would select on the wrong split."""
    if not is_val_key(v):
        raise ValueError(f"must be a validation metric key (core/val_... or val/..., e.g. {SELECT_BY_DEFAULT!r})")
    return v


def _scale_range(v: list[float]) -> list[float]:
    if len(v) != 2 or v[0] > v[1]:
        raise ValueError("must be [min, max] with min <= max")
    return v


# Every number and flag in the config is one of these (non-finite floats are refused section-wide by
# allow_inf_nan=False). Strings stay accepted for numbers on purpose: YAML 1.1 reads `1e-3` as a string.
Float = Annotated[float, _not_bool("a number")]
Int = Annotated[int, _not_bool("an integer")]
Bool = Annotated[bool, BeforeValidator(_only_bool)]
Prob = Annotated[Float, _in_range(0.0, 1.0)]
Seed = Annotated[Int, _in_range(0, MAX_SEED)]
Text = Annotated[str, AfterValidator(_not_empty)]
Names = Annotated[list[Text], AfterValidator(_no_repeats)]


class _Section(BaseModel):
    # allow_inf_nan=False: NaN or inf in any float field ("`TRAIN.WEIGHT_DECAY` must be a finite number, got nan")
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SyntheticConfig(_Section):
    N: Annotated[Int, _at_least(10)] = 4000
    BRANCHING: Annotated[list[Annotated[Int, _at_least(1)]], AfterValidator(_not_empty)] = [3, 3, 3]
    NUM_FEATURES: Annotated[Int, _at_least(1)] = 16
    NOISE: Annotated[Float, _at_least(0.0)] = 1.0
    NULL_RATES: list[Prob] = [0.0, 0.1, 0.3]
    IMBALANCE: Annotated[Float, _at_least(0.0)] = 0.0
    MULTILABEL_RANK: Int | None = None

    @model_validator(mode="after")
    def _consistent(self):
        ranks = len(self.BRANCHING)
        if len(self.NULL_RATES) != ranks:
            raise ValueError(
                f"NULL_RATES must have one entry per rank of BRANCHING ({ranks}), got {self.NULL_RATES}"
            )
        if self.MULTILABEL_RANK is not None and not 0 <= self.MULTILABEL_RANK < ranks:
            raise ValueError(
                f"MULTILABEL_RANK must be a rank index of BRANCHING, in [0, {ranks - 1}], got {self.MULTILABEL_RANK}"
            )
        # make_synthetic builds one mean per leaf class and an (N, NUM_FEATURES) float64 matrix up front
        leaves = 1
        for b in self.BRANCHING:
            leaves *= b
        if leaves > MAX_SYNTHETIC_LEAVES:
            raise ValueError(
                f"BRANCHING must give at most {MAX_SYNTHETIC_LEAVES} classes at the finest rank, "
                f"got {self.BRANCHING} ({leaves} classes)"
            )
        if self.N * self.NUM_FEATURES > MAX_SYNTHETIC_VALUES:
            raise ValueError(
                f"N times NUM_FEATURES must be at most {MAX_SYNTHETIC_VALUES} values, "
                f"got N={self.N} and NUM_FEATURES={self.NUM_FEATURES}"
            )
        return self


DATA_SOURCES = ("ratdat", "ratdat_sets", "olive", "synthetic", "file", "images", "animal_mnist")
MIN_IMAGE_SIZE = 8  # DATA.IMAGE_SIZE: a conv backbone's stride-2 stages need a few pixels left
STREAM_ABOVE_MB_DEFAULT = 2048.0  # DATA.STREAM auto: stream an image set whose decoded pixels would exceed this
NUM_WORKERS_DEFAULT = 2  # DATA.NUM_WORKERS: processes decoding a streamed image set


def _stream_mode(v: Any) -> Any:
    """DATA.STREAM is auto, true or false: one rule for all three (a union would report each member)."""
    if v == "auto" or isinstance(v, bool):
        return v
    raise ValueError("must be auto, true or false")


class DataConfig(_Section):
    NAME: str = "synthetic"  # one of DATA_SOURCES
    PATH: str | None = None  # CSV/Parquet with NAME: file; a folder tree or a manifest (.csv/.tsv/.parquet) with NAME: images
    RANKS: Annotated[Names, AfterValidator(_not_empty)] | None = None
    FEATURES: Names | None = None
    FEATURE_PREFIX: str | None = None
    SAMPLE_WEIGHT: str | None = None
    NULL_VALUES: list[str] | dict[str, list[str]] | None = None
    VAL_FRACTION: Annotated[Float, _in_range(0.01, 0.99)] = 0.2
    TEST_FRACTION: Annotated[Float, _in_range(0.0, 0.98)] = 0.2  # 0 = no test split (DESIGN.md 3.5)
    SPLIT_COLUMN: Text | None = None  # NAME file / images (a manifest): a column of train/val/test, the split to use
    # sets (DESIGN.md 3.8): rows sharing this column's value form one sample, a padded set (NAME file; a manifest's
    # column is carried by `embed` as `group`)
    GROUP_BY: Text | None = None
    MAX_SET_SIZE: Annotated[Int, _at_least(1)] | None = None  # a longer set keeps a subsample seeded by SEED; null = all
    SEED: Seed = 0
    SYNTHETIC: SyntheticConfig = Field(default_factory=SyntheticConfig)
    # images (NAME: images | animal_mnist; DESIGN.md section 3.8)
    ROOT: Text | None = None  # a manifest's image paths are relative to this folder (default: the manifest's folder)
    IMAGE_COLUMN: Text = "path"  # the manifest column holding each image's path
    IMAGE_SIZE: Annotated[Int, _at_least(MIN_IMAGE_SIZE)] | None = None  # square side; None: 28 for animal_mnist, else 64
    SKIP_BAD_IMAGES: Bool = False  # skip (and list) undecodable images instead of stopping at the first
    CACHE_DIR: Text | None = None  # decoded-image cache; None: $WORKBENCH_CACHE or ~/.cache/workbench/images
    # streamed image sets (workbench/streaming.py): decoded batch by batch from disk in DataLoader workers
    STREAM: Annotated[Literal["auto"] | bool, BeforeValidator(_stream_mode)] = "auto"  # auto: when above STREAM_ABOVE_MB
    NUM_WORKERS: Annotated[Int, _at_least(0)] = NUM_WORKERS_DEFAULT  # decoding processes; 0 = in the training process
    STREAM_ABOVE_MB: Annotated[Float, _at_least(0.0)] = STREAM_ABOVE_MB_DEFAULT  # auto streams above N x C x H x W bytes

    @model_validator(mode="after")
    def _known_source(self):
        if self.NAME not in DATA_SOURCES:
            raise ValueError(f"NAME must be one of {', '.join(DATA_SOURCES)}; got {self.NAME!r}")
        if self.NAME in ("file", "images") and not self.PATH:
            raise ValueError(f"PATH is required when NAME is {self.NAME!r}")
        if self.STREAM is True and self.NAME != "images":
            raise ValueError(f"STREAM is true, but only image files stream (NAME 'images': a folder tree or a manifest); "
                             f"NAME {self.NAME!r} is read into memory whole: use auto or false")
        if self.VAL_FRACTION + self.TEST_FRACTION >= 1:
            raise ValueError(f"TEST_FRACTION plus VAL_FRACTION must be < 1 (something must be left to train on), "
                             f"got {self.TEST_FRACTION:g} + {self.VAL_FRACTION:g}")
        if self.GROUP_BY is not None and self.NAME not in ("file", "images"):
            raise ValueError(f"GROUP_BY applies only when NAME is 'file' or 'images' (a manifest), got {self.GROUP_BY!r} "
                             f"with NAME {self.NAME!r}" + (" (its sets are grouped already)" if self.NAME in SET_SOURCES
                                                           else ""))
        if self.MAX_SET_SIZE is not None and self.GROUP_BY is None and self.NAME not in SET_SOURCES:
            raise ValueError(f"MAX_SET_SIZE applies only to set data (GROUP_BY set, or NAME one of "
                             f"{', '.join(SET_SOURCES)}), got {self.MAX_SET_SIZE} with NAME {self.NAME!r} and no GROUP_BY")
        if self.SPLIT_COLUMN is not None and self.NAME not in ("file", "images"):
            raise ValueError(f"SPLIT_COLUMN applies only when NAME is 'file' or 'images' (a manifest), got "
                             f"{self.SPLIT_COLUMN!r} with NAME {self.NAME!r} (built-in data has its own split)")
        return self


class ModelConfig(_Section):
    # tables: mlp; padded sets: set_attention; images: resnet (plain torch), timm or torchvision (optional extra)
    BACKBONE: Literal["mlp", "set_attention", "resnet", "timm", "torchvision"] = "mlp"
    HIDDEN: list[Annotated[Int, _at_least(1)]] = [256, 128]  # [] = a linear model on the features (mlp only)
    HEAD: Literal["independent", "marginal"] = "independent"
    DROPOUT: Annotated[Float, _in_range(0.0, 0.9)] = 0.1
    WIDTH: Annotated[Int, _in_range(1, 1024)] = 32  # resnet: channels of the first stage (then 2x, 4x)
    DEPTH: Annotated[Int, _in_range(1, 16)] = 1  # resnet: basic blocks per stage (3 stages)
    ARCH: Text | None = None  # timm / torchvision: the architecture's name (resnet18, convnext_tiny, ...)
    PRETRAINED: Text | None = None  # local backbone weights (.safetensors, .pt, .pth); nothing is downloaded
    FREEZE_BACKBONE: Bool = False  # only the heads train
    POOL: Literal[SET_POOLS] = "attention"  # set_attention: attention pooling, or the mean of the real elements

    @model_validator(mode="after")
    def _set_attention_has_a_layer(self):
        if self.BACKBONE == "set_attention" and not self.HIDDEN:
            raise ValueError("HIDDEN must list at least one layer size for BACKBONE 'set_attention', got []")
        if self.BACKBONE in ("timm", "torchvision") and not self.ARCH:
            raise ValueError(f"ARCH is required for BACKBONE {self.BACKBONE!r} (e.g. 'resnet18', 'convnext_tiny')")
        return self


class LossConfig(_Section):
    W: Prob = 0.3
    RANK_WEIGHTS: Annotated[list[Annotated[Float, _at_least(0.0)]], AfterValidator(_positive_sum)] | None = None
    CLASS_WEIGHTS: Literal["none", "balanced"] = "none"
    MULTILABEL: Bool = False
    # the target mass moved off the true class (0 = one-hot targets); applied once, inside the loss
    LABEL_SMOOTHING: Annotated[Float, _in_range(0.0, 0.99)] = 0.0
    # uniform: over the other real classes of the rank; taxonomy: more to classes with a nearer common ancestor
    SMOOTHING: Literal["uniform", "taxonomy"] = "uniform"
    # soft labels (Making Better Mistakes): target_c proportional to exp(-beta * LCA height(y, c)); null = one-hot
    SOFT_LABELS_BETA: Annotated[Float, _in_range(0.0, 1000.0)] | None = None
    # HXE (Making Better Mistakes) as rank weights on the marginal head; null = rank weights from W
    HXE_ALPHA: Annotated[Float, _in_range(0.0, 100.0)] | None = None

    @model_validator(mode="after")
    def _one_target_rule(self):
        if self.SOFT_LABELS_BETA is not None and self.LABEL_SMOOTHING > 0:
            raise ValueError(
                f"LABEL_SMOOTHING and SOFT_LABELS_BETA both reshape the target; set one, got LABEL_SMOOTHING="
                f"{self.LABEL_SMOOTHING:g} and SOFT_LABELS_BETA={self.SOFT_LABELS_BETA:g}")
        if self.HXE_ALPHA is not None and self.RANK_WEIGHTS is not None:
            raise ValueError("HXE_ALPHA sets the rank weights; leave RANK_WEIGHTS null (got both)")
        return self


class TrainConfig(_Section):
    EPOCHS: Annotated[Int, _at_least(1)] = 20
    BATCH_SIZE: Annotated[Int, _at_least(1)] = 256
    LR: Annotated[Float, _in_range(1e-8, 10.0)] = 1e-3
    WEIGHT_DECAY: Annotated[Float, _at_least(0.0)] = 1e-4
    PHASE1_MASK_NULL_LOSS: Bool = False
    INIT_FROM: Text | None = None
    SEED: Seed = 0
    DEVICE: Literal["auto", "cpu", "cuda"] = "auto"
    NUM_THREADS: Annotated[Int, _in_range(0, MAX_THREADS)] = 0  # 0 = leave torch's default
    AMP: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 autocast on CUDA, off on the CPU
    # the selected epoch (best.pt, test) is where this val metric is best, in its direction (DESIGN.md 3.5)
    SELECT_BY: Annotated[Text, AfterValidator(_val_metric)] = SELECT_BY_DEFAULT
    EARLY_STOP_PATIENCE: Annotated[Int, _at_least(0)] = 0  # stop after this many epochs without improvement; 0 = off
    # learning rate per optimizer step, a pure function of the fractional epoch (workbench/lr_schedule.py)
    LR_SCHEDULE: Literal["constant", "cosine", "step"] = "constant"
    WARMUP_EPOCHS: Annotated[Float, _at_least(0.0)] = 0.0  # linear warmup from 0 to LR; fractional epochs allowed
    LR_STEPS: list[Annotated[Float, _at_least(0.0)]] = []  # step: epochs at which the LR is multiplied by LR_GAMMA
    LR_GAMMA: Annotated[Float, _in_range(0.0, 1.0)] = 0.1
    CLIP_GRAD_NORM: Annotated[Float, _in_range(1e-8, 1e6)] | None = None  # max global L2 norm of the gradient
    ACCUMULATE: Annotated[Int, _in_range(1, 4096)] = 1  # batches per optimizer step
    # torch.compile the model's forward (workbench/trainer.py _build); the first batches of each shape pay its compile
    COMPILE: Bool = False
    # rows per forward when predicting val/test; null = the trainer's EVAL_BATCH_ROWS (tables) / EVAL_BATCH_IMAGES
    EVAL_BATCH_SIZE: Annotated[Int, _at_least(1)] | None = None

    @model_validator(mode="after")
    def _schedule_fits(self):
        if self.LR_SCHEDULE == "step" and not self.LR_STEPS:
            raise ValueError("LR_STEPS must list at least one epoch for LR_SCHEDULE 'step', e.g. [10, 15]")
        if self.LR_STEPS and self.LR_SCHEDULE != "step":
            raise ValueError(f"LR_STEPS applies only to LR_SCHEDULE 'step', got LR_SCHEDULE {self.LR_SCHEDULE!r}")
        steps = list(self.LR_STEPS)
        if any(a >= b for a, b in zip(steps, steps[1:])):  # a repeated epoch would apply LR_GAMMA twice there
            raise ValueError(f"LR_STEPS must be strictly increasing (each epoch once), got {steps}")
        return self


class NullMaskingConfig(_Section):
    ENABLED: Bool = True
    START_PROB: Prob = 0.0
    END_PROB: Prob = 1.0
    START_EPOCH: Annotated[Float, _at_least(0.0)] = 0.0
    END_EPOCH: Annotated[Float, _at_least(0.0)] = 100.0

    @model_validator(mode="after")
    def _ordered(self):
        if self.START_EPOCH > self.END_EPOCH:
            raise ValueError(
                f"START_EPOCH must be <= END_EPOCH, got START_EPOCH={self.START_EPOCH:g} "
                f"and END_EPOCH={self.END_EPOCH:g}"
            )
        return self


class AugConfig(_Section):
    """Image augmentation, applied to training batches on the training device; evaluation never augments."""

    # (min, max) share of the image area a random crop keeps before it is resized back; null = no crop
    RANDOM_RESIZED_CROP: Annotated[list[Annotated[Float, _in_range(0.05, 1.0)]], AfterValidator(_scale_range)] | None = [0.8, 1.0]
    HFLIP: Bool = False  # off by default: silhouettes and text can be orientation-specific
    NORMALIZE: Bool = True  # per-channel standardisation with the training set's mean and std


class ScheduleConfig(_Section):
    NULL_MASKING: NullMaskingConfig = Field(default_factory=NullMaskingConfig)


class WandbConfig(_Section):
    ENABLED: Bool = False
    PROJECT: str = "workbench"
    MODE: Literal["online", "offline", "disabled"] = "offline"
    GROUP: str | None = None
    DIR: str | None = None  # default: next to the store


class TrackingConfig(_Section):
    STORE: Text = DEFAULT_STORE
    RUN_NAME: str | None = None
    # threshold curves are ~R x 4 x 101 rows an epoch: many short runs (a w grid) may keep the last only
    CURVES: Literal["every_epoch", "last_epoch"] = "every_epoch"
    WANDB: WandbConfig = Field(default_factory=WandbConfig)


class Config(_Section):
    """The whole run configuration; ``Config.load(path)``, ``cfg.to_dict()``, ``cfg.with_overrides([...])``."""

    DATA: DataConfig = Field(default_factory=DataConfig)
    MODEL: ModelConfig = Field(default_factory=ModelConfig)
    LOSS: LossConfig = Field(default_factory=LossConfig)
    TRAIN: TrainConfig = Field(default_factory=TrainConfig)
    SCHEDULE: ScheduleConfig = Field(default_factory=ScheduleConfig)
    AUG: AugConfig = Field(default_factory=AugConfig)
    TRACKING: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _hxe_needs_marginal_head(self):
        # HXE is a loss on one distribution over the leaves; independent heads have no such distribution
        if self.LOSS.HXE_ALPHA is not None and self.MODEL.HEAD != "marginal":
            raise ValueError(f"LOSS.HXE_ALPHA needs MODEL.HEAD 'marginal' (HXE is defined on one distribution "
                             f"over the finest rank), got MODEL.HEAD {self.MODEL.HEAD!r}")
        return self

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str = "config") -> Config:
        data = _sections(data if data is not None else {}, source)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, source)) from None

    @classmethod
    def from_run(cls, data: dict[str, Any], source: str = "config") -> Config:
        """The config a run was recorded with (``runs.config``, a checkpoint's or a bundle's ``config``).

        A run recorded before the test split existed has no ``DATA.TEST_FRACTION`` in its config: it trained
        on train + (what is now) test, so it gets ``TEST_FRACTION: 0``, not today's default; resume, phase 2
        and predict then remake the very split it trained and validated on.
        """
        data = dict(data or {})
        section = data.get("DATA")
        if isinstance(section, dict) and "TEST_FRACTION" not in section:
            data["DATA"] = {**section, "TEST_FRACTION": 0.0}
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> Config:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, not a config file")
        if not path.is_file():  # a pipe would block the read; a device is no config either
            raise ConfigError(f"{path}: is not a regular file; a config is a YAML file")
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)  # never more: a huge file is refused without reading it whole
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config: {e.strerror}") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: the file is larger than {MAX_CONFIG_BYTES:,} bytes; a config is a few kilobytes of YAML"
            )
        try:
            data = load_yaml(raw.decode("utf-8"), str(path))
        except UnicodeDecodeError as e:
            line = e.object[: e.start].count(b"\n") + 1
            raise ConfigError(f"{path}: line {line} is not UTF-8 text (byte {e.object[e.start]:#04x}): save the file as UTF-8") from None
        if data is None or data == {}:
            # comments only: every default would run, and create a store in the working folder
            raise ConfigError(f"{path}: {EMPTY_CONFIG}")
        data = apply_overrides(_sections(data, str(path)), overrides or [])
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> Config:
        """A new config with ``KEY.PATH=value`` strings (values parsed as YAML) or a dotted dict applied."""
        return Config.from_dict(apply_overrides(self.to_dict(), overrides), source="overrides")

    def flat(self) -> dict[str, Any]:
        """``{"LOSS.W": 0.3, ...}``: one entry per leaf key (for tables and W&B)."""
        return flatten(self.to_dict())


def _sections(data: Any, source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "NULL_VALUES":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply ``["LOSS.W=0.3", ...]`` or ``{"LOSS.W": 0.3}`` to a nested dict (a copy)."""
    data = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, dict) else [_parse_override(o) for o in overrides]
    for key, value in items:
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.setdefault(part, {}), dict):
                raise ConfigError(f"override `{key}`: `{part}` is a value, not a section")
            node = node[part]
        node[parts[-1]] = value
    return data


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like KEY.PATH=value, e.g. LOSS.W=0.3")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = _bounded_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML (e.g. `RUN_NAME=a: b`): the text as written
    except _YamlRefused as e:
        raise ConfigError(f"override `{key}`: {e}") from None
    return key, value


# ---------------------------------------------------------------------- bounded YAML
class _YamlRefused(Exception):
    """Valid YAML that a config must not be: too big, too deep, or a key given twice (message without the file)."""


def load_yaml(text: str, source: str) -> Any:
    """Parse config YAML (safe tags only) within the MAX_YAML_* bounds; ``ConfigError`` names ``source``."""
    try:
        return _bounded_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML{_yaml_problem(e)}") from None
    except _YamlRefused as e:
        raise ConfigError(f"{source}: {e}") from None


def _bounded_yaml(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses, before building any Python object: more than MAX_YAML_VALUES
    values (counting each alias as the whole block it repeats: an alias bomb), nesting deeper than
    MAX_YAML_DEPTH (PyYAML recurses per level and would die with a RecursionError), recursive aliases,
    and a key given twice in one mapping (YAML keeps the last silently; a repeated section drops the first)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._composed = 0

    def compose_node(self, parent, index):
        # counted while composing, so a 1 MB flat list is refused before it is all parsed
        if not self.check_event(yaml.AliasEvent):
            self._composed += 1
            if self._composed > MAX_YAML_VALUES:
                raise _YamlRefused(f"line {self._line()}: more than {MAX_YAML_VALUES:,} values; a config has about 60")
        if self._depth >= MAX_YAML_DEPTH:
            raise _YamlRefused(f"line {self._line()}: nested deeper than {MAX_YAML_DEPTH} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _line(self) -> int:
        return self.peek_event().start_mark.line + 1

    def construct_document(self, node):
        _check_expanded(node)
        return super().construct_document(node)


def _construct_int(loader: _BoundedLoader, node: yaml.ScalarNode) -> int:
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:  # Python refuses int("9" * 5000): a digit limit, not a YAML error
        raise _YamlRefused(
            f"line {node.start_mark.line + 1}: an integer {len(node.value)} characters long; no setting takes one that large"
        ) from None


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *base`: keys merged in may be overridden, not duplicates


def _check_expanded(root: yaml.Node) -> None:
    """The composed document as the constructor would expand it: size, depth, cycles, repeated keys.

    A node reached through several aliases is the same object: its expanded size is computed once
    (memo), so the check is linear in the text even when the expansion is exponential."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def visit(node: yaml.Node, path: str, depth: int) -> int:
        here = node.start_mark.line + 1
        if id(node) in open_nodes:
            raise _YamlRefused(f"line {here}: `{path}` contains itself through an alias (a recursive alias)")
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > MAX_YAML_DEPTH:
            raise _YamlRefused(f"line {here}: aliases nest `{path}` deeper than {MAX_YAML_DEPTH} levels")
        open_nodes.add(id(node))
        size = 1
        if isinstance(node, yaml.MappingNode):
            _no_repeated_keys(node, path)
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                size += visit(key, path, depth + 1) + visit(value, f"{path}.{name}" if path else name, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                size += visit(item, f"{path}.{i}" if path else str(i), depth + 1)
        open_nodes.discard(id(node))
        if size > MAX_YAML_VALUES:
            raise _YamlRefused(
                f"line {here}: aliases expand this block to more than {MAX_YAML_VALUES:,} values "
                f"(an alias bomb?); a config has about 60"
            )
        sizes[id(node)] = size
        return size

    visit(root, "", 0)


def _no_repeated_keys(node: yaml.MappingNode, path: str) -> None:
    first_line: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in first_line:
            name = f"{path}.{key.value}" if path else key.value
            first = first_line[key.tag, key.value]
            where = f"on line {line}" if first == line else f"at lines {first} and {line}"
            raise _YamlRefused(
                f"`{name}` is given twice, {where}; YAML would keep only the last one silently: give it once"
            )
        first_line[key.tag, key.value] = line


def format_validation_error(error: ValidationError, source: str) -> str:
    """Pydantic errors in the one template: "`KEY.PATH` <rule>, got <value>" (one line each)."""
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            lines.append(f"`{loc}` is not a known key{_allowed_keys(err['loc'])}")
        elif err["type"] == "missing":
            lines.append(f"`{loc}` is required")
        elif isinstance(value, dict) and err["type"] == "value_error":
            # a section-level rule ("START_EPOCH must be <= END_EPOCH, got ..."): its message already
            # states the values; name the key it starts with instead of echoing the whole section
            first, _, rest = msg.partition(" ")
            if first in value and rest:
                loc, msg = (f"{loc}.{first}" if loc else first), rest
            lines.append(f"`{loc}` {_rule(msg)}" if loc else _rule(msg))
        elif err["type"] == _STATED:
            lines.append(f"`{loc}` {msg}")
        else:
            where = f"`{loc}` " if loc else ""
            lines.append(f"{where}{_rule(msg)}, got {_shown(value)}")
    head = f"{source}: invalid config" if len(lines) > 1 else f"{source}:"
    return head + (" " + lines[0] if len(lines) == 1 else "\n  " + "\n  ".join(lines))


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line (the CLI prints errors as one line): where, what, and the construct it was in."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or not problem:
        return ": " + " ".join(str(e).split()).replace('in "<unicode string>", ', "at ")
    text = f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and start is not None:
        text += f" ({context} that starts at line {start.line + 1}, column {start.column + 1})"
    return text


def _rule(msg: str) -> str:
    """Pydantic's wording to ours: 'Input should be a valid number' -> 'must be a valid number'."""
    msg = msg.replace("Input should be", "must be")
    return msg.replace("must be a valid integer, got a number with a fractional part", "must be a whole number")


def _shown(value: Any) -> str:
    """A value received, spelled as in YAML (true, false, null) and cut short if long (a 1 MB string)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, int) and value.bit_length() > 1000:  # repr() refuses over 4300 digits
        text = f"an integer of {value.bit_length()} bits"
    else:
        text = repr(value)
    return shorten(text)


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` for an error message: kept whole up to ``limit`` characters, else cut with its length."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _allowed_keys(loc: tuple) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        model = field.annotation
    return f"; allowed keys here: {', '.join(model.model_fields)}"
