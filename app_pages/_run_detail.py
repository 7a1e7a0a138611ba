"""Run detail (issue 17), drawn by the Runs page under its "Run detail" subheader.

One of the compared runs: its name (rename), status, creation time, phase 1 -> phase 2 lineage as
buttons that make the parent or a child the detail run, its sweep as a button that opens the Sweeps
page on it, tags and notes (stored in the run store), the resolved config (YAML) and the environment
record; a diff of the compared runs' configs; archive and delete (with a confirmation that names
what goes).

Every change goes through the store API in a widget callback, so the page that follows (the Runs
table above included) already reads the changed store. Everything a user typed (names, tags, notes,
config strings) is shown inert: plain-text widgets, ``st.code``, dataframes, or ``sh.md_escape`` in
Markdown.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st
import yaml

from app_pages import _shared as sh
from workbench import tracker
from workbench.config import flatten
from workbench.errors import StoreError
from workbench.launch import reconcile
from workbench.names import ACTIVE
from workbench.store import NOTES_MAX, TAG_MAX, RunStore

SWEEPS_PAGE = "app_pages/sweeps.py"
DELETE_LABEL = "Delete for good"
ARCHIVED_NOTE = ('Archived runs are hidden from the Runs table unless "Show archived" is on; '
                 "nothing of them is deleted.")
RUNNING_NOTE = ("is {status}: stop it first (Stop on the Train page, or wait for it to end); "
                "a run that holds a trainer cannot be deleted")


# ---------------------------------------------------------------------- helpers
def _flash(kind: str, text: str) -> None:
    """A message shown at the top of the detail on the next run (``kind``: success, info, error)."""
    st.session_state["rd_flash"] = (kind, text)


def _label(run_id: str, names: dict[str, str]) -> str:
    """``<id> · <name>`` as plain text (select boxes, dataframe headers)."""
    return sh.run_label({"id": run_id, "name": names.get(run_id)})


def _column_names(run_ids: list[str], names: dict[str, str]) -> dict[str, str]:
    """Diff column labels: each run's name, with its id added where two runs share a name."""
    shown = [names.get(r) or r for r in run_ids]
    return {r: (s if shown.count(s) == 1 else f"{s} ({r})") for r, s in zip(run_ids, shown)}


# ---------------------------------------------------------------------- callbacks (run before the page)
def _goto(run_id: str) -> None:
    """Make ``run_id`` (a parent or child, maybe not among the compared runs) the detail run."""
    st.session_state["rd_extra"] = run_id
    st.session_state["rd_run"] = run_id


def _rename(store: RunStore, run_id: str) -> None:
    try:
        store.rename(run_id, st.session_state.get("rd_name", ""))
    except StoreError as e:  # the store's validation message, shown; the typed name stays to be fixed
        _flash("error", str(e))
        return
    name = store.run(run_id)["name"]
    st.session_state["rd_name"] = name
    _flash("success", f"Renamed run {run_id} to {name!r}.")


def tags_key(run_id: str) -> str:
    """The tag multiselect's key: one per run. With one key for every run, a browser that still held the
    previous run's tags sent them as a change of the new run's widget, and they replaced its tags."""
    return f"rd_tags_{run_id}"


def _save_tags(store: RunStore, run_id: str) -> None:
    """The multiselect's value is the run's tag set: add what is new, remove what is gone."""
    wanted = list(st.session_state.get(tags_key(run_id), []))
    stored = store.tags([run_id]).get(run_id, [])
    try:
        added = [t for t in wanted if t not in stored]
        if added:
            store.add_tags(run_id, added)  # validates every tag before writing any
        removed = [t for t in stored if t not in wanted]
        if removed:
            store.remove_tags(run_id, removed)
    except StoreError as e:  # nothing was stored; the page then shows the stored set again (_annotations)
        _flash("error", str(e))


def _save_notes(store: RunStore, run_id: str) -> None:
    try:
        store.set_notes(run_id, st.session_state.get("rd_notes", ""))
    except StoreError as e:
        _flash("error", str(e))
        return
    _flash("success", f"Saved the notes of run {run_id}.")


def _toggle_archive(store: RunStore, run_id: str, archived: bool) -> None:
    try:
        store.set_archived(run_id, not archived)
    except StoreError as e:
        _flash("error", str(e))
        return
    _flash("success", f"Unarchived run {run_id}." if archived else
           f'Archived run {run_id}: the Runs table shows it again when "Show archived" is on.')


def _ask_delete(run_id: str) -> None:
    st.session_state["rd_deleting"] = run_id


def _cancel_delete() -> None:
    st.session_state.pop("rd_deleting", None)


