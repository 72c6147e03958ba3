"""Reference sketches and the DuckDB-backed column pair that the drift tests read.

A :class:`RowSet` names rows drift reads: a traffic set (only the rows a run replayed, within ranges of
``(event_time, _row)``) or a stored reference table; with a ``role`` it names those rows' scores by that model.

The reference is summarized once per reference and column into a :class:`ColumnSketch` stored in DuckDB:
counts, missing values, min, max, mean, standard deviation, percentiles (quantile bins) and, when the
column holds at most :data:`VALUE_CAP` distinct values (always for categorical columns), the exact count of
every value. With those counts the sketch is lossless (and its percentiles exact): every test reads it
instead of the reference rows.
A continuous column has no such counts; a quantile sketch would change the statistic (and so possibly the
verdict), so tests on it read the raw reference rows in DuckDB instead, and say so (``method: "exact"``).

:class:`SqlPair` answers the tests' questions (value counts, histograms, ECDF distances) from aggregates
that DuckDB computes over the current rows, so a large current window is never loaded into Python.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime

import numpy as np

from workbench import WorkbenchError
from workbench.ingest.traffic import INTEGER_TYPES
from workbench.store import Store

#: distinct values up to which a numeric column's sketch keeps every value's count (lossless)
VALUE_CAP = 50_000
#: percentiles kept per numeric column (0, 1, ..., 100)
PERCENTILES = tuple(i / 100 for i in range(101))
#: above this many current rows that an approximate distinct count reports, a column has "many" values
_MANY = 1_000

Bound = tuple[datetime, int]


@dataclass(frozen=True)
class RowSet:
    """Rows drift reads. ``ranges`` is a union of ``(lo, hi]`` ranges on ``(event_time, _row)`` (None: open)."""

    source: str
    kind: str = "traffic"  # "traffic" (a traffic set) or "table" (a stored reference table)
    max_row: int | None = None  # only rows with _row <= max_row (those a run replayed)
    ranges: tuple[tuple[Bound | None, Bound | None], ...] = ()
    run_id: str | None = None  # scores come from this run's predictions ...
    score_key: str | None = None  # ... or from stored reference scores under this key
    role: str | None = None  # set: the rows' scores by this model, as column "score"
    classes: tuple[str, ...] = ()  # a multi-class run's classes: "score" is then the predicted class's name

    def scores(self, role: str) -> RowSet:
        """The scores of ``role`` on these rows."""
        if self.run_id is None and self.score_key is None:
            raise WorkbenchError(f"no scores are known for {self.source!r}")
        return replace(self, role=role)

    def key(self, fingerprint: str) -> str:
        """A stable key of these rows and the data version (``fingerprint``), for stored sketches."""
        return hashlib.sha256(json.dumps([asdict(self), fingerprint], default=str).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ColumnSource:
    """One column read as values with weights: raw rows of a RowSet, or the value counts of a stored sketch."""

    column: str
    domain: str  # "num" (compared as DOUBLE) or "str" (compared as VARCHAR)
    rows: RowSet | None = None
    key: str | None = None


@dataclass(frozen=True)
class ColumnSketch:
    """The stored summary of one reference column."""

    column: str
    domain: str
    dtype: str
    rows: int  # finite, non-null values
    missing: int  # null or NaN
    nonfinite: int  # +-inf
    min: float | None
    max: float | None
    mean: float | None
    std: float | None  # population standard deviation (numpy's default)
    n_unique: int  # exact when lossless, else approximate
    lossless: bool  # every value's count is stored
    quantiles: tuple | None = None  # values at PERCENTILES (numeric columns) ...
    quantiles_exact: bool = False  # ... as quantile_cont (lossless) or t-digest approximations
    value_cap: int = VALUE_CAP

    def to_dict(self) -> dict:
        d = asdict(self)
        d["quantiles"] = list(self.quantiles) if self.quantiles is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ColumnSketch:
        return cls(**(d | {"quantiles": tuple(d["quantiles"]) if d.get("quantiles") is not None else None}))


def domain_of(dtype: str) -> str | None:
    """ "num" for numeric DuckDB types, "str" for text and booleans, None for types drift does not compare."""
    base = dtype.split("(")[0].upper()
    if base in INTEGER_TYPES or base in ("FLOAT", "DOUBLE", "DECIMAL", "REAL"):
        return "num"
    if base in ("VARCHAR", "BOOLEAN"):
        return "str"
    return None


def is_integer(dtype: str) -> bool:
    return dtype.split("(")[0].upper() in INTEGER_TYPES


def weighted_quantiles(values: np.ndarray, counts: np.ndarray, probs) -> list[float]:
    """Quantiles of values repeated by their counts (sorted values), interpolated as DuckDB's ``quantile_cont``."""
    cum = np.cumsum(counts)
    pos = np.asarray(probs, dtype=np.float64) * (cum[-1] - 1)
    lo = np.floor(pos)
    x_lo = values[np.searchsorted(cum, lo, side="right")]
    x_hi = values[np.searchsorted(cum, np.minimum(lo + 1, cum[-1] - 1), side="right")]
    return (x_lo + (pos - lo) * (x_hi - x_lo)).tolist()


