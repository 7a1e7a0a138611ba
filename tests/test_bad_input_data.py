"""Bad input in data files: data whose meaning would change silently, files that are not what their name
says, tables too wide to parse, and `resume` on data that changed under a run.

Like ``test_bad_input.py`` (whose seeded store and snapshot this file reuses), every refused case goes
through the entry point a user would use (``python -m workbench`` via ``workbench.cli.main``): exit code 2,
exactly one ``error: ...`` line naming the file / column / rows / rank, no traceback, and the run store
that already holds one finished run is left exactly as it was. Data that is odd but legal loads, with its
meaning as written ("NA" is a class) and a ``warning:`` line where it is probably not what was meant.
"""

from __future__ import annotations

import gzip
import io
import sqlite3
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from test_bad_input import (  # noqa: F401  (db and seeded_dir are fixtures)
    HEADER, assert_error_line, check_bad_data_file, data_config, db, seeded_dir, snapshot, store_unchanged, train,
    write_data,
)

from workbench.cli import main as cli_main
from workbench.data import MAX_COLUMNS, SPREADSHEET_ROWS, load_table, train_val_split

ROWS = "A,a1,1.0,2.0,1\nA,a2,1.5,2.5,1\nB,b1,3.0,1.0,2\nB,b2,3.5,0.5,2\n" * 3  # 12 rows, 4 label paths
NOTE = f"({SPREADSHEET_ROWS})"


def _wide_header() -> str:
    """A header of 200,002 columns (and two rows): pandas took ~40 s on it before any check ran."""
    n = 200_000
    return ",".join(["family", "genus", *(f"x{i}" for i in range(n))]) + "\n" + ("A,a1" + ",1" * n + "\n") * 2


def _xlsx_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # what an .xlsx workbook is: a zip archive of XML parts
        z.writestr("[Content_Types].xml", "<Types/>")
    return buf.getvalue()


def _parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pd.read_csv(io.StringIO(HEADER + ROWS)).to_parquet(buf)
    return buf.getvalue()


# (id, file name, content, config overrides, expected message given the file's path)
DATA_CASES = [
    # finite in the file, inf as the float32 the model sees: used to train to NaN and report "finished"
    ("feature-overflows-float32", "big.csv", HEADER + ROWS.replace("A,a2,1.5,", "A,a2,1e39,", 2),
     {}, lambda p: f"{p}: column 'x1': 2 value(s) are not finite as 32-bit floats (values beyond the float32 range "
                   f"(|x| > 3.4e+38) become inf), e.g. 1e+39 in rows 3, 7 {NOTE}; fix or rescale them"),
    ("negative-feature-overflows-float32", "neg.csv", HEADER + ROWS.replace("B,b2,3.5,0.5", "B,b2,3.5,-4e38", 1),
     {}, lambda p: f"{p}: column 'x2': 1 value(s) are not finite as 32-bit floats (values beyond the float32 range "
                   f"(|x| > 3.4e+38) become inf), e.g. -4e+38 in row 5 {NOTE}; fix or rescale them"),
    # every label a null value (not only empty cells): used to train a model with no classes, chain accuracy 1.0
    ("every-label-a-null-value", "unknown.csv", HEADER + "unknown,sp.,1,2,1\nunknown,,2,3,1\n,unknown,3,4,1\n",
     {}, lambda p: f"{p}: every label in columns ['family', 'genus'] is empty/null; nothing to learn "
                   "(null values: empty cells and ['', 'sp.', 'unknown'])"),
    ("one-rank-with-no-label", "genusless.csv", HEADER + "".join(f"{'AB'[i % 2]},,{i},{i % 3},1\n" for i in range(12)),
     {}, lambda p: f"{p}: rank(s) ['genus'] have no non-null label (every value is empty or one of the null values "
                   "['', 'sp.', 'unknown']); drop the rank from DATA.RANKS or fix the column"),
    # the configured null values are the only ones: here "a1"/"a2"/"b1"/"b2" are all declared null
    ("configured-nulls-empty-a-rank", "declared.csv", HEADER + ROWS,
     {"DATA.NULL_VALUES": {"genus": ["a1", "a2", "b1", "b2"]}},
     lambda p: f"{p}: rank(s) ['genus'] have no non-null label (every value is empty or one of the null values "
               "['a1', 'a2', 'b1', 'b2']); drop the rank from DATA.RANKS or fix the column"),
    # a header 200k columns wide: refused from its first line, in well under a second
    ("header-too-wide", "wide.csv", _wide_header, {},
     lambda p: f"{p}: the header has 200,002 columns; at most {MAX_COLUMNS:,} are supported "
               "(wrong delimiter ','? a transposed table?)"),
    # binary files with a text name: say what they are
    ("gzip-named-csv", "data.csv", lambda: gzip.compress((HEADER + ROWS).encode()), {},
     lambda p: f"{p}: looks like a gzip file, not CSV text (it starts with the bytes 1f 8b); decompress it first (gunzip)"),
    ("xlsx-named-csv", "book.csv", _xlsx_bytes, {},
     lambda p: f"{p}: looks like a zip archive (an Excel .xlsx workbook is one), not CSV text (it starts with the "
               "bytes 50 4b 03 04); export the sheet as CSV (UTF-8), or unzip it"),
    ("xls-named-csv", "old.csv", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512, {},
     lambda p: f"{p}: looks like an Excel .xls workbook (OLE file), not CSV text (it starts with the bytes "
               "d0 cf 11 e0); export the sheet as CSV (UTF-8)"),
    ("parquet-named-tsv", "table.tsv", _parquet_bytes, {},
     lambda p: f"{p}: looks like a Parquet file, not TSV text (it starts with the bytes 50 41 52 31); "
               "give it the .parquet extension"),
]


