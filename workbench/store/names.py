"""Names in SQL: validated user-chosen names, quoted identifiers and literals, and the tables they name.

Values always travel as parameters; identifiers (traffic tables, column names) are validated and quoted with
:func:`qident`, never formatted raw into SQL.
"""

from __future__ import annotations

import re
import unicodedata

from workbench.errors import WorkbenchError
from workbench.roles import ROLES
from workbench.tasks import MULTICLASS, REGRESSION

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")


def qident(name: str) -> str:
    """Quote any column name as a DuckDB identifier."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise WorkbenchError(f"invalid column name {name!r}")
    return '"' + name.replace('"', '""') + '"'


def name_problem(name: str) -> str | None:
    """What makes ``name`` unfit as a name, whatever else it may hold: whitespace or a control character at
    either end, or a control character (a line break included) anywhere; None when there is none."""
    if not name:
        return "it is empty"
    for where, ch in (("starts", name[0]), ("ends", name[-1])):
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            return f"it {where} with whitespace or a control character (U+{ord(ch):04X})"
    bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        return f"it holds a control character (U+{ord(bad):04X})"
    return None


def check_name(name: str, what: str = "name") -> str:
    """Validate a user-chosen object name (traffic name, run id): the whole name must match, so a trailing
    line break is refused, not ignored."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        problem = name_problem(name) if isinstance(name, str) else None
        raise WorkbenchError(
            f"invalid {what} {name!r}: "
            + (f"{problem}; " if problem else "")
            + "use a letter followed by letters, digits or '_' (at most 63)"
        )
    return name


def check_role(role: str) -> str:
    """Validate a model role (it names prediction columns: ``baseline_score``, ``candidate_error``, ...)."""
    if role not in ROLES:
        raise WorkbenchError(f"unknown model role {role!r}")
    return role


def label_source(task: str) -> tuple[str, str]:
    """(table, column) holding the labels a run of ``task`` is judged on: the 0/1 labels of a binary run, the
    numeric labels of a regression run, the class labels (text) of a multi-class run."""
    if task == MULTICLASS:
        return ("label_classes", "label")
    return ("label_values", "value") if task == REGRESSION else ("labels", "label")


def traffic_table(name: str) -> str:
    """The quoted table that holds the rows of traffic set ``name``."""
    return qident("traffic_" + check_name(name, "traffic name"))


def sql_literal(value: str) -> str:
    """A SQL string literal (for statements that cannot take parameters, such as :meth:`ArrowView.execute`)."""
    return "'" + value.replace("'", "''") + "'"
