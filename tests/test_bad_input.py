"""Bad input: a catalogue of wrong configs, data files, CLI arguments and sweep spaces.

Every case asserts the exact message, which names the file / row / key / value and what was expected,
and goes through the entry point a user would use (``python -m workbench`` via ``workbench.cli.main``
in-process, ``sweeps/run.py`` via its ``main``): exit code 2, one ``error: ...`` line, no traceback.

Every case runs against a run store that already holds one finished run (metrics, curves and a
checkpoint): all rows of ``runs``, ``metrics`` and ``curves`` (``SELECT *``) and the checkpoint files
are snapshot before the bad input and must be identical after it, so a rejected input never changes
what is stored and never leaves a half-written (queued) run row behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from workbench.cli import main as cli_main
from workbench.config import Config, LossConfig, TrainConfig, apply_overrides
from workbench.data import load_table
from workbench.trainer import CHECKPOINT_NAME, Trainer

REPO = Path(__file__).resolve().parents[1]
SEED_RUN = "seed-run"

# the seeded run: 2 ranks (level0 > level1) of 2 x 2 synthetic classes, a 1-epoch MLP with HIDDEN [8]
TINY = {
    "DATA.NAME": "synthetic", "DATA.SYNTHETIC.N": 300, "DATA.SYNTHETIC.NUM_FEATURES": 4,
    "DATA.SYNTHETIC.BRANCHING": [2, 2], "DATA.SYNTHETIC.NULL_RATES": [0.0, 0.2],
    "MODEL.HIDDEN": [8], "TRAIN.EPOCHS": 1, "TRAIN.BATCH_SIZE": 64, "TRAIN.NUM_THREADS": 1,
    "TRAIN.DEVICE": "cpu", "TRACKING.WANDB.ENABLED": False,
}


def tiny_dict(db: Path, **overrides) -> dict:
    """The tiny config as a plain dict with ``overrides`` applied *without* validation (bad values stay)."""
    good = Config().with_overrides({**TINY, "TRACKING.STORE": str(db)}).to_dict()
    return apply_overrides(good, overrides)


def write_config(path: Path, db: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump(tiny_dict(db, **overrides), sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------- the store with one finished run
@pytest.fixture(scope="module")
def seeded_dir(tmp_path_factory) -> Path:
    """A store folder (``w.db`` + ``checkpoints/``) holding one finished 1-epoch run, trained once per module."""
    folder = tmp_path_factory.mktemp("seeded") / "runs"
    cfg = Config.from_dict(tiny_dict(folder / "w.db"))
    trainer = Trainer(cfg, run_id=SEED_RUN, progress=False)
    assert trainer.fit() == "finished"
    return folder


@pytest.fixture
def db(tmp_path, seeded_dir) -> Path:
    """This test's own copy of the seeded store (so a case that did write cannot hide in another's)."""
    shutil.copytree(seeded_dir, tmp_path / "runs")
    return tmp_path / "runs" / "w.db"


def snapshot(db: Path) -> dict:
    """Every row of runs/metrics/curves, in primary-key order, plus a hash of every checkpoint file."""
    con = sqlite3.connect(db)
    try:
        rows = {
            "runs": con.execute("SELECT * FROM runs ORDER BY id").fetchall(),
            "metrics": con.execute("SELECT * FROM metrics ORDER BY run_id, epoch, split, key").fetchall(),
            "curves": con.execute("SELECT * FROM curves ORDER BY run_id, epoch, split, rank, curve, tau").fetchall(),
        }
    finally:
        con.close()
    ckpts = db.parent / "checkpoints"
    rows["checkpoints"] = {
        str(p.relative_to(ckpts)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ckpts.rglob("*")) if p.is_file()
    }
    return rows


@contextmanager
def store_unchanged(db: Path):
    before = snapshot(db)
    assert [r[0] for r in before["runs"]] == [SEED_RUN], "the store starts with exactly the seeded run"
    assert before["metrics"] and before["curves"] and before["checkpoints"]
    yield
    after = snapshot(db)
    assert [r[0] for r in after["runs"]] == [SEED_RUN], "no new (half-written) run row"
    for table in before:
        assert after[table] == before[table], f"{table} changed"


@pytest.mark.parametrize("write", [
    lambda store: store.create_run({}, run_id="half-written", status="queued"),
    lambda store: store.write_epoch(SEED_RUN, 0, {"core/val_loss": 123.0}),
    lambda store: checkpoint(store.path).write_bytes(b"overwritten"),
], ids=["new-run-row", "changed-metric", "changed-checkpoint"])
def test_the_snapshot_sees_every_kind_of_change(db, write):
    """The detector itself: each kind of write a bad input could make is caught."""
    from workbench.store import RunStore

    with pytest.raises(AssertionError):
        with store_unchanged(db):
            write(RunStore(db))


def checkpoint(db: Path) -> Path:
    return db.parent / "checkpoints" / SEED_RUN / CHECKPOINT_NAME


def assert_error_line(rc: int, err: str, expected: str) -> None:
    assert "Traceback" not in err
    assert rc == 2, err
    assert err == f"error: {expected}\n"


def train(capsys, config: Path, *extra: str) -> tuple[int, str]:
    rc = cli_main(["train", "--config", str(config), "--no-progress", *extra])
    captured = capsys.readouterr()
    return rc, captured.err


# ---------------------------------------------------------------------- 1. configs
# a section's keys in their declared order, as the message lists them (the config model is their one home)
LOSS_KEYS, TRAIN_KEYS = (", ".join(section.model_fields) for section in (LossConfig, TrainConfig))
# (id, bad values written into the YAML file, expected message given the paths)
CONFIG_CASES = [
    ("unknown-key", {"LOSS.FOO": 1},
     lambda c: f"{c.cfg}: `LOSS.FOO` is not a known key; allowed keys here: {LOSS_KEYS}"),
    ("unknown-section", {"OPTIM": {"LR": 0.1}},
     lambda c: f"{c.cfg}: `OPTIM` is not a known key; allowed keys here: DATA, MODEL, LOSS, TRAIN, SCHEDULE, AUG, TRACKING"),
    ("wrong-type-int", {"TRAIN.EPOCHS": "ten"},
     lambda c: f"{c.cfg}: `TRAIN.EPOCHS` must be a valid integer, unable to parse string as an integer, got 'ten'"),
    ("wrong-type-list", {"LOSS.W": [0.3]},
     lambda c: f"{c.cfg}: `LOSS.W` must be a valid number, got [0.3]"),
    ("w-above-1", {"LOSS.W": 1.5}, lambda c: f"{c.cfg}: `LOSS.W` must be in [0, 1], got 1.5"),
    ("w-below-0", {"LOSS.W": -0.1}, lambda c: f"{c.cfg}: `LOSS.W` must be in [0, 1], got -0.1"),
    ("start-epoch-after-end", {"SCHEDULE.NULL_MASKING.START_EPOCH": 10, "SCHEDULE.NULL_MASKING.END_EPOCH": 5},
     lambda c: f"{c.cfg}: `SCHEDULE.NULL_MASKING.START_EPOCH` must be <= END_EPOCH, got START_EPOCH=10 and END_EPOCH=5"),
    ("negative-epochs", {"TRAIN.EPOCHS": -3}, lambda c: f"{c.cfg}: `TRAIN.EPOCHS` must be >= 1, got -3"),
    ("start-prob-above-1", {"SCHEDULE.NULL_MASKING.START_PROB": 1.2},
     lambda c: f"{c.cfg}: `SCHEDULE.NULL_MASKING.START_PROB` must be in [0, 1], got 1.2"),
    ("lr-zero", {"TRAIN.LR": 0}, lambda c: f"{c.cfg}: `TRAIN.LR` must be in [1e-08, 10], got 0"),
    ("unknown-backbone", {"MODEL.BACKBONE": "cnn"},
     lambda c: f"{c.cfg}: `MODEL.BACKBONE` must be 'mlp', 'set_attention', 'resnet', 'timm' or 'torchvision', got 'cnn'"),
    ("negative-rank-weight", {"LOSS.RANK_WEIGHTS": [1.0, -1.0]},
     lambda c: f"{c.cfg}: `LOSS.RANK_WEIGHTS.1` must be >= 0, got -1.0"),
    ("file-without-path", {"DATA.NAME": "file"}, lambda c: f"{c.cfg}: `DATA.PATH` is required when NAME is 'file'"),
    # valid alone, wrong for this data or this store: checked before the run row is created
    ("rank-weights-wrong-length", {"LOSS.RANK_WEIGHTS": [0.5, 0.3, 0.2]},
     lambda c: "`LOSS.RANK_WEIGHTS` must have 2 entries (one per rank: level0, level1), got [0.5, 0.3, 0.2]"),
    ("set-attention-on-flat-features", {"MODEL.BACKBONE": "set_attention"},
     lambda c: "`MODEL.BACKBONE` 'set_attention' needs padded sets, features (N, S, F) with a valid mask; "
               "the data 'synthetic' has features of shape (180, 4); use 'mlp'"),
    ("init-from-missing", {"TRAIN.INIT_FROM": "no-such-run"},
     lambda c: f"`TRAIN.INIT_FROM` must be a checkpoint file, a run folder or a run id in {c.db}, got 'no-such-run'"),
    # the seeded run trained on 2 x 2 classes; this run's data has 3 classes at level0
    ("init-from-other-taxonomy", {"TRAIN.INIT_FROM": SEED_RUN, "DATA.SYNTHETIC.BRANCHING": [3, 2]},
     lambda c: f"`TRAIN.INIT_FROM` {c.ckpt}: its taxonomy differs from this run's data (rank 'level0': "
               "2 classes in the checkpoint vs 3 here; e.g. ['c2'] only here)"),
    ("init-from-other-ranks", {"TRAIN.INIT_FROM": "CKPT", "DATA.SYNTHETIC.BRANCHING": [2, 2, 2],
                               "DATA.SYNTHETIC.NULL_RATES": [0.0, 0.0, 0.0]},
     lambda c: f"`TRAIN.INIT_FROM` {c.ckpt}: its taxonomy differs from this run's data "
               "(ranks ['level0', 'level1'] in the checkpoint vs ['level0', 'level1', 'level2'] here)"),
    ("init-from-other-architecture", {"TRAIN.INIT_FROM": SEED_RUN, "MODEL.HIDDEN": [16]},
     lambda c: f"`TRAIN.INIT_FROM` {c.ckpt}: the model architecture differs (4 tensor(s), e.g. "
               "'backbone.net.0.weight'): the checkpoint has MODEL.HIDDEN=[8], this run MODEL.HIDDEN=[16]"),
]


class Paths:
    def __init__(self, cfg: Path, db: Path):
        self.cfg, self.db, self.ckpt = cfg, db, checkpoint(db)


@pytest.mark.parametrize("overrides, expected", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(tmp_path, db, capsys, overrides, expected):
    if overrides.get("TRAIN.INIT_FROM") == "CKPT":  # by checkpoint file instead of run id
        overrides = {**overrides, "TRAIN.INIT_FROM": str(checkpoint(db))}
    cfg = write_config(tmp_path / "bad.yaml", db, **overrides)
    with store_unchanged(db):
        rc, err = train(capsys, cfg)
    assert_error_line(rc, err, expected(Paths(cfg, db)))


def test_the_good_config_trains(tmp_path, db, capsys):
    """Control: the config every bad case is one edit away from trains, next to the seeded run."""
    before = snapshot(db)
    rc = cli_main(["train", "--config", str(write_config(tmp_path / "good.yaml", db)), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    after = snapshot(db)
    assert len(after["runs"]) == 2
    assert set(before["metrics"]) <= set(after["metrics"]) and set(before["curves"]) <= set(after["curves"])
    assert [r for r in after["runs"] if r[0] == SEED_RUN] == before["runs"]


# ---------------------------------------------------------------------- 1. data files
HEADER = "family,genus,x1,x2,w\n"
GOOD_ROWS = "A,a1,1.0,2.0,1\nA,a2,1.5,2.5,1\nB,b1,3.0,1.0,2\nB,,3.0,1.0,2\n"
HUGE = 5_000_000  # characters: a 5 MB line or cell


def _huge_line() -> str:
    return HEADER + "A,a1,1,2,1" + ",1" * (HUGE // 2) + "\n" + GOOD_ROWS


def _huge_feature_cell() -> str:
    return HEADER + "A,a1,1,2,1\n" + "A,a1," + "9" * HUGE + ",3,1\n" + GOOD_ROWS


# (id, file name, content (str is written as UTF-8, bytes as they are, None: no file), config overrides, expected)
DATA_CASES = [
    ("missing-file", "nowhere.csv", None, {}, lambda p: f"{p}: file not found"),
    ("empty", "empty.csv", "", {}, lambda p: f"{p}: file is empty"),
    ("header-only", "header.csv", HEADER, {}, lambda p: f"{p}: no data rows"),
    ("missing-rank-column", "norank.csv", HEADER.replace("genus", "gen") + GOOD_ROWS, {},
     lambda p: f"{p}: column(s) ['genus'] not found; columns are ['family', 'gen', 'x1', 'x2', 'w']"),
    ("non-numeric-feature-named", "text.csv", HEADER + GOOD_ROWS.replace("1.5,2.5", "1.5,abc"),
     {"DATA.FEATURES": ["x1", "x2"]},
     lambda p: f"{p}: column 'x2', row 3 (spreadsheet row numbers, header = row 1): expected a finite number, got 'abc'"),
    # features inferred: a numeric column with one text cell used to drop out of the features silently
    ("non-numeric-feature-inferred", "text2.csv", HEADER + GOOD_ROWS.replace("1.5,2.5", "1.5,abc"), {},
     lambda p: f"{p}: column 'x2', row 3 (spreadsheet row numbers, header = row 1): expected a finite number, got 'abc' "
               "(the column is otherwise numeric; fix the cell, or list the feature columns in DATA.FEATURES)"),
    ("all-labels-null", "nulls.csv", HEADER + ",,1,2,1\n,,2,3,1\n", {},
     lambda p: f"{p}: every label in columns ['family', 'genus'] is empty/null; nothing to learn"),
    ("inconsistent-parents", "twoparents.csv", HEADER + GOOD_ROWS + "B,a1,1.0,1.0,1\n", {},
     lambda p: f"{p}: every genus class needs exactly one parent at rank family; 1 has more than one "
               "(spreadsheet row numbers, header = row 1):\n  genus 'a1': family 'A' in row 2; family 'B' in row 6"),
    # a row that contradicts the tree across a null rank (genus g2 is under order O2, the row says O1)
    ("contradiction-across-null-rank", "skip.csv",
     "order,family,genus,x1,w\nO1,F1,g1,1,1\nO2,F2,g2,2,1\nO1,,g2,3,1\n", {"DATA.RANKS": ["order", "family", "genus"]},
     lambda p: f"{p}: 1 row contradicts the taxonomy (spreadsheet row numbers, header = row 1):\n"
               "  row 4: genus 'g2' belongs to order 'O2', but the row says 'O1'"),
    ("duplicate-header", "dupe.csv", "family,genus,x1,x1,w\nA,a1,1,2,1\nB,b1,2,3,1\n", {},
     lambda p: f"{p}: duplicate column name(s) in the header: ['x1']"),
    ("latin-1", "latin1.csv", (HEADER + "A,a1,1,2,1\nB,caf\u00e9,2,3,1\n").encode("latin-1"), {},
     lambda p: f"{p}: row 3 (spreadsheet row numbers, header = row 1), byte 6 of the line, is not UTF-8 text: "
               "save the file as UTF-8"),
    ("ragged-row", "ragged.csv", HEADER + GOOD_ROWS + "A,a1,1,2,1,7,8\n", {},
     lambda p: f"{p}: could not be parsed: Error tokenizing data. C error: Expected 5 fields in line 6, saw 7"),
    # extra fields in the *first* row used to become index columns: every column shifted, silently
    ("first-row-wider-than-header", "trailing.csv", HEADER + "A,a1,1,2,1,\n" + GOOD_ROWS, {},
     lambda p: f"{p}: could not be parsed: Error tokenizing data. C error: Expected 5 fields in line 2, saw 6"),
    # a 5 MB line of 2.5 million fields: used to take minutes and > 6 GB (pandas built a 2.5M-level index)
    ("huge-line", "hugeline.csv", _huge_line, {},
     lambda p: f"{p}: could not be parsed: Error tokenizing data. C error: Expected 5 fields in line 2, "
               f"saw {HUGE // 2 + 5}"),
    # a 5 MB feature cell: a clear error whose message quotes the cell cut short, not 5 MB of it
    ("huge-feature-cell", "hugecell.csv", _huge_feature_cell, {},
     lambda p: f"{p}: column 'x1', row 3 (spreadsheet row numbers, header = row 1): expected a finite number, "
               f"got '{'9' * 59}... ({HUGE + 2} characters) "
               "(the column is otherwise numeric; fix the cell, or list the feature columns in DATA.FEATURES)"),
    ("unsupported-extension", "data.xlsx", HEADER + GOOD_ROWS, {},
     lambda p: f"{p}: unsupported file type '.xlsx'; expected .csv, .tsv or .parquet"),
    ("negative-sample-weight", "negw.csv", HEADER + GOOD_ROWS.replace("B,b1,3.0,1.0,2", "B,b1,3.0,1.0,-2"), {},
     lambda p: f"{p}: column 'w', row 4 (spreadsheet row numbers, header = row 1): sample weight must be >= 0, got -2.0"),
    ("infinite-sample-weight", "infw.csv", HEADER + GOOD_ROWS.replace("B,b1,3.0,1.0,2", "B,b1,3.0,1.0,inf"), {},
     lambda p: f"{p}: column 'w', row 4 (spreadsheet row numbers, header = row 1): expected a finite number, got inf"),
    ("too-few-rows-to-split", "two.csv", HEADER + "A,a1,1,2,1\nB,b1,2,3,1\n", {},
     lambda p: f"{p.name}: 2 samples are too few for DATA.VAL_FRACTION=0.2"),
    # ';' is sniffed as the delimiter (it used to give one column): the bad cell is found and located
    ("semicolon-separated", "semi.csv", (HEADER + GOOD_ROWS.replace("1.5,2.5", "1.5,abc")).replace(",", ";"), {},
     lambda p: f"{p}: column 'x2', row 3 (spreadsheet row numbers, header = row 1): expected a finite number, "
               "got 'abc' (the column is otherwise numeric; fix the cell, or list the feature columns in DATA.FEATURES)"),
]


def data_config(tmp_path: Path, db: Path, data: Path, **overrides) -> Path:
    over = {"DATA.NAME": "file", "DATA.PATH": str(data), "DATA.RANKS": ["family", "genus"],
            "DATA.SAMPLE_WEIGHT": "w", **overrides}
    return write_config(tmp_path / "data.yaml", db, **over)


def write_data(path: Path, content) -> Path:
    content = content() if callable(content) else content
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, content, overrides, expected", [c[1:] for c in DATA_CASES],
                         ids=[c[0] for c in DATA_CASES])
def test_bad_data_file(tmp_path, db, capsys, name, content, overrides, expected):
    check_bad_data_file(tmp_path, db, capsys, name, content, overrides, expected, limit_s=20)


def check_bad_data_file(tmp_path, db, capsys, name, content, overrides, expected, limit_s: float) -> None:
    """Train on the data file ``name`` written from ``content``: one expected error line, within ``limit_s``
    seconds, and the store unchanged."""
    data = write_data(tmp_path / name, content)
    cfg = data_config(tmp_path, db, data, **overrides)
    with store_unchanged(db):
        t0 = time.perf_counter()
        rc, err = train(capsys, cfg)
        took = time.perf_counter() - t0
    assert_error_line(rc, err, expected(data))
    assert took < limit_s, f"{took:.1f} s: a bad file must fail fast"


# degenerate but valid data: accepted, and the run trains
ACCEPTED = [
    # one class at every rank (a single-species survey): a degenerate but valid taxonomy. The run
    # trains; predicting that one class everywhere is right here, so constant_predictions (which
    # needs targets of several classes) must stay quiet.
    ("single-class-at-every-rank", HEADER + "".join(f"A,a1,{i % 7},{i % 3},1\n" for i in range(30)),
     ["constant_predictions"]),
    # (a rank column empty everywhere used to train here, its head learning nothing; it is now refused
    # naming the rank: tests/test_bad_input_data.py, "one-rank-with-no-label")
]


@pytest.mark.parametrize("content, quiet", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_degenerate_data_trains(tmp_path, db, capsys, content, quiet):
    data = write_data(tmp_path / "data.csv", content)
    before = snapshot(db)
    rc = cli_main(["train", "--config", str(data_config(tmp_path, db, data)), "--no-progress", "--run-id", "new"])
    assert rc == 0, capsys.readouterr().err
    after = snapshot(db)
    assert [r for r in after["runs"] if r[0] == SEED_RUN] == before["runs"], "the seeded run is untouched"
    assert set(before["metrics"]) <= set(after["metrics"])
    con = sqlite3.connect(db)
    status, health = con.execute("SELECT status, health FROM runs WHERE id = 'new'").fetchone()
    val_loss = con.execute("SELECT value FROM metrics WHERE run_id = 'new' AND key = 'core/val_loss'").fetchone()[0]
    con.close()
    assert status == "finished" and val_loss is not None  # finite (NaN is stored as NULL)
    for check in quiet:
        assert check not in json.loads(health)


def test_huge_label_cell_loads(tmp_path):
    """A 5 MB label is odd but valid text: it loads (quickly) as one more class."""
    path = tmp_path / "hugelabel.csv"
    path.write_text(HEADER + "A," + "a" * HUGE + ",1,2,1\n" + GOOD_ROWS, encoding="utf-8")
    t0 = time.perf_counter()
    ds = load_table(path, ["family", "genus"], sample_weight="w")
    assert time.perf_counter() - t0 < 20
    assert "a" * HUGE in ds.taxonomy.vocab[1] and len(ds) == 5


# ---------------------------------------------------------------------- 1. CLI arguments
def _good(tmp_path, db):
    return write_config(tmp_path / "good.yaml", db)


# (id, argv given the paths, exit code, expected last stderr line)
CLI_CASES = [
    ("unknown-subcommand", lambda c: ["fly"],
     "python -m workbench: error: argument command: invalid choice: 'fly' (choose from 'train', 'resume', 'runs', 'predict', 'export', 'embed', 'baseline', 'sweep')"),
    ("no-subcommand", lambda c: [], "python -m workbench: error: the following arguments are required: command"),
    ("missing-config", lambda c: ["train"],
     "python -m workbench train: error: the following arguments are required: --config"),
    ("unknown-option", lambda c: ["train", "--config", str(c.cfg), "--bogus"],
     "python -m workbench: error: unrecognized arguments: --bogus"),
    ("limit-not-an-int", lambda c: ["runs", "--store", str(c.db), "--limit", "abc"],
     "python -m workbench runs: error: argument --limit: invalid int value: 'abc'"),
    ("resume-without-run-id", lambda c: ["resume", "--store", str(c.db)],
     "python -m workbench resume: error: the following arguments are required: run_id"),
    ("set-without-equals", lambda c: ["train", "--config", str(c.cfg), "--set", "LOSS.W"],
     "error: override 'LOSS.W' must look like KEY.PATH=value, e.g. LOSS.W=0.3"),
    ("set-into-a-value", lambda c: ["train", "--config", str(c.cfg), "--set", "LOSS.W.X=1"],
     "error: override `LOSS.W.X`: `W` is a value, not a section"),
    ("set-unknown-key", lambda c: ["train", "--config", str(c.cfg), "--set", "TRAIN.EPOCH=3"],
     "error: {cfg}: `TRAIN.EPOCH` is not a known key; allowed keys here: " + TRAIN_KEYS),
    ("config-not-found", lambda c: ["train", "--config", str(c.tmp / "nowhere.yaml")],
     "error: {tmp}/nowhere.yaml: config file not found"),
    ("config-is-a-folder", lambda c: ["train", "--config", str(c.tmp)], "error: {tmp}: is a folder, not a config file"),
    ("config-latin-1", lambda c: ["train", "--config", str(c.latin)],
     "error: {tmp}/latin.yaml: line 2 is not UTF-8 text (byte 0xe9): save the file as UTF-8"),
    ("config-not-yaml", lambda c: ["train", "--config", str(c.broken)],
     "error: {tmp}/broken.yaml: not valid YAML at line 2, column 1: expected ',' or '}}', but got '<stream end>' "
     "(while parsing a flow mapping that starts at line 1, column 7)"),
    # an existing, finished run: `train --run-id` would overwrite its stored epochs
    ("run-id-of-a-finished-run", lambda c: ["train", "--config", str(c.cfg), "--run-id", SEED_RUN],
     "error: {db}: run 'seed-run' already exists (status finished, epochs done: 1); `train --run-id` takes a new id (or a "
     "queued run's); continue this one with `python -m workbench resume seed-run --store {db}`"),
    ("resume-unknown-run", lambda c: ["resume", "no-such-run", "--store", str(c.db)],
     "error: {db}: no run with id 'no-such-run'"),
    ("store-is-a-folder", lambda c: ["runs", "--store", str(c.tmp)],
     "error: {tmp}: is a folder; the run store is a file (e.g. runs/workbench.db)"),
    ("store-not-sqlite", lambda c: ["runs", "--store", str(c.notdb)],
     "error: {tmp}/notes.db: cannot open the run store: file is not a database"),
]


class CliPaths:
    def __init__(self, tmp: Path, db: Path):
        self.tmp, self.db = tmp, db
        self.cfg = _good(tmp, db)
        self.latin = tmp / "latin.yaml"
        self.latin.write_bytes("LOSS: {W: 0.3}\n# caf\u00e9\n".encode("latin-1"))
        self.broken = tmp / "broken.yaml"
        self.broken.write_text("LOSS: {W: 0.3\n")
        self.notdb = tmp / "notes.db"
        self.notdb.write_text("these are my notes, not a SQLite database " * 10)


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_cli_arguments(tmp_path, db, capsys, argv, expected):
    paths = CliPaths(tmp_path, db)
    with store_unchanged(db):
        try:
            rc = cli_main(argv(paths))
        except SystemExit as e:  # argparse exits by itself
            rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == expected.format(cfg=paths.cfg, tmp=tmp_path, db=db)
    if expected.startswith("error: "):
        assert err.count("\n") == 1, f"one line: {err!r}"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def test_cli_subprocess_bad_override_is_one_line(tmp_path, db):
    """The real `python -m workbench` process: exit code 2, one line, no traceback, nothing stored."""
    cfg = _good(tmp_path, db)
    with store_unchanged(db):
        res = subprocess.run([sys.executable, "-m", "workbench", "train", "--config", str(cfg), "--set", "LOSS.W"],
                             cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr == "error: override 'LOSS.W' must look like KEY.PATH=value, e.g. LOSS.W=0.3\n"
    assert res.stdout == ""


# ---------------------------------------------------------------------- 1. sweep spaces
@pytest.fixture(scope="module")
def sweep_cli():
    """The sweep CLI (``python -m workbench sweep``; ``sweeps/run.py`` is a shim over the same ``main``)."""
    import workbench.sweep_cli

    return workbench.sweep_cli


@pytest.fixture
def no_ray(monkeypatch):
    """Fail loudly if a case got as far as starting Ray or a sweep (they must fail before)."""
    import workbench.sweep

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("Ray was started for a bad sweep space")

    monkeypatch.setattr(workbench.sweep, "connect_ray", refuse)
    monkeypatch.setattr(workbench.sweep, "run_sweep", refuse)
    return calls


def sweep(sweep_cli, capsys, tmp_path, db, *args) -> tuple[int, str, str]:
    cfg = _good(tmp_path, db)
    argv = ["--config", str(cfg), "--store", str(db), "--results-dir", str(tmp_path / "ray"), *args]
    rc = sweep_cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


SWEEP_CASES = [
    ("w-above-1-in-grid", ["--w", "0,0.5,1.5"], "overrides: `LOSS.W` must be in [0, 1], got 1.5"),
    ("w-below-0-in-range", ["--w=-0.5:0.5:0.5"], "overrides: `LOSS.W` must be in [0, 1], got -0.5"),
    ("empty-grid-values", ["--grid", "LOSS.W="], "sweep grid `LOSS.W` has no values"),
    ("empty-alias-values", ["--w", ""], "sweep grid `LOSS.W` has no values"),
    ("range-step-zero", ["--w", "0:1:0"], "range '0:1:0': step must be > 0"),
    ("range-step-negative", ["--w", "0:1:-0.25"], "range '0:1:-0.25': step must be > 0"),
    ("range-high-below-low", ["--w", "1:0:0.25"], "range '1:0:0.25' (lo:hi:step): hi must be >= lo"),
    ("grid-without-equals", ["--grid", "LOSS.W"], "--grid 'LOSS.W' must look like KEY=v1,v2"),
    ("grid-unknown-key", ["--grid", "LOSS.FOO=1,2"],
     f"overrides: `LOSS.FOO` is not a known key; allowed keys here: {LOSS_KEYS}"),
    ("start-prob-above-1", ["--start-prob", "0,2"],
     "overrides: `SCHEDULE.NULL_MASKING.START_PROB` must be in [0, 1], got 2"),
    # one grid point (END_EPOCH=1) contradicts the base START_EPOCH=3: every combination is checked
    ("end-epoch-before-start-epoch", ["--end-epoch", "5,1", "--set", "SCHEDULE.NULL_MASKING.START_EPOCH=3"],
     "overrides: `SCHEDULE.NULL_MASKING.START_EPOCH` must be <= END_EPOCH, got START_EPOCH=3 and END_EPOCH=1"),
    ("dist-low-above-high", ["--dist", "LOSS.W=uniform:0.5:0.1"],
     "sweep distribution `LOSS.W` needs low < high, got 0.5 and 0.1"),
    ("dist-low-equals-high", ["--dist", "LOSS.W=uniform:0.5:0.5"],
     "sweep distribution `LOSS.W` needs low < high, got 0.5 and 0.5"),
    ("dist-unknown-kind", ["--dist", "LOSS.W=normal:0:1"],
     "sweep distribution `LOSS.W` must be uniform or loguniform, got 'normal'"),
    ("dist-bound-outside-range", ["--dist", "LOSS.W=uniform:0:2"], "overrides: `LOSS.W` must be in [0, 1], got 2.0"),
    ("seeds-zero", ["--seeds", "0"], "`--seeds` must be >= 1, got 0"),
    ("bad-base-override", ["--set", "LOSS.W=2"], "{cfg}: `LOSS.W` must be in [0, 1], got 2"),
]


@pytest.mark.parametrize("args, expected", [c[1:] for c in SWEEP_CASES], ids=[c[0] for c in SWEEP_CASES])
def test_bad_sweep_space(sweep_cli, no_ray, tmp_path, db, capsys, args, expected):
    with store_unchanged(db):
        rc, out, err = sweep(sweep_cli, capsys, tmp_path, db, *args)
    assert not no_ray
    assert_error_line(rc, err, expected.format(cfg=tmp_path / "good.yaml"))
    assert "sweep:" not in out and not (tmp_path / "ray").exists()


MALFORMED = [
    ("dist-missing-high", ["--dist", "LOSS.W=uniform:0.5"], ["--dist", "'LOSS.W=uniform:0.5'", "KEY=uniform:lo:hi"]),
    ("dist-without-equals", ["--dist", "LOSS.W"], ["--dist", "'LOSS.W'", "KEY=uniform:lo:hi"]),
    ("dist-bounds-not-numbers", ["--dist", "LOSS.W=uniform:a:b"], ["--dist", "'LOSS.W=uniform:a:b'", "number"]),
    ("range-step-not-a-number", ["--w", "0:1:abc"], ["'0:1:abc'", "lo:hi:step"]),
]


@pytest.mark.parametrize("args", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_sweep_argument_fails_before_ray(sweep_cli, no_ray, tmp_path, db, capsys, args):
    with store_unchanged(db):
        rc, out, err = sweep(sweep_cli, capsys, tmp_path, db, *args)
    assert not no_ray
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("args, wanted", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_sweep_argument_message_names_option_value_and_form(sweep_cli, no_ray, tmp_path, db, capsys,
                                                                        args, wanted):
    rc, out, err = sweep(sweep_cli, capsys, tmp_path, db, *args)
    assert rc == 2
    for part in wanted:
        assert part in err, f"{part!r} not in {err!r}"


def test_sweep_subprocess_bad_space_exits_2_before_ray(tmp_path, db):
    """The real `python sweeps/run.py` process: exit 2, one error line, no traceback, no Ray, nothing stored."""
    cfg = _good(tmp_path, db)
    with store_unchanged(db):
        res = subprocess.run([sys.executable, str(REPO / "sweeps" / "run.py"), "--config", str(cfg), "--store", str(db),
                              "--results-dir", str(tmp_path / "ray"), "--w", "0,1.5"],
                             cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr == "error: overrides: `LOSS.W` must be in [0, 1], got 1.5\n"
    assert "sweep:" not in res.stdout and not (tmp_path / "ray").exists()
