"""Bad input at the config boundary: YAML that would hang, non-finite numbers, ambiguous files, seeds out of
range, repeated names, and other values no run can use.

Like ``test_bad_input.py`` (whose seeded store and snapshot this file reuses), every case goes through the
entry point a user would use (``python -m workbench`` via ``workbench.cli.main``, or ``sweeps/run.py``'s
``main``): exit code 2, exactly one ``error: ...`` line naming the file / key / value, no traceback, and the
run store that already holds one finished run is left exactly as it was.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from test_bad_input import (  # noqa: F401  (db, seeded_dir, sweep_cli, no_ray are fixtures)
    SEED_RUN, assert_error_line, db, no_ray, seeded_dir, snapshot, store_unchanged, sweep, sweep_cli, tiny_dict,
    train, write_config,
)

from workbench.cli import main as cli_main
from workbench.config import EMPTY_CONFIG, MAX_CONFIG_BYTES, MAX_SEED, MAX_YAML_DEPTH, MAX_YAML_VALUES
from workbench.store import RunStore

NAN, INF = float("nan"), float("inf")


def good_yaml(db: Path) -> str:
    """The tiny config that trains (see test_bad_input.py), as YAML text to edit by hand."""
    return yaml.safe_dump(tiny_dict(db), sort_keys=False)


def write_text(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- 1. YAML that would hang or crash
def _alias_bomb() -> str:
    """'Billion laughs': 10 levels of 9 aliases, 0.5 kB of text that expands to 9**10 (3.5 billion) strings."""
    lines = ["x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_fast(tmp_path, db, capsys):
    good = good_yaml(db)
    assert "  RANK_WEIGHTS: null\n" in good
    cfg = write_text(tmp_path, _alias_bomb() + good.replace("  RANK_WEIGHTS: null\n", "  RANK_WEIGHTS: *x9\n"))
    with store_unchanged(db):
        t0 = time.monotonic()
        rc, err = train(capsys, cfg)
        took = time.monotonic() - t0
    # x4 (line 5) expands to 66,430 values, x5 (line 6) to 597,871: over MAX_YAML_VALUES
    assert_error_line(rc, err, f"{cfg}: line 6: aliases expand this block to more than {MAX_YAML_VALUES:,} "
                               "values (an alias bomb?); a config has about 60")
    print(f"alias bomb refused in {took * 1000:.1f} ms")
    assert took < 5, f"{took:.1f} s"


# (id, YAML text given the good config's text, expected message after "<file>: ")
YAML_CASES = [
    ("too-large", lambda good: good + "# " + "x" * MAX_CONFIG_BYTES + "\n",
     f"the file is larger than {MAX_CONFIG_BYTES:,} bytes; a config is a few kilobytes of YAML"),
    # PyYAML composes one Python frame per level: 5000 levels used to end in a RecursionError traceback
    ("nested-too-deep", lambda good: good + "DATA: {NULL_VALUES: " + "[" * 5000 + "]" * 5000 + "}\n",
     f"line {{n}}: nested deeper than {MAX_YAML_DEPTH} levels"),
    ("recursive-alias", lambda good: good + "x: &a {W: 0.3, SELF: *a}\n",
     "line {n}: `x.SELF` contains itself through an alias (a recursive alias)"),
    ("many-values", lambda good: good + "x: [" + ", ".join(["1"] * (MAX_YAML_VALUES + 10)) + "]\n",
     f"line {{n}}: more than {MAX_YAML_VALUES:,} values; a config has about 60"),
    # Python's int() refuses more than 4300 digits with a ValueError (a traceback, before)
    ("integer-of-5000-digits", lambda good: good.replace("  SEED: 0\n", "  SEED: " + "9" * 5000 + "\n", 1),
     "line {seed}: an integer 5000 characters long; no setting takes one that large"),
    # a YAML syntax error names the file, the line and the column
    ("tab-indentation", lambda good: good + "SCHEDULE:\n\tNULL_MASKING: {ENABLED: false}\n",
     "not valid YAML at line {n1}, column 1: found character '\\t' that cannot start any token"),
    ("bad-indentation", lambda good: good + "x:\n    a: 1\n  b: 2\n",
     "not valid YAML at line {n2}, column 3: expected <block end>, but found '<block mapping start>' "
     "(while parsing a block mapping that starts at line 1, column 1)"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_bad_yaml(tmp_path, db, capsys, text, expected):
    good = good_yaml(db)
    cfg = write_text(tmp_path, text(good))
    n = good.count("\n") + 1  # the first line after the good config
    seed = next(i for i, line in enumerate(good.splitlines(), 1) if line == "  SEED: 0")
    with store_unchanged(db):
        t0 = time.monotonic()
        rc, err = train(capsys, cfg)
        took = time.monotonic() - t0
    assert_error_line(rc, err, f"{cfg}: " + expected.format(n=n, n1=n + 1, n2=n + 2, seed=seed))
    assert took < 10, f"{took:.1f} s: a bad config must fail fast"


# ---------------------------------------------------------------------- 2. ambiguous configs
def test_repeated_section_is_refused(tmp_path, db, capsys):
    """A second TRAIN section used to replace the first whole (its EPOCHS, SEED, ... silently dropped)."""
    good = good_yaml(db)
    first = next(i for i, line in enumerate(good.splitlines(), 1) if line == "TRAIN:")
    cfg = write_text(tmp_path, good + "TRAIN:\n  LR: 0.01\n")
    with store_unchanged(db):
        rc, err = train(capsys, cfg)
    assert_error_line(rc, err, f"{cfg}: `TRAIN` is given twice, at lines {first} and {good.count(chr(10)) + 1}; "
                               "YAML would keep only the last one silently: give it once")


def test_repeated_key_is_refused(tmp_path, db, capsys):
    good = good_yaml(db)
    w = next(i for i, line in enumerate(good.splitlines(), 1) if line.startswith("  W: "))
    cfg = write_text(tmp_path, good.replace("  W: 0.3\n", "  W: 0.3\n  W: 0.9\n", 1))
    with store_unchanged(db):
        rc, err = train(capsys, cfg)
    assert_error_line(rc, err, f"{cfg}: `LOSS.W` is given twice, at lines {w} and {w + 1}; "
                               "YAML would keep only the last one silently: give it once")


def test_repeated_key_in_a_set_override_is_refused(tmp_path, db, capsys):
    cfg = write_config(tmp_path / "good.yaml", db)
    with store_unchanged(db):
        rc, err = train(capsys, cfg, "--set", "LOSS={W: 0.1, W: 0.9}")
    assert_error_line(rc, err, "override `LOSS`: `W` is given twice, on line 1; "
                               "YAML would keep only the last one silently: give it once")


def test_merge_key_override_is_not_a_repeat(tmp_path, db, capsys):
    """YAML's `<<: *base` then a key of the base is an override on purpose: accepted (it trains)."""
    good = good_yaml(db)
    text = good.replace("LOSS:\n", "LOSS:\n  <<: {W: 0.9, MULTILABEL: false}\n", 1)
    rc = cli_main(["train", "--config", str(write_text(tmp_path, text, "merge.yaml")), "--no-progress",
                   "--run-id", "merged"])
    assert rc == 0, capsys.readouterr().err
    assert RunStore(db).run("merged")["config"]["LOSS"]["W"] == 0.3


