"""Run detail on the Runs page (issue 17, items 1, 3, 4): rename, tags, notes, archive, delete with its
confirmation, the config diff, lineage buttons and the sweep button.

Runs are written through the store API into a real SQLite store, with real run folders and files on
disk (so a delete really removes them). Most tests draw ``app_pages._run_detail.run_detail`` alone in
a tiny host script (fast); the sweep button, which switches pages, and one end-to-end check go
through the real app's Runs page.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workbench.config import Config
from workbench.names import CHECKPOINTS_DIR, config_file, log_file
from workbench.store import RunStore

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app_pages import _shared as sh  # noqa: E402
from app_pages._run_detail import tags_key  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
ODD = ["**bold**", "<script>alert(1)</script>", "quo\"te's", "🌳 tree", "[x](http://h/p.png)"]
TABLES = ("runs", "metrics", "curves", "health", "tags", "summaries")


# ---------------------------------------------------------------------- helpers
@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    path = tmp_path / "runs" / "workbench.db"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    return RunStore(path)


def make_run(store: RunStore, name: str, status: str = "finished", epochs: int = 2, files: bool = True,
             **kwargs) -> str:
    """A run with ``epochs`` epochs of metrics, curves and health rows and (``files``) its run folder,
    config file and log on disk; ``kwargs``: ``config`` overrides, ``parent_id``, ``sweep_id``."""
    overrides = {k: v for k, v in kwargs.items() if "." in k}
    config = Config().with_overrides({"MODEL.HIDDEN": [8], **overrides}).to_dict()
    run_id = store.create_run(config, name=name, parent_id=kwargs.get("parent_id"), sweep_id=kwargs.get("sweep_id"),
                              status="running")
    curves = pd.DataFrame({"split": "val", "rank": "genus", "curve": "coverage", "tau": [0.0, 0.5, 1.0],
                           "value": [1.0, 0.5, 0.0]})
    for epoch in range(epochs):
        metrics = {"core/val_partial_chain_acc": 0.5 + epoch / 10, "core/val_loss": 1 - epoch / 10}
        store.write_epoch(run_id, epoch, metrics, curves, health={"slow": "a check that fired"})
    store.update_run(run_id, status=status)
    if files:
        folder = store.path.parent / CHECKPOINTS_DIR / run_id
        folder.mkdir(parents=True)
        (folder / "checkpoint.pt").write_bytes(b"\0" * 4096)
        for path in (config_file(store.path, run_id), log_file(store.path, run_id)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{run_id}\n")
    return run_id


def run_files(store: RunStore, run_id: str) -> list[Path]:
    return [store.path.parent / CHECKPOINTS_DIR / run_id, config_file(store.path, run_id), log_file(store.path, run_id)]


def row_counts(store: RunStore, run_id: str) -> dict[str, int]:
    """Rows naming ``run_id`` in every table of the store (read with sqlite3 directly)."""
    con = sqlite3.connect(store.path)
    try:
        return {t: con.execute(f"SELECT COUNT(*) FROM {t} WHERE {'id' if t == 'runs' else 'run_id'} = ?",
                               (run_id,)).fetchone()[0] for t in TABLES}
    finally:
        con.close()


def _host(root: str) -> None:
    """A page that draws the run detail of the runs in ``st.session_state["compared"]`` (default: the newest)."""
    import sys

    if root not in sys.path:
        sys.path.insert(0, root)
    import streamlit as st

    from app_pages import _shared as sh
    from app_pages._run_detail import run_detail

    store = sh.get_store()
    runs = store.runs()
    ids = [r for r in st.session_state.get("compared", []) if r in set(runs["id"])] or list(runs["id"][:1])
    run_detail(store, runs.set_index("id").loc[ids].reset_index(), runs)


def detail(**state) -> AppTest:
    """The run detail drawn alone, with ``state`` preset (``compared``: the compared run ids)."""
    at = AppTest.from_function(_host, kwargs={"root": str(ROOT)}, default_timeout=30)
    for key, value in state.items():
        at.session_state[key] = value
    return ok(at.run())


def ok(at: AppTest) -> AppTest:
    assert not at.exception, at.exception
    return at


def texts(at: AppTest, kinds=("markdown", "caption", "info", "success", "warning", "error", "code", "text")) -> str:
    return "\n".join(str(e.value) for kind in kinds for e in at.get(kind) if hasattr(e, "value"))


# ---------------------------------------------------------------------- rename
def test_rename_valid_and_refused_and_name_shown_inert(store):
    run_id = make_run(store, "first", files=False)
    at = detail()
    assert at.selectbox(key="rd_run").value == run_id
    assert at.text_input(key="rd_name").value == "first"

    odd = "**bold** <script>x</script> 🌳 \"q\" [l](http://h/p.png)"
    at.text_input(key="rd_name").input(odd)
    ok(at.button(key="rd_rename").click().run())
    assert store.run(run_id)["name"] == odd
    header = at.markdown[0].value
    assert sh.md_escape(odd) in header and "**bold**" not in header and "<script>" not in header
    assert f"Renamed run {run_id}" in at.success[0].value
    assert at.selectbox(key="rd_run").options == [f"{run_id} · {odd}"]  # select boxes show plain text

    at.text_input(key="rd_name").input("x" * 201)
    ok(at.button(key="rd_rename").click().run())
    assert "at most 200 characters" in at.error[0].value
    assert store.run(run_id)["name"] == odd  # nothing stored
    assert at.text_input(key="rd_name").value == "x" * 201  # the typed name stays, to be fixed


# ---------------------------------------------------------------------- tags and notes
def test_tags_add_remove_odd_characters_stored_exactly_and_refused(store):
    run_id = make_run(store, "tagged", files=False)
    other = make_run(store, "other", files=False)
    store.add_tags(other, ["baseline"])
    at = detail(compared=[run_id])
    tags = at.multiselect(key=tags_key(run_id))
    assert tags.value == [] and "baseline" in tags.options  # options: every tag of the store

    ok(tags.set_value(["baseline", *ODD]).run())
    assert store.tags([run_id])[run_id] == sorted(["baseline", *ODD])
    assert sorted(at.multiselect(key=tags_key(run_id)).value) == sorted(["baseline", *ODD])
    assert not at.error

    ok(at.multiselect(key=tags_key(run_id)).unselect("<script>alert(1)</script>").run())
    assert "<script>alert(1)</script>" not in store.tags([run_id])[run_id]
    assert store.tags([other])[other] == ["baseline"]  # the other run's tags untouched

    before = store.tags([run_id])[run_id]
    ok(at.multiselect(key=tags_key(run_id)).set_value([*before, "tab\there", "ok-tag"]).run())
    assert "tab" in at.error[0].value  # the store's message names the tag
    assert store.tags([run_id])[run_id] == before  # nothing stored, not even the valid one
    assert sorted(at.multiselect(key=tags_key(run_id)).value) == sorted(before)


def test_notes_saved_and_shown_inert(store):
    run_id = make_run(store, "noted", files=False)
    note = "**bold** <script>alert(1)</script>\n- not a list\n🌳 \"quoted\""
    at = detail()
    at.text_area(key="rd_notes").input(note)
    ok(at.button(key="rd_save_notes").click().run())
    assert store.run(run_id)["notes"] == note
    assert at.text_area(key="rd_notes").value == note
    assert "bold" not in texts(at, ("markdown", "caption"))  # notes appear only in the text area

    assert detail().text_area(key="rd_notes").value == note  # a fresh session reads them from the store
    at.text_area(key="rd_notes").input("x" * 20_001)
    ok(at.button(key="rd_save_notes").click().run())
    assert at.error and store.run(run_id)["notes"] == note


# ---------------------------------------------------------------------- archive
def test_archive_and_unarchive(store):
    run_id = make_run(store, "old", files=False)
    at = detail()
    assert at.button(key="rd_archive").label == "Archive"
    ok(at.button(key="rd_archive").click().run())
    assert bool(store.run(run_id)["archived"]) is True
    assert at.button(key="rd_archive").label == "Unarchive"
    assert "Show archived" in texts(at, ("caption",))
    ok(at.button(key="rd_archive").click().run())
    assert bool(store.run(run_id)["archived"]) is False


# ---------------------------------------------------------------------- delete
def test_delete_shows_plan_cancel_keeps_confirm_removes_rows_and_files(store):
    parent = make_run(store, "phase 1 <b>")
    child = make_run(store, "phase 2", parent_id=parent, files=False)
    store.add_tags(parent, ["keep?"])
    store.set_notes(parent, "notes")
    counts = row_counts(store, parent)
    assert all(counts[t] > 0 for t in ("runs", "metrics", "curves", "health", "tags")), counts
    at = detail(compared=[parent, child])
    assert at.selectbox(key="rd_run").value == parent

    ok(at.button(key="rd_delete").click().run())
    plan = at.container("rd_delete_plan").code[0].value
    assert plan == store.delete_plan(parent).describe()
    for path in run_files(store, parent):
        assert str(path) in plan
    assert at.button(key="rd_delete_confirm").label == "Delete for good"

    ok(at.button(key="rd_delete_cancel").click().run())
    assert not [b for b in at.button if b.key == "rd_delete_confirm"]
    assert row_counts(store, parent) == counts and all(p.exists() for p in run_files(store, parent))

    ok(at.button(key="rd_delete").click().run())
    ok(at.button(key="rd_delete_confirm").click().run())
    assert row_counts(store, parent) == dict.fromkeys(TABLES, 0)
    assert not any(p.exists() for p in run_files(store, parent))
    assert store.has_run(child)  # phase 2 keeps its rows
    assert f"Deleted run {parent}" in at.success[0].value
    assert at.selectbox(key="rd_run").value == child  # the selection that named it is gone
    assert f"parent {parent} (deleted)" in texts(at, ("text",))


def test_running_run_cannot_be_deleted(store):
    run_id = make_run(store, "busy", status="running")
    counts = row_counts(store, run_id)
    at = detail()
    delete = at.button(key="rd_delete")
    assert delete.disabled and "stop it first" in delete.help
    assert f"Run {run_id} is running: stop it first" in texts(at, ("caption",))  # said beside it, too

    # the race: finished when the plan was shown, running again at the confirmation
    store.update_run(run_id, status="finished")
    ok(at.run())
    ok(at.button(key="rd_delete").click().run())
    store.update_run(run_id, status="running")
    ok(at.button(key="rd_delete_confirm").click().run())
    assert "stop it first" in at.error[0].value and "nothing was deleted" in at.error[0].value
    assert row_counts(store, run_id) == counts and all(p.exists() for p in run_files(store, run_id))


# ---------------------------------------------------------------------- diff
def test_diff_shows_only_differing_keys_one_column_per_run(store):
    a = make_run(store, "w0.1", files=False, **{"LOSS.W": 0.1})
    b = make_run(store, "w0.5", files=False, **{"LOSS.W": 0.5, "TRAIN.SEED": 3})
    c = make_run(store, "w0.1 again", files=False, **{"LOSS.W": 0.1})
    at = detail(compared=[a, b])
    diff = at.container("rd_diff").dataframe[0].value
    assert list(diff.columns) == ["w0.1", "w0.5"]
    assert set(diff.index) == {"LOSS.W", "TRAIN.SEED"}
    assert diff.loc["LOSS.W"].tolist() == ["0.1", "0.5"]
    assert "2 keys differ of" in texts(at, ("caption",))

    at = detail(compared=[a, c])
    assert not [c for c in at.container if c.key == "rd_diff"]
    assert "identical configs" in at.info[0].value

    at = detail(compared=[a])  # one run: no diff at all
    assert not [c for c in at.container if c.key == "rd_diff"] and not at.info


# ---------------------------------------------------------------------- config and environment
def test_config_yaml_and_environment_record(store):
    bare = make_run(store, "no environment", files=False)
    run_id = make_run(store, "recorded", files=False,
                      **{"LOSS.W": 0.25, "TRACKING.WANDB.PROJECT": '<b>odd</b> "q" 🌳'})
    store.update_run(run_id, environment={"python": "3.11.9", "packages": {"torch": "2.13.0"}, "git_dirty": True})
    at = detail(compared=[run_id])
    code = at.expander[0].code[0]
    assert code.language == "yaml"
    config = yaml.safe_load(code.value)
    assert config == store.run(run_id)["config"] and config["LOSS"]["W"] == 0.25
    assert 'PROJECT: <b>odd</b> "q" 🌳' in code.value  # a config string as typed, in a code block
    env = at.expander[0].dataframe[0].value
    assert dict(zip(env["key"], env["value"])) == {"python": "3.11.9", "packages": '{"torch": "2.13.0"}',
                                                   "git_dirty": "True"}
    at = detail(compared=[bare])
    assert not at.expander[0].dataframe and "No environment record" in texts(at, ("caption",))


# ---------------------------------------------------------------------- lineage
def test_lineage_buttons_switch_the_detail_run(store):
    parent = make_run(store, "phase 1", files=False)
    child = make_run(store, "phase 2 **x**", parent_id=parent, files=False)
    at = detail(compared=[parent])
    assert at.button(key=f"rd_goto_{child}").label == f"Phase 2: {sh.md_escape(f'{child} · phase 2 **x**')}"
    ok(at.button(key=f"rd_goto_{child}").click().run())
    assert at.selectbox(key="rd_run").value == child  # not a compared run: added to the choices
    assert at.text_input(key="rd_name").value == "phase 2 **x**"
    ok(at.button(key=f"rd_goto_{parent}").click().run())
    assert at.selectbox(key="rd_run").value == parent
    assert at.text_input(key="rd_name").value == "phase 1"


# ---------------------------------------------------------------------- through the real Runs page
def runs_page(**state) -> AppTest:
    """The app's Runs page (``state`` preset before the first run)."""
    from test_app import app  # noqa: PLC0415 (the one way the tests open the whole app)

    return ok(app("runs", **state))