@pytest.mark.parametrize("name, content, overrides, expected", [c[1:] for c in DATA_CASES],
                         ids=[c[0] for c in DATA_CASES])
def test_bad_data_file(tmp_path, db, capsys, name, content, overrides, expected):
    check_bad_data_file(tmp_path, db, capsys, name, content, overrides, expected, limit_s=5)


def test_parquet_list_column_as_a_feature(tmp_path, db, capsys):
    """A Parquet list column named as a feature: the column and its type, not a parse failure or a traceback."""
    data = tmp_path / "emb.parquet"
    pd.DataFrame({"family": ["A", "A", "B", "B"] * 3, "genus": ["a1", "a2", "b1", "b2"] * 3,
                  "x1": [float(i) for i in range(12)], "emb": [[0.5, 1.5, 2.5]] * 12, "w": [1.0] * 12}).to_parquet(data)
    cfg = data_config(tmp_path, db, data, **{"DATA.FEATURES": ["x1", "emb"]})
    with store_unchanged(db):
        rc, err = train(capsys, cfg)
    assert_error_line(rc, err, (
        f"{data}: column 'emb' holds list values (ndarray, e.g. of length 3), not numbers: e.g. [0.5, 1.5, 2.5] in "
        f"row 2 {NOTE}; a feature column must hold one number per row: expand it into one column per element, "
        "or leave it out of DATA.FEATURES / DATA.FEATURE_PREFIX"))


# ---------------------------------------------------------------------- meaning as written
def test_na_is_a_class_unless_configured_null(tmp_path):
    """"NA" (Namibia) is a real class: pandas' default missing-value list used to read it as null."""
    path = write_data(tmp_path / "countries.csv",
                      "country,city,x\nNA,Windhoek,1\nNA,Walvis Bay,2\nFR,Paris,3\nFR,Lyon,4\nnull,Oslo,5\n")
    ds = load_table(path, ["country", "city"])
    assert ds.taxonomy.vocab[0] == (None, "FR", "NA", "null")
    assert ds.targets[:, 0].tolist() == [2, 2, 1, 1, 3]
    # declared null, it is null (and only then)
    ds = load_table(path, ["country"], null_values={"country": ["NA", ""]})
    assert ds.taxonomy.vocab[0] == (None, "FR", "null") and ds.targets[:, 0].tolist() == [0, 0, 1, 1, 2]


