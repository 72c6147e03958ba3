"""Widgets the pages share: the sign-in box, the run and model pickers that follow the address (``?run=``,
``?model=``), links to a run's evidence, the busy note, number formatting."""

from __future__ import annotations

import runpy
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from pages import data
from workbench import WorkbenchError, views
from workbench.ops.access import (
    Identity,
    Role,
    approvers_path,
    authenticate,
    load_approvers,
    oidc_identity,
    oidc_provider,
)
from workbench.views import page_url

APP = Path(__file__).resolve().parent.parent / "app.py"
OUTCOME_STYLES = {
    views.OUTCOME_LABELS["fail"]: "color: #cf222e; font-weight: bold",
    views.OUTCOME_LABELS["inconclusive"]: "color: #9a6700; font-weight: bold",
    views.OUTCOME_LABELS["pass"]: "color: #1a7f37",
}


def ensure_navigation() -> None:
    """Run this page through ``app.py``'s navigation.

    When the repository has a ``pages/`` folder, Streamlit (1.67) runs a session's first page in its legacy
    multipage mode if the address names a page on a fresh server (and always under AppTest): the page runs
    without ``app.py`` (no layout, no sign-in box) under a navigation listing every module of ``pages/``.
    Then this runs ``app.py`` in the same script run (its ``st.navigation`` switches the legacy mode off and
    runs this page again, properly) and stops the legacy run, so widget events of this run are kept.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        runpy.run_path(str(APP), run_name="__main__")
        st.stop()


# -- identity -----------------------------------------------------------------------------------------------------
def _auth_section() -> dict | None:
    """Streamlit's ``[auth]`` secrets section when OIDC is configured, else None."""
    from streamlit.errors import StreamlitSecretNotFoundError

    try:
        auth = st.secrets.get("auth")
    except (StreamlitSecretNotFoundError, FileNotFoundError):
        return None
    return dict(auth) if auth else None


def _approvers() -> dict:
    try:
        return load_approvers(approvers_path(data.settings().home))
    except WorkbenchError as e:
        st.sidebar.error(str(e))
        return {}


def identity() -> Identity | None:
    """Who uses this session: the OIDC login when OIDC is configured, else whoever signed in here (None: a
    visitor, who is a viewer)."""
    if _auth_section() is not None:
        return oidc_identity(st.user.to_dict(), _approvers())
    return st.session_state.get("_wb_identity")


def sidebar_identity() -> None:
    """The sign-in box: ``st.login`` with OIDC, else an operator's or approver's name and password; viewers read
    only."""
    box = st.sidebar.container(border=True)
    auth = _auth_section()
    who = identity()
    if auth is not None:
        if who is None:
            box.caption("Reviewing read-only.")
            if box.button("Log in", key="wb_login"):
                st.login(oidc_provider(auth))
        else:
            role = "viewer (read-only)" if who.role == Role.VIEWER else who.role
            box.markdown(f"**{who.email or who.name}**  \n{role}")
            if box.button("Log out", key="wb_logout"):
                st.logout()
        return
    if who is not None:
        box.markdown(f"**{who.name}**  \n{who.role} (password)")
        if box.button("Sign out", key="wb_signout"):
            st.session_state.pop("_wb_identity", None)
            st.rerun()
        return
    box.caption("Reviewing read-only. Operators sign in to start replays, approvers to sign decisions.")
    approvers = _approvers()
    if not approvers:
        box.caption("No operators or approvers yet: `workbench approver add NAME [--role operator]`.")
        return
    with box.form("wb_signin", clear_on_submit=True, border=False):
        name = st.text_input("Name", key="wb_signin_name")
        password = st.text_input("Password", type="password", key="wb_signin_password")
        if st.form_submit_button("Sign in"):
            who = authenticate(approvers, name.strip(), password)
            if who is None:
                time.sleep(0.5)  # slows down guessing
                st.session_state["_wb_signin_error"] = True
            else:
                st.session_state["_wb_identity"] = who
                st.session_state.pop("_wb_signin_error", None)
                st.rerun()
    if st.session_state.get("_wb_signin_error"):
        box.error("Unknown name or wrong password.")


def lock_note(who: Identity | None) -> str:
    """Why this session cannot sign, and what would let it."""
    if who is not None:
        return f"{who.email or who.name} is signed in but is not an approver."
    if _auth_section() is not None:
        return "Log in from the sidebar."
    if not _approvers():
        return "No approvers are configured yet: add one with `workbench approver add NAME`, then sign in."
    return "Sign in from the sidebar."


# -- the run picker ---------------------------------------------------------------------------------------------------
def _label(r: dict) -> str:
    b, c = r["baseline"], r["candidate"]

    def ref(m: dict) -> str:
        return f"{m.get('name')} v{m.get('version')}" if m.get("version") else str(m.get("uri"))

    return f"{r['run_id']} · {ref(b)} vs {ref(c)} · {r['rows_done']:,} rows · {r['status']}"