@pytest.mark.parametrize("text", ["", "\n\n", "# a config\n# still to write\n", "{}\n", "---\n"],
                         ids=["empty", "blank-lines", "comments-only", "empty-mapping", "document-marker-only"])
def test_empty_config_is_refused_and_creates_no_store(tmp_path, db, capsys, monkeypatch, text):
    """An empty config used to run every default and create runs/workbench.db in the working folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = write_text(work, text, "empty.yaml")
    with store_unchanged(db):
        rc, err = train(capsys, cfg)
    assert_error_line(rc, err, f"{cfg}: {EMPTY_CONFIG}")
    assert sorted(p.name for p in work.iterdir()) == ["empty.yaml"], "nothing is created in the working folder"


def test_top_level_list_with_a_set_override_is_refused(tmp_path, db, capsys):
    """`--set` into a file whose top level is a list used to end in an AttributeError traceback."""
    cfg = write_text(tmp_path, "- LOSS\n- TRAIN\n")
    with store_unchanged(db):
        rc, err = train(capsys, cfg, "--set", "LOSS.W=0.2")
    assert_error_line(rc, err, f"{cfg}: expected a mapping of sections at the top level, got list")


def test_config_that_is_not_a_regular_file_is_refused(db, capsys):
    with store_unchanged(db):
        rc, err = train(capsys, Path("/dev/null"))
    assert_error_line(rc, err, "/dev/null: is not a regular file; a config is a YAML file")


# ---------------------------------------------------------------------- 3. values no run can use
# (id, bad values written into the YAML file, expected message after "<file>: ")
VALUE_CASES = [
    # non-finite numbers, in every kind of float field
    ("weight-decay-nan", {"TRAIN.WEIGHT_DECAY": NAN}, "`TRAIN.WEIGHT_DECAY` must be a finite number, got nan"),
    ("weight-decay-inf", {"TRAIN.WEIGHT_DECAY": INF}, "`TRAIN.WEIGHT_DECAY` must be a finite number, got inf"),
    ("lr-minus-inf", {"TRAIN.LR": -INF}, "`TRAIN.LR` must be a finite number, got -inf"),
    ("w-nan", {"LOSS.W": NAN}, "`LOSS.W` must be a finite number, got nan"),
    ("rank-weight-inf", {"LOSS.RANK_WEIGHTS": [1.0, INF]}, "`LOSS.RANK_WEIGHTS.1` must be a finite number, got inf"),
    ("end-epoch-inf", {"SCHEDULE.NULL_MASKING.END_EPOCH": INF},
     "`SCHEDULE.NULL_MASKING.END_EPOCH` must be a finite number, got inf"),
    ("val-fraction-nan", {"DATA.VAL_FRACTION": NAN}, "`DATA.VAL_FRACTION` must be a finite number, got nan"),
    ("synthetic-noise-nan", {"DATA.SYNTHETIC.NOISE": NAN}, "`DATA.SYNTHETIC.NOISE` must be a finite number, got nan"),
    ("null-rate-nan", {"DATA.SYNTHETIC.NULL_RATES": [0.0, NAN]},
     "`DATA.SYNTHETIC.NULL_RATES.1` must be a finite number, got nan"),
    ("rank-weights-all-zero", {"LOSS.RANK_WEIGHTS": [0.0, 0.0]},
     "`LOSS.RANK_WEIGHTS` must have a positive sum, got [0.0, 0.0]"),
    ("rank-weights-empty", {"LOSS.RANK_WEIGHTS": []}, "`LOSS.RANK_WEIGHTS` must have a positive sum, got []"),
    # booleans where numbers are expected, numbers where booleans are
    ("w-true", {"LOSS.W": True}, "`LOSS.W` must be a number, got true"),
    ("epochs-true", {"TRAIN.EPOCHS": True}, "`TRAIN.EPOCHS` must be an integer, got true"),
    ("seed-false", {"TRAIN.SEED": False}, "`TRAIN.SEED` must be an integer, got false"),
    ("multilabel-1", {"LOSS.MULTILABEL": 1}, "`LOSS.MULTILABEL` must be true or false, got 1"),
    ("masking-enabled-text", {"SCHEDULE.NULL_MASKING.ENABLED": "no"},
     "`SCHEDULE.NULL_MASKING.ENABLED` must be true or false, got 'no'"),
    ("wandb-enabled-0", {"TRACKING.WANDB.ENABLED": 0}, "`TRACKING.WANDB.ENABLED` must be true or false, got 0"),
    # seeds: every generator (torch 64-bit, numpy's legacy 32-bit) takes [0, 2**32 - 1]
    ("train-seed-overflows", {"TRAIN.SEED": 99999999999999999999999},
     f"`TRAIN.SEED` must be in [0, {MAX_SEED}], got 99999999999999999999999"),
    ("train-seed-2-to-the-32", {"TRAIN.SEED": 2**32}, f"`TRAIN.SEED` must be in [0, {MAX_SEED}], got {2**32}"),
    ("data-seed-negative", {"DATA.SEED": -1}, f"`DATA.SEED` must be in [0, {MAX_SEED}], got -1"),
    # names listed twice
    ("ranks-twice", {"DATA.RANKS": ["family", "genus", "genus"]}, "`DATA.RANKS` lists 'genus' twice"),
    ("features-twice", {"DATA.FEATURES": ["x1", "x2", "x1"]}, "`DATA.FEATURES` lists 'x1' twice"),
    ("ranks-empty", {"DATA.RANKS": []}, "`DATA.RANKS` must not be empty, got []"),
    ("rank-name-empty", {"DATA.RANKS": ["family", ""]}, "`DATA.RANKS.1` must not be empty, got ''"),
    # other nonsense
    ("epochs-fractional", {"TRAIN.EPOCHS": 2.5}, "`TRAIN.EPOCHS` must be a whole number, got 2.5"),
    ("batch-size-zero", {"TRAIN.BATCH_SIZE": 0}, "`TRAIN.BATCH_SIZE` must be >= 1, got 0"),
    ("lr-negative", {"TRAIN.LR": -0.001}, "`TRAIN.LR` must be in [1e-08, 10], got -0.001"),
    ("val-fraction-1", {"DATA.VAL_FRACTION": 1.0}, "`DATA.VAL_FRACTION` must be in [0.01, 0.99], got 1.0"),
    ("num-threads-100000", {"TRAIN.NUM_THREADS": 100000}, "`TRAIN.NUM_THREADS` must be in [0, 1024], got 100000"),
    ("store-empty", {"TRACKING.STORE": ""}, "`TRACKING.STORE` must not be empty, got ''"),
    ("init-from-empty", {"TRAIN.INIT_FROM": ""}, "`TRAIN.INIT_FROM` must not be empty, got ''"),
    ("multilabel-rank-out-of-range", {"DATA.SYNTHETIC.MULTILABEL_RANK": 2},
     "`DATA.SYNTHETIC.MULTILABEL_RANK` must be a rank index of BRANCHING, in [0, 1], got 2"),
    ("branching-empty", {"DATA.SYNTHETIC.BRANCHING": [], "DATA.SYNTHETIC.NULL_RATES": []},
     "`DATA.SYNTHETIC.BRANCHING` must not be empty, got []"),
    ("synthetic-too-many-classes", {"DATA.SYNTHETIC.BRANCHING": [1000, 1000]},
     "`DATA.SYNTHETIC.BRANCHING` must give at most 100000 classes at the finest rank, got [1000, 1000] "
     "(1000000 classes)"),
    ("synthetic-too-many-values", {"DATA.SYNTHETIC.N": 10**9},
     "`DATA.SYNTHETIC.N` times NUM_FEATURES must be at most 100000000 values, got N=1000000000 and NUM_FEATURES=4"),
    ("set-attention-without-layers", {"MODEL.BACKBONE": "set_attention", "MODEL.HIDDEN": []},
     "`MODEL.HIDDEN` must list at least one layer size for BACKBONE 'set_attention', got []"),
    ("long-value-cut-short", {"TRAIN.DEVICE": "x" * 5000},
     f"`TRAIN.DEVICE` must be 'auto', 'cpu' or 'cuda', got '{'x' * 79}... (5002 characters)"),
]


@pytest.mark.parametrize("overrides, expected", [c[1:] for c in VALUE_CASES], ids=[c[0] for c in VALUE_CASES])
def test_bad_value_in_the_file(tmp_path, db, capsys, overrides, expected):
    cfg = write_config(tmp_path / "bad.yaml", db, **overrides)
    with store_unchanged(db):
        rc, err = train(capsys, cfg)
    assert_error_line(rc, err, f"{cfg}: {expected}")


# the same rules on the other ways a config is built: --set values (parsed as YAML), sweep grids
SET_CASES = [
    ("nan-yaml", "TRAIN.WEIGHT_DECAY=.nan", "`TRAIN.WEIGHT_DECAY` must be a finite number, got nan"),
    ("nan-text", "TRAIN.WEIGHT_DECAY=nan", "`TRAIN.WEIGHT_DECAY` must be a finite number, got 'nan'"),
    ("inf-in-list", "LOSS.RANK_WEIGHTS=[1, .inf]", "`LOSS.RANK_WEIGHTS.1` must be a finite number, got inf"),
    ("zero-rank-weights", "LOSS.RANK_WEIGHTS=[0, 0]", "`LOSS.RANK_WEIGHTS` must have a positive sum, got [0, 0]"),
    ("w-true", "LOSS.W=true", "`LOSS.W` must be a number, got true"),
    ("seed-overflows", "TRAIN.SEED=99999999999999999999999",
     f"`TRAIN.SEED` must be in [0, {MAX_SEED}], got 99999999999999999999999"),
    ("ranks-twice", "DATA.RANKS=[genus, genus]", "`DATA.RANKS` lists 'genus' twice"),
]


@pytest.mark.parametrize("override, expected", [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES])
def test_bad_set_override(tmp_path, db, capsys, override, expected):
    cfg = write_config(tmp_path / "good.yaml", db)
    with store_unchanged(db):
        rc, err = train(capsys, cfg, "--set", override)
    assert_error_line(rc, err, f"{cfg}: {expected}")


def test_alias_bomb_in_a_set_override_is_refused(tmp_path, db, capsys):
    levels = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    cfg = write_config(tmp_path / "good.yaml", db)
    with store_unchanged(db):
        rc, err = train(capsys, cfg, "--set", "LOSS.RANK_WEIGHTS=[" + ", ".join(levels) + "]")
    assert_error_line(rc, err, f"override `LOSS.RANK_WEIGHTS`: line 1: aliases expand this block to more than "
                               f"{MAX_YAML_VALUES:,} values (an alias bomb?); a config has about 60")


def test_sweep_grid_value_nan_is_refused(sweep_cli, no_ray, tmp_path, db, capsys):
    with store_unchanged(db):
        rc, out, err = sweep(sweep_cli, capsys, tmp_path, db, "--grid", "TRAIN.WEIGHT_DECAY=0,.nan")
    assert not no_ray
    assert_error_line(rc, err, "overrides: `TRAIN.WEIGHT_DECAY` must be a finite number, got nan")


def test_stored_config_with_nan_is_refused_on_resume(tmp_path, db, capsys):
    """A config from a dict (here a run row written by an older version): the same rules, naming the run."""
    bad = tiny_dict(db, **{"TRAIN.WEIGHT_DECAY": NAN})
    RunStore(db).create_run(bad, run_id="old-run", status="failed")
    before = snapshot(db)
    rc = cli_main(["resume", "old-run", "--store", str(db), "--no-progress"])
    assert_error_line(rc, capsys.readouterr().err, "run old-run: `TRAIN.WEIGHT_DECAY` must be a finite number, got nan")
    assert snapshot(db) == before


# ---------------------------------------------------------------------- the boundaries themselves are accepted
def test_largest_seeds_train(tmp_path, db, capsys):
    """MAX_SEED is a seed every generator takes (the trainer also seeds TRAIN.SEED + 1 and + 2)."""
    cfg = write_config(tmp_path / "seeds.yaml", db, **{"TRAIN.SEED": MAX_SEED, "DATA.SEED": MAX_SEED})
    before = snapshot(db)
    rc = cli_main(["train", "--config", str(cfg), "--no-progress", "--run-id", "big-seeds"])
    assert rc == 0, capsys.readouterr().err
    run = RunStore(db).run("big-seeds")
    assert run["status"] == "finished" and run["config"]["TRAIN"]["SEED"] == MAX_SEED
    assert [r for r in snapshot(db)["runs"] if r[0] == SEED_RUN] == before["runs"]