def ensure_sketches(store: Store, rows: RowSet, columns: list[str], key: str) -> dict[str, ColumnSketch]:
    """The sketches of ``columns`` of the reference ``rows`` under ``key``: loaded when stored, else built
    (one profile pass, one GROUP BY per column that may be kept, one approximate-percentile pass over the
    continuous columns) and stored."""
    have = {c: ColumnSketch.from_dict(d) for c, d in store.drift_sketch_load(key).items() if c in columns}
    todo = [c for c in columns if c not in have]
    if not todo:
        return have
    types = store.drift_column_types(rows, todo)
    domains = {}
    for c in todo:
        dom = domain_of(types[c])
        if dom is None:
            raise WorkbenchError(f"column {c!r} has type {types[c]}, which drift cannot compare")
        domains[c] = dom
    _, prof = store.drift_profile(rows, domains)
    built: dict[str, ColumnSketch] = {}
    for c in todo:
        p = prof[c]
        cap = VALUE_CAP if domains[c] == "num" else max(VALUE_CAP, int(p["n"]))
        # HyperLogLog errs by a few percent: past 1.25x the cap the counts would not be kept anyway
        n_unique = (
            store.drift_store_values(key, c, ColumnSource(c, domains[c], rows=rows), cap)
            if p["n"] and (p["approx_unique"] or 0) <= 1.25 * cap
            else None
        )
        quantiles = None
        if n_unique is not None and domains[c] == "num":
            v, w = store.drift_weights(ColumnSource(c, "num", key=key))
            quantiles = tuple(weighted_quantiles(np.asarray(v, dtype=np.float64), np.asarray(w), PERCENTILES))
        built[c] = ColumnSketch(
            column=c,
            domain=domains[c],
            dtype=types[c],
            rows=int(p["n"]),
            missing=int(p["missing"]),
            nonfinite=int(p["nonfinite"]),
            min=p["min"],
            max=p["max"],
            mean=p["mean"],
            std=p["std"],
            n_unique=int(n_unique or p["approx_unique"] or 0),
            lossless=n_unique is not None,
            quantiles=quantiles,
            quantiles_exact=bool(quantiles),
            value_cap=cap,
        )
    continuous = [c for c, sk in built.items() if sk.domain == "num" and not sk.lossless and sk.rows]
    for c, q in store.drift_approx_quantiles(rows, continuous, list(PERCENTILES)).items():
        built[c] = replace(built[c], quantiles=tuple(q))
    for c, sk in built.items():
        store.drift_sketch_save(key, c, sk.to_dict())
    return have | built