def _follow_address(param: str, key: str, options: list[str]) -> None:
    """Point the widget ``key`` at the option the address names (``?param=``) when the address changed (a link
    or a shared address); else keep the widget's choice, or the session's last one."""
    wanted, last = st.query_params.get(param), st.session_state.get(f"_{key}")
    if wanted in options and wanted != last:
        st.session_state[key] = wanted
    elif st.session_state.get(key) not in options:
        st.session_state[key] = last if last in options else options[0]


def _to_address(param: str, key: str, chosen: str) -> None:
    st.session_state[f"_{key}"] = chosen
    st.query_params[param] = chosen


def pick_run(finished_only: bool = False) -> dict | None:
    """A run chosen in the sidebar (shared by the pages, and by ``?run=`` in the address); None when there is
    none yet (the page then says so)."""
    runs = data.runs()
    if finished_only:
        runs = [r for r in runs if r["status"] == "finished"]
    if not runs:
        st.info("No replay run yet: start one on the Replay page, or run `workbench demo` / `workbench replay`.")
        return None
    ids = [r["run_id"] for r in runs]
    _follow_address("run", "wb_run", ids)
    labels = {r["run_id"]: _label(r) for r in runs}
    chosen = st.sidebar.selectbox("Replay run", ids, format_func=lambda run_id: labels[run_id], key="wb_run")
    _to_address("run", "wb_run", chosen)
    return next(r for r in runs if r["run_id"] == chosen)


def pick_model(models: list[str]) -> str:
    """A model chosen on the page (``?model=`` in the address names one); ``models`` is not empty."""
    _follow_address("model", "wb_model", models)
    chosen = st.selectbox("Model", models, key="wb_model")
    _to_address("model", "wb_model", chosen)
    return chosen


EVIDENCE_PAGES = {
    "compare": ("Compare", ":material/compare_arrows:"),
    "drift": ("Drift", ":material/timeline:"),
    "decide": ("Decide", ":material/gavel:"),
}


def run_links(run_id: str, pages: tuple[str, ...] = tuple(EVIDENCE_PAGES), where=st) -> None:
    """Links to a run's evidence pages, with ``?run=`` so the address can be shared."""
    row = where.container(horizontal=True)
    for page in pages:
        label, icon = EVIDENCE_PAGES[page]
        row.page_link(f"pages/{page}.py", label=label, icon=icon, query_params={"run": run_id})


def run_url(run_id: str) -> str:
    """The shareable address of a run's evidence (its Compare page), for link columns of tables."""
    return page_url("compare", run=run_id)


def run_caption(r: dict) -> None:
    b, c = r["baseline"], r["candidate"]
    st.caption(
        f"Run **{r['run_id']}** on traffic **{r['traffic']}**: baseline `{b.get('uri')}` (v{b.get('version')})"
        f" vs candidate `{c.get('uri')}` (v{c.get('version')}); {r['rows_done']:,} of "
        f"{r['rows_total'] or 0:,} rows, {r['status']}."
    )
    run_links(r["run_id"])


# -- notes and formatting ----------------------------------------------------------------------------------------------
def start(page_slot) -> None:
    """Per run of the app: forget the busy state and keep a slot above the page for the busy note."""
    data.start_run(page_slot)


def _check_table(rows: list[dict]) -> None:
    """Check rows in a table that shows every row and wraps the reasons."""
    if rows:
        styled = (
            pd.DataFrame(rows)
            .style.map(lambda v: OUTCOME_STYLES.get(v.split(" (")[0], ""), subset=["Outcome"])
            .set_properties(subset=["Why"], **{"min-width": "20em"})
        )
        st.table(styled, hide_index=True)


def checks(card: dict, note: str = "") -> None:
    """A scorecard (``Scorecard.to_dict()``): its summary (``note`` under it), the checks failing first in a
    table that shows every row and wraps its text, then the gates skipped and the context in their own tables."""
    summary = card.get("summary") or card.get("reason") or ""
    callout = {"PROMOTE": st.success, "ROLLBACK": st.error}.get(str(card.get("verdict")), st.warning)
    callout(f"**{summary}**", icon=":material/gavel:")
    if note:
        st.caption(note)
    counts = card.get("counts") or {}
    st.subheader("Checks: " + ", ".join(f"{n} {o}" for o, n in counts.items()))
    rows = views.check_rows(card.get("checks") or [])
    passed = [r for r in rows if r["Outcome"].startswith(views.OUTCOME_LABELS["pass"])]
    _check_table([r for r in rows if r not in passed])
    if passed:
        with st.expander(f"{len(passed)} passing checks", expanded=len(passed) == len(rows)):
            _check_table(passed)
    if card.get("skipped"):
        st.subheader("Gates not judged")
        st.table(
            pd.DataFrame([{"Gate": s["gate"], "Why it was not judged": s["reason"]} for s in card["skipped"]]),
            hide_index=True,
        )
    if card.get("context"):
        st.subheader("Context (never a failure by itself)")
        st.table(pd.DataFrame(views.context_rows(card["context"])), hide_index=True)


def num(x, fmt: str = "{:.4f}") -> str:
    return "–" if x is None else fmt.format(x)


def ci(lo, hi, fmt: str = "{:.4f}") -> str:
    return "" if lo is None or hi is None else f"[{fmt.format(lo)}, {fmt.format(hi)}]"
