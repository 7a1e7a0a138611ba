"""Config: defaults, YAML files, dotted overrides, round trip, and the one error template."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workbench.config import Config, ConfigError, flatten

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def error_of(overrides) -> str:
    with pytest.raises(ConfigError) as e:
        Config().with_overrides(overrides)
    return str(e.value)


def test_defaults_validate_and_match_design():
    cfg = Config()
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert 0 <= cfg.LOSS.W <= 1
    nm = cfg.SCHEDULE.NULL_MASKING
    assert nm.START_EPOCH <= nm.END_EPOCH
    assert Config.from_dict(None) == cfg and Config.from_dict({}) == cfg


def test_there_are_example_configs():
    names = {p.name for p in CONFIGS}
    assert {"synthetic.yaml", "olive.yaml", "ratdat_phase1.yaml", "ratdat_phase2.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_example_config_loads(path):
    cfg = Config.load(path)
    raw = yaml.safe_load(path.read_text())
    # every value written in the file is the value loaded
    flat_raw, flat_cfg = flatten(raw), cfg.flat()
    for key, value in flat_raw.items():
        assert flat_cfg[key] == value, key
    assert cfg.DATA.NAME == raw["DATA"]["NAME"]


def test_phase_configs_differ_where_they_should():
    by_name = {p.name: Config.load(p) for p in CONFIGS}
    assert by_name["ratdat_phase1.yaml"].TRAIN.PHASE1_MASK_NULL_LOSS is True
    assert by_name["ratdat_phase2.yaml"].TRAIN.PHASE1_MASK_NULL_LOSS is False


def test_overrides_by_dotted_key():
    cfg = Config().with_overrides(["LOSS.W=0.5", "SCHEDULE.NULL_MASKING.END_EPOCH=10", "MODEL.HIDDEN=[8, 4]"])
    assert cfg.LOSS.W == 0.5
    assert cfg.SCHEDULE.NULL_MASKING.END_EPOCH == 10
    assert cfg.MODEL.HIDDEN == [8, 4]
    # untouched keys keep their defaults; the original is not modified
    assert cfg.TRAIN.EPOCHS == Config().TRAIN.EPOCHS
    base = Config()
    base.with_overrides({"LOSS.W": 0.9})
    assert base.LOSS.W == Config().LOSS.W
    assert Config().with_overrides({"TRAIN.PHASE1_MASK_NULL_LOSS": True}).TRAIN.PHASE1_MASK_NULL_LOSS is True


def test_load_applies_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("LOSS: {W: 0.2}\nTRAIN: {EPOCHS: 3}\n")
    cfg = Config.load(path, ["LOSS.W=0.7"])
    assert cfg.LOSS.W == 0.7 and cfg.TRAIN.EPOCHS == 3


def test_round_trip_save_load(tmp_path):
    cfg = Config().with_overrides({
        "LOSS.W": 0.25, "MODEL.HEAD": "marginal", "SCHEDULE.NULL_MASKING.START_PROB": 0.1,
        "DATA.NULL_VALUES": {"genus": ["Rodent"]}, "TRACKING.WANDB.GROUP": "g1",
    })
    path = tmp_path / "saved.yaml"
    cfg.save(path)
    again = Config.load(path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert again.flat()["LOSS.W"] == 0.25 and again.flat()["DATA.NULL_VALUES"] == {"genus": ["Rodent"]}


# ---------------------------------------------------------------------- errors
def test_unknown_key_lists_allowed_keys():
    msg = error_of(["LOSS.FOO=1"])
    assert "`LOSS.FOO`" in msg and "not a known key" in msg
    for key in ("W", "RANK_WEIGHTS", "CLASS_WEIGHTS", "MULTILABEL"):
        assert key in msg
    msg = error_of(["NOPE.X=1"])
    assert "`NOPE`" in msg and "TRAIN" in msg and "LOSS" in msg


def test_wrong_type():
    msg = error_of(["TRAIN.EPOCHS=abc"])
    assert "`TRAIN.EPOCHS`" in msg and "integer" in msg and "'abc'" in msg


def test_w_out_of_range_uses_the_template():
    msg = error_of(["LOSS.W=1.5"])
    assert "`LOSS.W` must be in [0, 1], got 1.5" in msg


def test_start_epoch_after_end_epoch():
    msg = error_of(["SCHEDULE.NULL_MASKING.START_EPOCH=10", "SCHEDULE.NULL_MASKING.END_EPOCH=5"])
    assert "`SCHEDULE.NULL_MASKING.START_EPOCH` must be <= END_EPOCH" in msg
    assert "START_EPOCH=10" in msg and "END_EPOCH=5" in msg
    assert msg.count("got") == 1, f"one rule, one value: {msg!r}"


def test_negative_epochs():
    msg = error_of(["TRAIN.EPOCHS=-3"])
    assert "`TRAIN.EPOCHS` must be >= 1, got -3" in msg


@pytest.mark.parametrize("key", ["START_PROB", "END_PROB"])
@pytest.mark.parametrize("value", [-0.1, 1.2])
def test_probabilities_outside_unit_interval(key, value):
    msg = error_of([f"SCHEDULE.NULL_MASKING.{key}={value}"])
    assert f"`SCHEDULE.NULL_MASKING.{key}` must be in [0, 1], got {value}" in msg


def test_several_errors_are_all_reported():
    msg = error_of({"LOSS.W": 2, "TRAIN.EPOCHS": 0})
    assert "`LOSS.W`" in msg and "`TRAIN.EPOCHS`" in msg


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("LOSS: {W: 0.3\nTRAIN: [\n")
    with pytest.raises(ConfigError) as e:
        Config.load(path)
    assert str(path) in str(e.value) and "YAML" in str(e.value)


def test_top_level_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as e:
        Config.load(path)
    assert str(path) in str(e.value)


def test_error_in_file_names_the_file(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("LOSS: {W: 1.5}\n")
    with pytest.raises(ConfigError) as e:
        Config.load(path)
    assert str(e.value).startswith(str(path))
    assert "`LOSS.W` must be in [0, 1], got 1.5" in str(e.value)


def test_missing_file(tmp_path):
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as e:
        Config.load(path)
    assert str(path) in str(e.value) and "not found" in str(e.value)


def test_override_without_equals():
    with pytest.raises(ConfigError) as e:
        Config().with_overrides(["LOSS.W"])
    assert "LOSS.W" in str(e.value) and "KEY.PATH=value" in str(e.value)


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError) as e:
        Config().with_overrides(["LOSS.W.X=1"])
    assert "`LOSS.W.X`" in str(e.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------- every field of a kind (new fields included)
def _leaves(kind: type) -> list[str]:
    """The flat keys whose default is a ``kind`` (bool is not counted as int or float)."""
    return [k for k, v in Config().flat().items() if type(v) is kind]


def test_the_field_lists_cover_the_config():
    assert "TRAIN.WEIGHT_DECAY" in _leaves(float) and "TRAIN.SEED" in _leaves(int) and "LOSS.MULTILABEL" in _leaves(bool)


@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")])
def test_every_float_field_refuses_non_finite_values(value, shown):
    for key in _leaves(float) + _leaves(int):
        msg = error_of({key: value})
        assert msg == f"overrides: `{key}` must be a finite number, got {shown}", key


def test_every_number_field_refuses_booleans():
    for key in _leaves(float):
        assert error_of({key: True}) == f"overrides: `{key}` must be a number, got true"
    for key in _leaves(int):
        assert error_of({key: False}) == f"overrides: `{key}` must be an integer, got false"


@pytest.mark.parametrize("value, shown", [(1, "1"), (0, "0"), ("yes", "'yes'"), ("false", "'false'")])
def test_every_flag_refuses_non_booleans(value, shown):
    for key in _leaves(bool):
        assert error_of({key: value}) == f"overrides: `{key}` must be true or false, got {shown}"


def test_number_fields_still_take_ints_and_yaml_1_1_exponents():
    """`LR: 1e-3` is a string to YAML 1.1 (no dot): still read as 0.001; an int is a valid float."""
    cfg = Config().with_overrides(["TRAIN.LR=1e-3", "LOSS.W=1", "TRAIN.EPOCHS=3.0"])
    assert cfg.TRAIN.LR == 0.001 and cfg.LOSS.W == 1.0 and cfg.TRAIN.EPOCHS == 3


def test_from_dict_applies_the_same_rules():
    data = Config().to_dict()
    data["TRAIN"]["WEIGHT_DECAY"] = float("nan")
    with pytest.raises(ConfigError, match=r"^run x: `TRAIN.WEIGHT_DECAY` must be a finite number, got nan$"):
        Config.from_dict(data, source="run x")


def test_load_yaml_names_the_source_and_refuses_repeats():
    from workbench.config import load_yaml

    assert load_yaml("a: 1\nb: [1, 2]\n", "x.yaml") == {"a": 1, "b": [1, 2]}
    with pytest.raises(ConfigError, match=r"^x.yaml: `a` is given twice, at lines 1 and 3;"):
        load_yaml("a: 1\nb: 2\na: 3\n", "x.yaml")
    with pytest.raises(ConfigError, match=r"^x.yaml: not valid YAML at line 2, column 1: .* starts at line 1, column 4\)$"):
        load_yaml("a: [1\n", "x.yaml")
