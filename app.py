"""The workbench app: `streamlit run app.py`. Declares its pages explicitly (st.navigation); each page lays out
widgets and charts over `workbench` calls (cached in pages/data.py)."""

import streamlit as st

from pages import ui

st.set_page_config(page_title="canary-workbench", page_icon=":material/science:", layout="wide")
nav = st.navigation(
    {
        "Models": [
            st.Page("pages/candidates.py", title="Candidates", icon=":material/model_training:", default=True),
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
