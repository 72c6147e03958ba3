"""The workbench app: `streamlit run app.py`. Declares its pages explicitly (st.navigation); each page lays out
widgets and charts over `workbench` calls (cached in pages/data.py)."""

import streamlit as st

from pages import ui

CANDIDATES = st.Page("pages/candidates.py", title="Candidates", icon=":material/model_training:", url_path="candidates")


def home() -> None:
    """The app's root address opens Candidates at its own address, with the root's query (``/?model=M`` becomes
    ``/candidates?model=M``): the default page is served at the root only, so an address that names Candidates
    (a shared link, ``st.page_link``'s) would otherwise find no page."""
    st.switch_page(CANDIDATES, query_params={k: st.query_params.get_all(k) for k in st.query_params})


st.set_page_config(page_title="canary-workbench", page_icon=":material/science:", layout="wide")
nav = st.navigation(
    {
        "Models": [
            st.Page(home, title="canary-workbench", default=True, visibility="hidden"),
            CANDIDATES,
            st.Page("pages/replay.py", title="Replay", icon=":material/play_circle:"),
            st.Page("pages/live.py", title="Live canary", icon=":material/monitor_heart:"),
        ],
        "Evidence": [
            st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
            st.Page("pages/drift.py", title="Drift", icon=":material/timeline:"),
        ],
        "Decisions": [
            st.Page("pages/decide.py", title="Decide", icon=":material/gavel:"),
            st.Page("pages/audit.py", title="Audit", icon=":material/verified:"),
        ],
    }
)
ui.sidebar_identity()
ui.start(st.empty())
nav.run()
