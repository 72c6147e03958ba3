"""Output and settings helpers shared by the ``workbench`` commands."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from contextlib import contextmanager

from workbench.config import Settings, load_settings

log = logging.getLogger("workbench")


# -- output helpers --------------------------------------------------------------------------------
def emit(args, obj: dict, human: Callable[[dict], str] | None = None) -> None:
    if args.json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
    else:
        sys.stdout.write((human(obj) if human else json.dumps(obj, indent=2, default=str)) + "\n")
    sys.stdout.flush()


@contextmanager
def progress_bar(desc: str, unit: str = "rows"):
    """A tqdm bar on stderr, yielding a ``progress(done, total)`` callback; the bar appears at the first call,
    so a command that fails before any work prints its one-line error alone."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int | None = None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(desc=desc, unit=unit, unit_scale=True, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def settings_for(args) -> Settings:
    return load_settings(getattr(args, "home", None)).ensure()


def open_store(settings: Settings, read_only: bool = False):
    from workbench.store import Store

    return Store(settings.db_path, read_only=read_only)


def use_mlflow(settings: Settings) -> None:
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)


def _table(rows: list[tuple], header: tuple) -> str:
    cells = [
        tuple("" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in r) for r in [header, *rows]
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