def test_labels_equal_up_to_case_warn_on_the_cli(tmp_path, db, capsys):
    """Labels differing only in case or spacing stay separate classes (they may be), with a warning naming them."""
    rows = ROWS + "a,A1,2.0,2.0,1\nB,b  1,3.0,1.0,1\nB,b 1,3.0,1.0,1\n"
    data = write_data(tmp_path / "case.csv", HEADER + rows)
    rc = cli_main(["train", "--config", str(data_config(tmp_path, db, data)), "--no-progress", "--run-id", "case"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"warning: {data}: rank 'family' has 1 group(s) of labels that differ only in case or spacing and are " \
           "separate classes: 'A' / 'a'; make them identical if they are the same class\n" in err
    assert f"warning: {data}: rank 'genus' has 2 group(s) of labels that differ only in case or spacing and are " \
           "separate classes: 'A1' / 'a1'; 'b  1' / 'b 1'; make them identical if they are the same class\n" in err
    assert "Traceback" not in err


def test_split_reports_when_it_cannot_honour_the_fraction(tmp_path):
    """Label paths of one sample all go to train: val shrinks far below the asked fraction, and the split says so."""
    lines = [f"F{i},g{i},{i},1,1" for i in range(60)]  # 60 singleton paths
    lines += [f"A,a,{i},2,1" for i in range(40)]  # one path of 40
    ds = load_table(write_data(tmp_path / "rare.csv", HEADER + "\n".join(lines) + "\n"), ["family", "genus"],
                    sample_weight="w")
    with pytest.warns(UserWarning, match=r"DATA.VAL_FRACTION=0.2 was asked, but only 8.0% of the samples \(8 of "
                                         r"100\) are in val: 60 sample\(s\) are the only one with their label path"):
        train, val = train_val_split(ds, 0.2, seed=0)
    assert val.split == train.split == {"asked_val_fraction": 0.2, "asked_test_fraction": 0.0, "val_fraction": 0.08,
                                        "test_fraction": 0.0, "train": 92, "val": 8, "test": 0, "lone_samples": 60}
    assert len(val.warnings) == 1 and "8.0%" in val.warnings[0] and "split: 92 train / 8 val / 0 test" in val.describe()


# ---------------------------------------------------------------------- resume on changed data
@pytest.fixture
def trained_on_file(tmp_path, db, capsys):
    """A finished 1-epoch run ``filed`` trained on ``data.csv``, next to the seeded run."""
    data = write_data(tmp_path / "data.csv", HEADER + ROWS)
    rc = cli_main(["train", "--config", str(data_config(tmp_path, db, data)), "--no-progress", "--run-id", "filed"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    return data


def stored(db: Path) -> dict:
    """The snapshot without the run locks' holder records (pid, time), which any resume attempt rewrites."""
    snap = snapshot(db)
    snap["checkpoints"] = {k: v for k, v in snap["checkpoints"].items() if not k.endswith("/lock")}
    return snap


def resume(capsys, db: Path) -> tuple[int, str]:
    rc = cli_main(["resume", "filed", "--store", str(db), "--no-progress"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("edit, expected", [
    # a class renamed: the stored class ids would now mean other classes
    (lambda text: text.replace("b2", "b3"),
     "the taxonomy changed (rank 'genus': 4 classes in the checkpoint vs 4 here; e.g. ['b2'] only in the "
     "checkpoint), so class ids would mean other classes; restore the original data or train a new run"),
    # same classes, a feature value changed
    (lambda text: text.replace("3.5,0.5", "3.5,0.75", 1),
     "changed since its checkpoint (content hash {old} then, {new} now; 12 rows, same classes); "
     "restore the original data or train a new run"),
    # rows added
    (lambda text: text + "A,a1,1.0,2.0,1\n",
     "changed since its checkpoint (content hash {old} then, {new} now; 12 rows then, 13 now, same classes); "
     "restore the original data or train a new run"),
], ids=["class-renamed", "value-changed", "row-added"])
def test_resume_refuses_changed_data(tmp_path, db, capsys, trained_on_file, edit, expected):
    import torch

    from workbench.data import dataset_hash

    data = trained_on_file
    old = torch.load(db.parent / "checkpoints" / "filed" / "checkpoint.pt", weights_only=True)["data_hash"]
    data.write_text(edit(data.read_text()))
    new = dataset_hash(load_table(data, ["family", "genus"], sample_weight="w"))
    before = stored(db)
    rc, err = resume(capsys, db)
    assert_error_line(rc, err, f"cannot resume run filed: the data ({data}) " + (
        expected.format(old=old[:12], new=new[:12]) if "{old}" in expected else f"no longer matches its checkpoint: {expected}"))
    assert stored(db) == before


def test_resume_on_the_same_data_is_allowed(tmp_path, db, capsys, trained_on_file):
    """Control: the same file resumes (the run is complete, so nothing more trains) and keeps its status."""
    before = snapshot(db)
    rc, err = resume(capsys, db)
    assert rc == 0, err
    con = sqlite3.connect(db)
    status = con.execute("SELECT status FROM runs WHERE id = 'filed'").fetchone()[0]
    con.close()
    assert status == "finished"
    assert snapshot(db)["metrics"] == before["metrics"]


def test_text_named_parquet(tmp_path, db, capsys):
    """The reverse mix-up: CSV text named .parquet is refused from the file's footer, naming the file."""
    data = write_data(tmp_path / "table.parquet", HEADER + ROWS)
    with store_unchanged(db):
        rc, err = train(capsys, data_config(tmp_path, db, data))
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {data}: could not be parsed as Parquet: ")
