"""The Streamlit app, rendered headless with AppTest over the demo home."""
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_home_page_shows_demo_run(workbench_env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "canary-workbench"
    assert at.selectbox[0].value.startswith("demo_v")
    assert len(at.dataframe) == 1