@dataclass
class SqlPair:
    """A reference column (through its sketch) and the same column of the current rows, for the stat tests.

    ``kind`` is the column's kind for the tests ("numerical" or "categorical"); ``raw_reference`` turns true
    once a question needed the reference rows themselves (the sketch was not lossless for it).
    """

    store: Store
    column: str
    kind: str
    sketch: ColumnSketch
    sketch_key: str
    reference: RowSet
    current: RowSet
    current_profile: dict
    integer: bool
    raw_reference: bool = False
    _ecdf: tuple | None = field(default=None, repr=False)

    @property
    def ref_n(self) -> int:
        return self.sketch.rows

    @property
    def cur_n(self) -> int:
        return int(self.current_profile["n"])

    @property
    def ref_std(self) -> float:
        return float(self.sketch.std or 0.0)

    @property
    def method(self) -> str:
        return "exact" if self.raw_reference else "sketch"

    def _ref(self) -> ColumnSource:
        if self.sketch.lossless:
            return ColumnSource(self.column, self.sketch.domain, key=self.sketch_key)
        self.raw_reference = True
        return ColumnSource(self.column, self.sketch.domain, rows=self.reference)

    def _cur(self) -> ColumnSource:
        return ColumnSource(self.column, self.sketch.domain, rows=self.current)

    def ref_nunique(self) -> int:
        """Distinct reference values (a lower bound above VALUE_CAP, where only that matters)."""
        return self.sketch.n_unique if self.sketch.lossless else max(self.sketch.n_unique, VALUE_CAP + 1)

    def union_nunique(self, at_most: int) -> int:
        """Distinct values of both samples together, exact up to ``at_most`` (``at_most + 1`` means more)."""
        if self.ref_nunique() > at_most or (self.current_profile["approx_unique"] or 0) > 4 * at_most + _MANY:
            return at_most + 1
        return min(self.store.drift_distinct_union(self._ref(), self._cur()), at_most + 1)

    def union_nunique_exact(self) -> int:
        return self.store.drift_distinct_union(self._ref(), self._cur())

    def value_range(self) -> tuple[float, float]:
        """Smallest and largest finite value of both samples."""
        return (min(self.sketch.min, self.current_profile["min"]), max(self.sketch.max, self.current_profile["max"]))

    def counts(self) -> tuple[list, np.ndarray, np.ndarray]:
        """Sorted distinct values of both samples and each sample's count of each."""
        ref = dict(self.store.drift_counts(self._ref()))
        cur = dict(self.store.drift_counts(self._cur()))
        keys = sorted(set(ref) | set(cur))
        return (
            keys,
            np.array([ref.get(k, 0) for k in keys], dtype=np.int64),
            np.array([cur.get(k, 0) for k in keys], dtype=np.int64),
        )

    def histogram(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each sample's counts in numpy-histogram bins over ``edges``."""
        e = [float(x) for x in edges]
        return (
            np.array(self.store.drift_histogram(self._ref(), e), dtype=np.int64),
            np.array(self.store.drift_histogram(self._cur(), e), dtype=np.int64),
        )

    def ecdf(self) -> tuple[float, float, float]:
        """(max |F_r - F_c|, integral |F_r - F_c|, integral (F_r - F_c)^2) over the real line, for the empirical
        CDFs F_r and F_c: the Kolmogorov-Smirnov distance and what the Wasserstein and energy distances are
        computed from. The store's gap of cumulative counts is n_r * n_c * (F_r - F_c)."""
        if self._ecdf is None:
            sup, l1, l2 = self.store.drift_cdf_gap(self._ref(), self._cur(), self.ref_n, self.cur_n)
            scale = float(self.ref_n) * float(self.cur_n)
            self._ecdf = (sup / scale, l1 / scale, l2 / (scale * scale))
        return self._ecdf

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        """Both samples as arrays (for tests whose exact distribution needs them: small samples only)."""
        out = []
        for src in (self._ref(), self._cur()):
            v, w = self.store.drift_weights(src)
            out.append(np.repeat(np.asarray(v, dtype=np.float64), np.asarray(w, dtype=np.int64)))
        return out[0], out[1]
