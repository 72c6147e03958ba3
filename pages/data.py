"""Cached read-only access to the workbench for the pages (the one place that caches).

Each call opens the DuckDB file read-only for as short as possible, so a replay job in another
process can take the write lock between page loads.
"""
from __future__ import annotations

import streamlit as st

from workbench.config import load_settings
from workbench.store import Store


def _store() -> Store:
    return Store(load_settings().db_path, read_only=True)


@st.cache_data(ttl=5)
def runs() -> list[dict]:
    if not load_settings().db_path.exists():
        return []
    with _store() as s:
        return s.list_runs()


@st.cache_data(ttl=5)
def evaluation(run_id: str) -> dict | None:
    with _store() as s:
        return s.latest_evaluation(run_id)