def test_sweep_button_opens_the_sweeps_page_on_that_sweep(store):
    old = make_run(store, "trial of the old sweep", files=False, sweep_id="sw-old")
    make_run(store, "trial of the new sweep", files=False, sweep_id="sw-new")
    at = runs_page(sw_pick="sw-new")  # the Sweeps page last showed the other sweep
    at.selectbox(key="rd_run").set_value(old)
    ok(at.run())
    assert "sw-old" in at.button(key="rd_sweep").label
    ok(at.button(key="rd_sweep").click().run())
    assert at.selectbox(key="sw_pick").value == "sw-old"
    assert at.session_state["sweep_id"] == "sw-old"


def test_real_runs_page_tags_and_delete(store):
    keep = make_run(store, "kept", files=False)
    doomed = make_run(store, "doomed")
    at = runs_page()
    assert set(at.selectbox(key="rd_run").options) >= {f"{keep} · kept", f"{doomed} · doomed"}
    at.selectbox(key="rd_run").set_value(doomed)
    ok(at.run())
    ok(at.multiselect(key=tags_key(doomed)).set_value(["<b>x</b> \"q\" 🌳"]).run())
    assert store.tags([doomed]) == {doomed: ["<b>x</b> \"q\" 🌳"]}
    ok(at.button(key="rd_delete").click().run())
    assert str(store.path.parent / CHECKPOINTS_DIR / doomed) in at.container("rd_delete_plan").code[0].value
    ok(at.button(key="rd_delete_confirm").click().run())
    assert not store.has_run(doomed) and not any(p.exists() for p in run_files(store, doomed))
    assert f"Deleted run {doomed}" in texts(at, ("success",))
    assert at.selectbox(key="rd_run").options == [f"{keep} · kept"]
    assert list(at.dataframe(key="ru_table").value["id"]) == [keep]
