"""The Data page and what it reads: uploads (names, delimiters), row numbers in data errors, every
taxonomy conflict reported, and the class-count chart (readable height, log scale, horizontal bars).

Library checks run on real files in a tmp folder; page checks run the real app with AppTest against
a tmp run store (the fixtures of ``test_app``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from test_app import app, charts, store_path, texts  # noqa: F401  (shared AppTest helpers and fixture)
from workbench import plots
from workbench.data import SPREADSHEET_ROWS, DataError, load_table, sniff_csv, spreadsheet_row
from workbench.taxonomy import MAX_REPORTED

ROWS_NOTE = f"({SPREADSHEET_ROWS})"
HEADER = ["order", "family", "x1", "x2"]
ROWS = [["A", "a1", "0.1", "1.0"], ["A", "a2", "0.3", "0.5"], ["B", "b1", "1.2", "0.1"], ["B", "", "1.0", "0.3"]] * 3


def plain(markdown: str) -> str:
    """Page text with Markdown escapes removed (the pages escape file-controlled text)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def write_table(path: Path, rows, sep: str = ",", header=HEADER) -> Path:
    path.write_text("\n".join(sep.join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------- delimiters
@pytest.mark.parametrize("sep", [",", ";", "\t", "|"], ids=["comma", "semicolon", "tab", "pipe"])
@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_delimiter_is_sniffed(tmp_path, sep, suffix):
    path = write_table(tmp_path / f"data{suffix}", ROWS, sep)
    assert sniff_csv(path) == (sep, ".")
    ds = load_table(path, ["order", "family"])
    assert ds.feature_names == ["x1", "x2"] and len(ds) == len(ROWS)
    assert ds.features[2, 0].item() == pytest.approx(1.2)


def test_semicolon_file_with_decimal_commas(tmp_path):
    path = write_table(tmp_path / "eu.csv", [[o, f, a.replace(".", ","), b.replace(".", ",")] for o, f, a, b in ROWS],
                       ";")
    assert sniff_csv(path) == (";", ",")
    ds = load_table(path, ["order", "family"])
    assert ds.features[2].tolist() == pytest.approx([1.2, 0.1])


def test_quoted_delimiters_do_not_fool_the_sniffer(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text('order,family,note,x1\nA,a1,"Smith; J, 1999",1\nB,b1,"Doe; K, 2001",2\n', encoding="utf-8")
    assert sniff_csv(path)[0] == ","
    assert list(load_table(path, ["order", "family"]).feature_names) == ["x1"]


# ---------------------------------------------------------------------- row numbers as a spreadsheet shows them
def test_every_row_number_points_at_the_bad_line(tmp_path):
    """The row number in the message is the file's line number (header = row 1), for each kind of error."""
    bad_cell = [r[:] for r in ROWS]
    bad_cell[5][3] = "oops"
    bad_weight = [[*r, "1"] for r in ROWS]
    bad_weight[7][4] = "-3"
    cases = [
        (write_table(tmp_path / "cell.csv", bad_cell), {"features": ["x1", "x2"]}, "oops"),
        (write_table(tmp_path / "weight.csv", bad_weight, header=[*HEADER, "w"]), {"sample_weight": "w"}, "-3"),
    ]
    for path, kw, needle in cases:
        with pytest.raises(DataError) as e:
            load_table(path, ["order", "family"], **kw)
        msg = str(e.value)
        row = int(re.search(rf"row (\d+) {re.escape(ROWS_NOTE)}", msg).group(1))
        assert needle in path.read_text().splitlines()[row - 1], (msg, row)
    assert spreadsheet_row(0) == 2  # the first data row


def test_all_taxonomy_conflicts_are_reported_up_to_the_limit(tmp_path):
    # family a1 belongs to order A (row 2); rows 14.. say B for it, 25 of them: all listed up to the limit
    rows = ROWS + [["B", "a1", "0.5", "0.5"]] * (MAX_REPORTED + 5)
    with pytest.raises(DataError) as e:
        load_table(write_table(tmp_path / "two.csv", rows), ["order", "family"])
    msg = str(e.value)
    conflict_rows = [spreadsheet_row(i) for i in range(len(ROWS), len(rows))]
    listed = ", ".join(map(str, conflict_rows[:MAX_REPORTED]))
    assert f"{ROWS_NOTE}:\n  family 'a1': order 'A' in rows 2, 6, 10; order 'B' in rows {listed} and 5 more" in msg, msg

    # three orders under a genus, one of them only across a null family: every contradicting row, one line each
    header = ["order", "family", "genus", "x1"]
    good = [["O1", "F1", "g1", "1"], ["O2", "F2", "g2", "2"]] * 2
    bad = [["O1", "", "g2", str(i)] for i in range(MAX_REPORTED + 3)]
    with pytest.raises(DataError) as e:
        load_table(write_table(tmp_path / "skip.csv", good + bad, header=header), ["order", "family", "genus"])
    lines = str(e.value).splitlines()
    assert lines[0].endswith(f"{MAX_REPORTED + 3} rows contradict the taxonomy {ROWS_NOTE}:"), lines[0]
    assert lines[1] == f"  row {spreadsheet_row(len(good))}: genus 'g2' belongs to order 'O2', but the row says 'O1'"
    assert len(lines) == 1 + MAX_REPORTED + 1 and lines[-1] == "  and 3 more rows"


# ---------------------------------------------------------------------- class-count chart
def test_class_count_bars_are_tall_enough_and_can_use_a_log_axis():
    names = [f"Genus{i} species{i}" for i in range(40)]
    counts = pd.DataFrame({"class": [None, *names], "count": [500, *[10 ** (i % 5) for i in range(40)]]})
    fig = plots.class_count_bars(counts, "species")
    (bar,) = fig.data
    assert bar.orientation == "h" and len(bar.y) == 41
    assert fig.layout.height >= 41 * plots.CLASS_BAR_PX  # proportional to the number of classes
    assert fig.layout.xaxis.type == "linear" and fig.layout.yaxis.autorange == "reversed"
    assert bar.x[0] == 10_000 and bar.marker.color[list(bar.y).index("(null)")] == plots.NULL_COLOUR

    few = plots.class_count_bars(counts.head(3), "species", log_x=True)
    assert few.layout.height == plots.CLASS_BARS_MIN_HEIGHT and few.layout.xaxis.type == "log"
    zero = pd.DataFrame({"class": [None, "x", "y"], "count": [0, 4, 2]})
    assert list(plots.class_count_bars(zero, "genus", log_x=True).data[0].y) == ["x", "y"]  # no 0 on a log axis
    top = plots.class_count_bars(counts, "species", top=10)
    assert len(top.data[0].y) == 10 and "top 10 of 41" in top.layout.title.text


def test_data_page_class_counts_log_toggle(store_path):
    at = app()
    spec = charts(at)["class_counts"]
    assert spec["data"][0]["orientation"] == "h" and spec["layout"]["xaxis"]["type"] == "linear"
    at.toggle(key="d_count_log").set_value(True).run()
    assert not at.exception
    assert charts(at)["class_counts"]["layout"]["xaxis"]["type"] == "log"


# ---------------------------------------------------------------------- uploads on the page
def test_upload_shows_its_own_name_and_reads_semicolons(store_path):
    at = app()
    at.segmented_control(key="d_source").set_value("Upload a file").run()
    content = "\n".join(";".join(r) for r in [HEADER, *ROWS]) + "\n"
    at.file_uploader(key="d_upload").set_value(("my field data.csv", content.encode(), "text/csv")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    path = Path(at.session_state["data_cfg"]["PATH"])
    assert path.name == "my field data.csv" and path.parent.name != ""  # the content hash is the folder
    shown = plain(texts(at))
    assert "`my field data.csv`: 12 rows, 4 columns, separated by semicolons." in shown
    assert path.parent.name not in shown, "the hash is only in the stored path"
    assert at.multiselect(key="d_ranks").value == ["order", "family"]
    assert "Train page will train on **my field data.csv**" in shown


def test_upload_conflicts_listed_in_the_page_error(store_path):
    at = app()
    at.segmented_control(key="d_source").set_value("Upload a file").run()
    rows = ROWS + [["B", "a1", "0.5", "0.5"], ["B", "a2", "0.5", "0.5"]]
    content = "\n".join(",".join(r) for r in [HEADER, *rows]) + "\n"
    at.file_uploader(key="d_upload").set_value(("bad.csv", content.encode(), "text/csv")).run()
    at.multiselect(key="d_ranks").set_value(["order", "family"]).run()
    assert not at.exception
    error = plain(at.error[0].value)
    assert "2 have more than one" in error and ROWS_NOTE in error
    assert "family 'a1': order 'A' in rows 2, 6, 10; order 'B' in row 14" in error
    assert "family 'a2': order 'A' in rows 3, 7, 11; order 'B' in row 15" in error


def test_data_page_shows_the_split_and_the_data_warnings(store_path):
    """What the CLI prints as `warning:` lines reaches the page too: labels equal up to case, and the split
    the Train page's runs will use (the trainer's own split function, not a second computation)."""
    from workbench.data import split_dataset

    at = app()
    at.segmented_control(key="d_source").set_value("Upload a file").run()
    rows = ROWS + [["b", "b2", "0.2", "0.2"]] * 3  # 'b' vs 'B': two classes that differ only by case
    content = "\n".join(",".join(r) for r in [HEADER, *rows]) + "\n"
    at.file_uploader(key="d_upload").set_value(("cases.csv", content.encode(), "text/csv")).run()
    at.multiselect(key="d_ranks").set_value(["order", "family"]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    warning = " ".join(plain(w.value) for w in at.warning)
    assert "'B' / 'b'" in warning or "'b' / 'B'" in warning, warning
    ds = load_table(Path(at.session_state["data_cfg"]["PATH"]), ["order", "family"], None, "x", None, None)
    train, val, test = split_dataset(ds, 0.2, 0.2, 0)
    assert f"Split: {len(train):,} train / {len(val):,} val / {len(test):,} test" in plain(texts(at))
