"""What a caller of the flow hears while it runs (kept apart from :mod:`workbench.ops.flow`, which imports
the stages, so the CLI can subclass it without loading them)."""

from __future__ import annotations


class FlowEvents:
    """What a caller hears while the flow runs; the defaults do nothing."""

    def begin(self, stage: str) -> None:
        """A stage starts."""

    def progress(self, stage: str, done: int, total: int | None) -> None:
        """Rows done of a stage (ingest: rows read, total unknown; replay: rows replayed of the traffic's)."""

    def end(self, stage: str, summary: dict, seconds: float) -> None:
        """A stage finished with this summary."""

    def skip(self, stage: str, reason: str) -> None:
        """A stage does not run, for this reason."""
