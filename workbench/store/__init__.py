"""Storage (a DuckLake, through DuckDB): the schema and every SQL statement of the workbench.

One :class:`Store` owns one connection; threads take their own cursor with :meth:`Store.cursor`. Its methods
come from one module per concern, in data-flow order: :mod:`~workbench.store.base` (connection, schema,
transactions, settings), :mod:`~workbench.store.traffic`, :mod:`~workbench.store.runs` (with the run
lifecycle: :meth:`Store.open_run`, :meth:`Store.finish_run`), :mod:`~workbench.store.evaluations`,
:mod:`~workbench.store.drift`, :mod:`~workbench.store.decisions`, :mod:`~workbench.store.approvals`,
:mod:`~workbench.store.jobs` and :mod:`~workbench.store.app`; :mod:`~workbench.store.maintenance` keeps the lake
small and migrates old homes. Beneath them: :mod:`~workbench.store.lake` (where the lake lives and how a
process attaches it), :mod:`~workbench.store.schema` (the tables) and :mod:`~workbench.store.names` (names in
SQL). Values always travel as parameters; identifiers (traffic tables, column names) are validated and quoted
with :func:`qident`, never formatted raw into SQL.
"""

from __future__ import annotations

from workbench.store.app import AppStore
from workbench.store.approvals import ApprovalStore
from workbench.store.base import WRITE_CONFLICTS, ArrowView
from workbench.store.decisions import DecisionStore
from workbench.store.drift import DriftStore
from workbench.store.evaluations import EvaluationStore
from workbench.store.jobs import JobStore
from workbench.store.lake import DatabaseLocked, LegacyDatabase, change_marks
from workbench.store.names import check_name, name_problem, qident, sql_literal, traffic_table
from workbench.store.runs import AlreadyCommitted, RunCounts, RunState

__all__ = [
    "WRITE_CONFLICTS",
    "AlreadyCommitted",
    "ArrowView",
    "DatabaseLocked",
    "LegacyDatabase",
    "RunCounts",
    "RunState",
    "Store",
    "change_marks",
    "check_name",
    "name_problem",
    "qident",
    "sql_literal",
    "traffic_table",
]


class Store(AppStore, EvaluationStore, DriftStore, DecisionStore, ApprovalStore, JobStore):
    """The workbench's storage. Use as a context manager or call :meth:`close`.

    ``AppStore`` builds on ``RunStore``, which builds on ``TrafficStore`` (they read each other's tables);
    the other concerns stand alone on the connection."""