def _delete(store: RunStore, run_id: str) -> None:
    """Delete the run (its rows in every table and its files), then forget the detail's choice of it (the
    Runs table keeps its selection by run id, so the deleted row simply drops out of it)."""
    ss = st.session_state
    ss.pop("rd_deleting", None)
    try:
        reconcile(store, [run_id])  # a run whose process died is marked failed, hence deletable
        store.delete_run(run_id)
    except StoreError as e:  # it started running since the plan was shown (nothing changed), or is gone
        _flash("error", str(e))
        return
    for key in ("rd_run", "rd_extra", "rd_for"):
        if ss.get(key) == run_id:
            del ss[key]
    _flash("success", f"Deleted run {run_id}.")


# ---------------------------------------------------------------------- the view
def run_detail(store: RunStore, compared: pd.DataFrame, all_runs: pd.DataFrame) -> None:
    """The detail of one of the ``compared`` runs (rows with ``id``, ``name``), the diff of their
    configs, and archive / delete. ``all_runs`` (every run in the store, with ``id``, ``name`` and
    ``parent_id``) gives the lineage."""
    ss = st.session_state
    flash = ss.pop("rd_flash", None)
    if flash:
        getattr(st, flash[0])(sh.md_escape(flash[1]))
    if compared.empty:
        st.info("No run to show: select runs in the table.")
        return
    names = dict(zip(all_runs["id"], all_runs["name"])) if not all_runs.empty else {}
    names.update(zip(compared["id"], compared["name"]))
    options = list(compared["id"])
    extra = ss.get("rd_extra")  # a parent or child reached through a lineage button
    if extra and extra not in options and store.has_run(extra):
        options.append(extra)
        names.setdefault(extra, store.run(extra)["name"])
    if ss.get("rd_run") not in options:
        ss["rd_run"] = options[0]
    run_id = st.selectbox("Run", options, key="rd_run", format_func=lambda r: _label(r, names),
                          help="One of the compared runs (or a parent or child reached from one).")
    try:
        record = store.run(run_id)
    except StoreError as e:  # deleted by another session between the table's read and this one
        st.warning(sh.md_escape(e))
        return
    # widgets that edit the record start from the stored values whenever the detail run changes
    if ss.get("rd_for") != run_id:
        ss.pop("rd_deleting", None)
        for key in ("rd_name", "rd_notes"):
            ss.pop(key, None)
        ss["rd_for"] = run_id
    ss.setdefault("rd_name", record["name"])
    ss.setdefault("rd_notes", record.get("notes") or "")
    names[run_id] = record["name"]

    _header(store, record, names, all_runs)
    _annotations(store, record)
    _config(record)
    _diff(store, list(compared["id"]), names)
    _archive_and_delete(store, record)


def _header(store: RunStore, record: dict, names: dict[str, str], all_runs: pd.DataFrame) -> None:
    """Name (rename), status, created, lineage and sweep membership."""
    run_id = record["id"]
    created = pd.to_datetime(record["created"], unit="s").strftime("%Y-%m-%d %H:%M:%S")
    st.markdown(f"{sh.status_badge(record['status'])} **{sh.md_escape(record['name'])}** · "
                f"run {sh.md_escape(run_id)} · created {created} UTC · {record.get('epochs_done') or 0} epochs")
    c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
    c1.text_input("Name", key="rd_name",
                  help="A label for this run; its id never changes. Names need not be unique.")
    c2.button("Rename", key="rd_rename", icon=":material/edit:", width="stretch",
              on_click=_rename, args=(store, run_id))

    runs = all_runs
    if run_id not in set(all_runs["id"]):  # reached through a button while the table was read before it
        row = {k: record.get(k) for k in ("id", "name", "parent_id", "sweep_id")}
        runs = pd.concat([all_runs, pd.DataFrame([row])], ignore_index=True)
    family = tracker.lineage(runs, run_id)
    # a recorded parent missing from the table is archived and hidden (a button still) or deleted (text)
    parent = family["parent"] or (family["missing_parent"] if family["missing_parent"] and
                                  store.has_run(family["missing_parent"]) else None)
    deleted_parent = family["missing_parent"] if family["missing_parent"] and not parent else None
    children = list(family["children"])
    if parent or deleted_parent or children or record.get("sweep_id"):
        cols = st.columns([1, 3], vertical_alignment="center")
        cols[0].caption("Lineage (phase 1 -> phase 2: show that run here) and sweep (open it on the Sweeps page)")
        with cols[1].container(horizontal=True):
            if parent:
                st.button(f"Parent: {sh.md_escape(_label(parent, names))}", key=f"rd_goto_{parent}",
                          icon=":material/arrow_upward:", on_click=_goto, args=(parent,))
            elif deleted_parent:
                st.text(f"parent {deleted_parent} (deleted)")
            for child in children:
                st.button(f"Phase 2: {sh.md_escape(_label(child, names))}", key=f"rd_goto_{child}",
                          icon=":material/arrow_downward:", on_click=_goto, args=(child,))
            sweep_id = record.get("sweep_id")
            if sweep_id and st.button(f"Sweep {sh.md_escape(sweep_id)}", key="rd_sweep", icon=":material/tune:"):
                st.session_state["sweep_id"] = st.session_state["sw_pick"] = sweep_id
                st.switch_page(SWEEPS_PAGE)


