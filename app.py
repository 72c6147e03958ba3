"""The workbench app: `streamlit run app.py`. Declares its pages explicitly (st.navigation)."""
import streamlit as st

st.set_page_config(page_title="canary-workbench", layout="wide")
nav = st.navigation([st.Page("pages/home.py", title="Home", default=True)])
nav.run()
