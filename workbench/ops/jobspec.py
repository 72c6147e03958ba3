"""Job specs: the validated model of a scheduled replay job, how it is read, and its cron schedule.

A job spec (TOML or YAML, e.g. ``pipelines/jobs/flight-delay.toml``; validated strictly: an unknown key is
an error naming it) names a registered model, its baseline and candidate selectors (aliases or versions),
where traffic comes from (a file glob, optionally cut to a rolling event-time window, or a named traffic
set), the labels, the policy, a cron schedule (UTC) and what to do with the verdict (record, or also apply
the weight). A job of a scheduled spec is named after its schedule slot (:func:`slot_job_id`). The runner
is :mod:`workbench.ops.jobs`.
"""

from __future__ import annotations

import os
import re
import tomllib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workbench import WorkbenchError
from workbench.clock import parse_duration
from workbench.decide.policy import _format_errors

SPEC_SUFFIXES = (".toml", ".yaml", ".yml")
SPEC_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
SELECTOR_RE = re.compile(r"^(?:\d+|[A-Za-z][A-Za-z0-9_-]{0,63})$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrafficSpec(_Strict):
    path: str | None = None  # file or glob (Parquet, CSV, JSON lines); a window needs Parquet
    table: str | None = None  # or a traffic set already in the store
    window: str | None = None  # rolling event-time window, e.g. "last 24 h"
    anchor: Literal["now", "latest"] = "now"  # the window ends at the job's time, or at the newest event
    id_col: str = "request_id"
    time_col: str = "event_time"
    entity_col: str | None = None
    nullable: tuple[str, ...] = ()

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @field_validator("table")
    @classmethod
    def _table(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,62}", v):
            raise ValueError(f"{v!r} is not a traffic name (a letter, then letters, digits or '_')")
        return v

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.table is None):
            raise ValueError("give exactly one of path (files) or table (a traffic set in the store)")
        if self.window and self.path is None:
            raise ValueError("a window cuts files by event time: it needs path, not table")
        if self.anchor == "latest" and not self.window:
            raise ValueError("anchor = 'latest' places a window: set window too")
        return self


class LabelsSpec(_Strict):
    path: str
    id_col: str = "request_id"
    label_col: str = "label"
    time_col: str | None = "label_time"


class ReplaySpec(_Strict):
    batch_size: int = Field(default=8192, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mode: Literal["throughput", "online"] = "throughput"
    model_timeout: float | None = Field(default=None, gt=0)


class DriftSpec(_Strict):
    enabled: bool = True
    reference: str | None = None  # as `workbench drift --reference`; default: the run's earliest 20 %


class TriggerSpec(_Strict):
    new_versions: bool = True  # a new model version (webhook) runs the job on it
    aliases: tuple[str, ...] = ("challenger",)  # so does one of these aliases moving to a version


class JobSpec(_Strict):
    name: str
    model: str
    baseline: str = "champion"
    candidate: str = "challenger"
    schedule: str | None = None  # cron expression, UTC
    traffic: TrafficSpec
    labels: LabelsSpec | None = None
    policy: str | None = None  # policy file; default: the shipped policy
    verdict: Literal["record", "apply"] = "record"
    replay: ReplaySpec = ReplaySpec()
    drift: DriftSpec = DriftSpec()
    triggers: TriggerSpec = TriggerSpec()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not SPEC_NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r}: use a letter, then letters, digits, '-' or '_' (at most 32)")
        return v

    @field_validator("baseline", "candidate", mode="before")
    @classmethod
    def _selector(cls, v: Any) -> str:
        v = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
        if not isinstance(v, str) or not SELECTOR_RE.fullmatch(v):
            raise ValueError(f"{v!r}: use an alias (e.g. champion, challenger) or a version number")
        return v

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        from croniter import croniter

        if v is not None and not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a cron expression (e.g. '0 * * * *' for every hour)")
        return v


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec and the file it came from (relative paths in it resolve against that file's folder)."""

    spec: JobSpec
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    def resolve(self, text: str) -> str:
        """A path of the spec: ``$VAR``/``${VAR}`` expanded (an unset variable is an error), ``~`` expanded,
        relative paths against the spec's folder."""
        missing = [m[0] or m[1] for m in re.findall(r"\$\{(\w+)\}|\$(\w+)", text) if (m[0] or m[1]) not in os.environ]
        if missing:
            raise WorkbenchError(
                f"job spec {self.path}: {text!r} uses unset environment variable(s) {', '.join(missing)}"
            )
        p = Path(os.path.expanduser(os.path.expandvars(text)))
        return str(p if p.is_absolute() else (self.path.parent / p).resolve())

    def files(self, path: str) -> list[Path]:
        """The files a path (file or glob) of the spec names, resolved as :meth:`resolve` does."""
        from workbench.ingest.traffic import resolve_paths

        return resolve_paths(self.resolve(path))


def parse_spec(data: Any, path: Path) -> LoadedSpec:
    """Validate a spec mapping; an unknown key or a bad value is an error naming it."""
    if not isinstance(data, dict):
        raise WorkbenchError(f"job spec {path}: a spec must be a mapping of keys to values")
    try:
        return LoadedSpec(JobSpec.model_validate(data), path.resolve())
    except ValidationError as e:
        raise WorkbenchError(f"job spec {path}: {_format_errors(e)}") from None


def load_spec(path: str | Path) -> LoadedSpec:
    """Read a TOML or YAML job spec."""
    p = Path(path)
    if p.suffix.lower() not in SPEC_SUFFIXES:
        raise WorkbenchError(f"job spec {p}: use a .toml, .yaml or .yml file")
    try:
        text = p.read_text("utf-8")
    except OSError as e:
        raise WorkbenchError(f"cannot read job spec {p}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text) if p.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise WorkbenchError(f"job spec {p} is not valid {p.suffix[1:].upper()}: {str(e).splitlines()[0]}") from None
    return parse_spec(data, p)


def load_specs(paths: list[str | Path]) -> list[LoadedSpec]:
    """Specs from files and folders (every .toml/.yaml/.yml in a folder); names must be unique."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in SPEC_SUFFIXES)
        else:
            files.append(p)
    if not files:
        raise WorkbenchError(f"no job spec in {', '.join(map(str, paths))}")
    specs = [load_spec(f) for f in files]
    seen: dict[str, Path] = {}
    for s in specs:
        if s.name in seen:
            raise WorkbenchError(f"job specs {seen[s.name]} and {s.path} have the same name {s.name!r}")
        seen[s.name] = s.path
    return specs


def last_fire(schedule: str, now: datetime) -> datetime:
    """The latest time at or before ``now`` that the cron ``schedule`` fires (UTC)."""
    from croniter import croniter

    prev = croniter(schedule, now).get_prev(datetime)
    at = croniter(schedule, prev).get_next(datetime)
    return at if at <= now else prev


def next_fire(schedule: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that the cron ``schedule`` fires (UTC)."""
    from croniter import croniter

    return croniter(schedule, after).get_next(datetime)


def slot_job_id(spec: str, fire: datetime) -> str:
    """The job id of a schedule slot: running one slot twice resumes (or reports) the same job."""
    return f"job_{spec.replace('-', '_')}_{fire.astimezone(UTC):%Y%m%dT%H%M}"


def manual_job_id(spec: str, at: datetime) -> str:
    """The job id of a run outside the schedule: unique, so it never resumes another job."""
    return f"job_{spec.replace('-', '_')}_{at.astimezone(UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:4]}"