def _annotations(store: RunStore, record: dict) -> None:
    """Tags (the multiselect's value is the run's tag set) and notes."""
    run_id = record["id"]
    stored = store.tags([run_id]).get(run_id, [])
    st.session_state[tags_key(run_id)] = stored  # the store is the truth: a refused edit shows the stored set
    st.multiselect("Tags", sorted(set(store.all_tags()) | set(stored)), key=tags_key(run_id), accept_new_options=True,
                   on_change=_save_tags, args=(store, run_id), placeholder="add a tag (type and press Enter)",
                   help=f"Saved as you change them. Filter the table by tag above. Up to {TAG_MAX} characters "
                        "each; no line breaks or tabs.")
    st.text_area("Notes", key="rd_notes", height=100, placeholder="What this run was for, what you saw...",
                 help=f"Plain text (up to {NOTES_MAX:,} characters), kept in the run store.")
    st.button("Save notes", key="rd_save_notes", icon=":material/save:", on_click=_save_notes, args=(store, run_id))


def _config(record: dict) -> None:
    """The resolved config (YAML) and the environment record that reproduces the run."""
    with st.expander("Config and environment", icon=":material/settings:"):
        st.caption("The resolved config the run trained with, and what reproduces it "
                   "(versions, git commit, device, seeds, data hash).")
        st.code(yaml.safe_dump(record["config"], sort_keys=False, allow_unicode=True), language="yaml")
        env = record.get("environment")
        if env:
            values = [json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in env.values()]
            st.dataframe(pd.DataFrame({"key": list(env), "value": values}), hide_index=True, width="stretch",
                         key="rd_environment")
        else:
            st.caption("No environment record: the run was recorded before runs kept one.")


def _diff(store: RunStore, run_ids: list[str], names: dict[str, str]) -> None:
    """The config keys that differ between the compared runs, one column per run."""
    if len(run_ids) < 2:
        return
    st.markdown("**Config diff of the compared runs**")
    configs = {r: store.run(r)["config"] for r in run_ids if store.has_run(r)}
    keys = set().union(*(flatten(c) for c in configs.values()))
    diff = tracker.diff_configs(configs)
    if diff.empty:
        st.info(f"The {len(configs)} compared runs have identical configs ({len(keys)} keys).")
        return
    shown = diff.rename(columns=_column_names(list(diff.columns), names))  # cells are text already
    with st.container(key="rd_diff"):  # a display dataframe carries no key of its own: the container does
        st.dataframe(shown, width="stretch")
    st.caption(f"{len(diff)} {'key differs' if len(diff) == 1 else 'keys differ'} of {len(keys)}; a key a run "
               f"does not have shows as {tracker.ABSENT}. "
               "Keys that do not change results (threads, device, tracking) are listed last.")


def _archive_and_delete(store: RunStore, record: dict) -> None:
    """Archive / unarchive, and delete behind a confirmation naming what goes."""
    run_id, status = record["id"], record["status"]
    archived = bool(record.get("archived"))
    c1, c2, c3 = st.columns([1, 1, 3], vertical_alignment="center")
    c1.button("Unarchive" if archived else "Archive", key="rd_archive", width="stretch",
              icon=":material/unarchive:" if archived else ":material/archive:",
              on_click=_toggle_archive, args=(store, run_id, archived))
    active = status in ACTIVE
    why_not = f"Run {run_id} {RUNNING_NOTE.format(status=status)}." if active else None
    # help only on the disabled button: Streamlit 1.67 draws a button with help twice in the page (a hidden
    # copy), which a browser locator (.st-key-rd_delete button) would find twice; the enabled one explains
    # itself by its plan (the lineage and sweep buttons have no help for the same reason)
    c2.button("Delete", key="rd_delete", width="stretch", icon=":material/delete:", disabled=active,
              on_click=_ask_delete, args=(run_id,), help=why_not)
    c3.caption(" ".join(filter(None, (sh.md_escape(why_not) if why_not else None,
                                      "This run is archived." if archived else None, ARCHIVED_NOTE))))
    if st.session_state.get("rd_deleting") != run_id:
        return
    try:
        plan = store.delete_plan(run_id)
    except StoreError as e:
        st.error(sh.md_escape(e))
        return
    with st.container(key="rd_delete_plan", border=True):
        st.warning("Deleting cannot be undone. This goes:", icon=":material/warning:")
        st.code(plan.describe(), language=None, wrap_lines=True)
        c1, c2, _ = st.columns([1, 1, 3])
        c1.button(DELETE_LABEL, key="rd_delete_confirm", type="primary", icon=":material/delete_forever:",
                  width="stretch", on_click=_delete, args=(store, run_id))
        c2.button("Cancel", key="rd_delete_cancel", width="stretch", on_click=_cancel_delete)
