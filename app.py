"""workbench dashboard: ``streamlit run app.py``.

A router over the page modules in ``app_pages/`` (explore data, configure and launch runs and watch
them live, compare runs, and sweeps when ``app_pages/sweeps.py`` is present). The run store is
``$WORKBENCH_STORE`` or ``runs/workbench.db``, created on first use. Training never runs in this
process: runs are launched as their own processes and the pages read the store.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # page modules import app_pages._shared and workbench
    sys.path.insert(0, str(ROOT))

from app_pages import _shared as sh  # noqa: E402

# (file, title, icon); a page whose file is missing is left out
PAGES = [
    ("app_pages/data.py", "Data", ":material/dataset:"),
    ("app_pages/train.py", "Train", ":material/model_training:"),
    ("app_pages/runs.py", "Runs", ":material/stacked_line_chart:"),
    ("app_pages/sweeps.py", "Sweeps", ":material/tune:"),
]

# An emoji favicon: Streamlit inlines it as a data: URL. A ":material/...:" page icon makes the browser
# fetch the favicon from fonts.gstatic.com (nothing at all offline); the in-page material icons are
# bundled with Streamlit and stay local.
PAGE_ICON = "\U0001F333"  # 🌳 (deciduous tree): labels form a tree

st.set_page_config(page_title="workbench", page_icon=PAGE_ICON, layout="wide")
sh.keep()  # widget values survive page switches

pages = [st.Page(path, title=title, icon=icon) for path, title, icon in PAGES if (ROOT / path).is_file()]
nav = st.navigation(pages)

with st.sidebar:
    st.markdown("### :material/account_tree: workbench")
    st.caption("Hierarchical classification with partial (null) labels.")
    store = sh.get_store()
    st.caption(f"Run store: `{store.path}`")
    st.text_input("Ray cluster address", key=sh.RAY_ADDRESS_KEY, placeholder="auto or host:port",
                  help="Where the Train page sends a run set to train on the Ray cluster ('auto': the cluster "
                       "`ray start` joined this machine to). Empty: runs train on this machine.")

nav.run()
