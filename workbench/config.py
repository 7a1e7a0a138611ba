"""One typed config (DESIGN.md section 4): YAML load/save, dotted overrides, one error template.

Every validation error reads like "`LOSS.W` must be in [0, 1], got 1.5": the key path, the rule,
the value received. Unknown keys are rejected with the list of allowed keys.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """An invalid config; the message names the key path, the rule and the value."""


def _in_range(lo: float, hi: float):
    def check(v: float) -> float:
        if not lo <= v <= hi:
            raise ValueError(f"must be in [{lo:g}, {hi:g}]")
        return v
    return AfterValidator(check)


def _at_least(lo: float):
    def check(v: float) -> float:
        if v < lo:
            raise ValueError(f"must be >= {lo:g}")
        return v
    return AfterValidator(check)


Prob = Annotated[float, _in_range(0.0, 1.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(_Section):
    N: Annotated[int, _at_least(10)] = 4000
    BRANCHING: list[Annotated[int, _at_least(1)]] = [3, 3, 3]
    NUM_FEATURES: Annotated[int, _at_least(1)] = 16
    NOISE: Annotated[float, _at_least(0.0)] = 1.0
    NULL_RATES: list[Prob] = [0.0, 0.1, 0.3]
    IMBALANCE: Annotated[float, _at_least(0.0)] = 0.0
    MULTILABEL_RANK: int | None = None

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.NULL_RATES) != len(self.BRANCHING):
            raise ValueError(
                f"NULL_RATES must have one entry per rank of BRANCHING ({len(self.BRANCHING)}), "
                f"got {self.NULL_RATES}"
            )
        return self


class DataConfig(_Section):
    NAME: str = "synthetic"  # ratdat | olive | synthetic | file
    PATH: str | None = None  # CSV/Parquet, with NAME: file
    RANKS: list[str] | None = None
    FEATURES: list[str] | None = None
    FEATURE_PREFIX: str | None = None
    SAMPLE_WEIGHT: str | None = None
    NULL_VALUES: list[str] | dict[str, list[str]] | None = None
    VAL_FRACTION: Annotated[float, _in_range(0.01, 0.99)] = 0.2
    SEED: int = 0
    SYNTHETIC: SyntheticConfig = Field(default_factory=SyntheticConfig)

    @model_validator(mode="after")
    def _known_source(self):
        if self.NAME not in ("ratdat", "olive", "synthetic", "file"):
            raise ValueError(f"NAME must be one of ratdat, olive, synthetic, file; got {self.NAME!r}")
        if self.NAME == "file" and not self.PATH:
            raise ValueError("PATH is required when NAME is 'file'")
        return self


class ModelConfig(_Section):
    BACKBONE: Literal["mlp", "set_attention"] = "mlp"
    HIDDEN: list[Annotated[int, _at_least(1)]] = [256, 128]
    HEAD: Literal["independent", "marginal"] = "independent"
    DROPOUT: Annotated[float, _in_range(0.0, 0.9)] = 0.1


class LossConfig(_Section):
    W: Prob = 0.3
    RANK_WEIGHTS: list[Annotated[float, _at_least(0.0)]] | None = None
    CLASS_WEIGHTS: Literal["none", "balanced"] = "none"
    MULTILABEL: bool = False


class TrainConfig(_Section):
    EPOCHS: Annotated[int, _at_least(1)] = 20
    BATCH_SIZE: Annotated[int, _at_least(1)] = 256
    LR: Annotated[float, _in_range(1e-8, 10.0)] = 1e-3
    WEIGHT_DECAY: Annotated[float, _at_least(0.0)] = 1e-4
    PHASE1_MASK_NULL_LOSS: bool = False
    INIT_FROM: str | None = None
    SEED: int = 0
    DEVICE: Literal["auto", "cpu", "cuda"] = "auto"
    NUM_THREADS: Annotated[int, _at_least(0)] = 0  # 0 = leave torch's default


class NullMaskingConfig(_Section):
    ENABLED: bool = True
    START_PROB: Prob = 0.0
    END_PROB: Prob = 1.0
    START_EPOCH: Annotated[float, _at_least(0.0)] = 0.0
    END_EPOCH: Annotated[float, _at_least(0.0)] = 100.0

    @model_validator(mode="after")
    def _ordered(self):
        if self.START_EPOCH > self.END_EPOCH:
            raise ValueError(
                f"START_EPOCH must be <= END_EPOCH, got START_EPOCH={self.START_EPOCH:g} "
                f"and END_EPOCH={self.END_EPOCH:g}"
            )
        return self


class ScheduleConfig(_Section):
    NULL_MASKING: NullMaskingConfig = Field(default_factory=NullMaskingConfig)


class WandbConfig(_Section):
    ENABLED: bool = False
    PROJECT: str = "workbench"
    MODE: Literal["online", "offline", "disabled"] = "offline"
    GROUP: str | None = None
    DIR: str | None = None  # default: next to the store


class TrackingConfig(_Section):
    STORE: str = "runs/workbench.db"
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
    TRACKING: TrackingConfig = Field(default_factory=TrackingConfig)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str = "config") -> Config:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, source)) from None

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> Config:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        if not path.is_file():
            raise ConfigError(f"{path}: is a folder, not a config file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            line = e.object[: e.start].count(b"\n") + 1
            raise ConfigError(f"{path}: line {line} is not UTF-8 text (byte {e.object[e.start]:#04x}): save the file as UTF-8") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML{_yaml_problem(e)}") from None
        data = apply_overrides(data or {}, overrides or [])
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
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


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
        else:
            where = f"`{loc}` " if loc else ""
            lines.append(f"{where}{_rule(msg)}, got {value!r}")
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
    return msg.replace("Input should be", "must be")


def _allowed_keys(loc: tuple) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        model = field.annotation
    return f"; allowed keys here: {', '.join(model.model_fields)}"
