"""Settings: the workbench home, the DuckDB file, the MLflow tracking URI and key paths.

Environment variables: ``WORKBENCH_HOME`` (default ``./.workbench``) and ``MLFLOW_TRACKING_URI``
(default: a local sqlite store under the home, so nothing needs a server). Decisions:
``WORKBENCH_SIGNER`` (the name a signed record carries, default ``user@host``), ``WORKBENCH_TRUSTED_KEYS``
(extra trusted public-key PEM files, separated by ``os.pathsep``; the home's own key and every PEM in
``$WORKBENCH_HOME/keys/trusted/`` are trusted too) and ``WORKBENCH_WEBHOOK_SECRET`` (the MLflow webhook
secret the service checks ``X-MLflow-Signature`` with). ``WORKBENCH_API_TOKEN``: the bearer token the
service's state-changing endpoints require. ``WORKBENCH_PUBLISHED_DIR``: where each model's published weight
document (the chain head's witness outside the database) is written, by default ``$WORKBENCH_HOME/published``.
service's state-changing endpoints require. Prices that turn each model's measured resources into a cost per
million requests (USD, non-negative): ``WORKBENCH_PRICE_CPU_HOUR``, ``WORKBENCH_PRICE_GPU_HOUR`` and
``WORKBENCH_PRICE_MEMORY_GB_HOUR`` (unset: the defaults in ``workbench.evaluate.resources``). Where the lake's
catalog and data files are (``WORKBENCH_CATALOG``, ``WORKBENCH_DATA_PATH``) is read by the storage itself:
``workbench.store.lake.LakeTarget``.
"""

from __future__ import annotations

import getpass
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    mlflow_tracking_uri: str
    signer: str = "workbench"
    trusted_keys: tuple[Path, ...] = ()
    webhook_secret: str | None = None
    api_token: str | None = None
    published: Path | None = None  # where the weight documents go (another volume); default: home/published
    prices: dict[str, float] = field(default_factory=dict)  # the prices set in the environment (USD)

    @property
    def db_path(self) -> Path:
        """The home's storage: a DuckLake (catalog and Parquet data files) in this folder."""
        return self.home / "lake"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def trusted_keys_dir(self) -> Path:
        return self.keys_dir / "trusted"

    @property
    def published_dir(self) -> Path:
        """The weight documents' folder: ``WORKBENCH_PUBLISHED_DIR``, by default ``$WORKBENCH_HOME/published``."""
        return self.published or self.home / "published"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def ensure(self) -> Settings:
        """Create the home folder (and its sub-folders) if missing; a sub-folder that is a symlink out of
        the home is refused (keys, artifacts and reports stay in it)."""
        from workbench.paths import within

        for d in (self.artifacts_dir, self.reports_dir, self.keys_dir):
            within(self.home, d.name, "home folder")
        for d in (self.home, self.artifacts_dir, self.reports_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self


def configure_runtime() -> None:
    """Process-wide defaults for entry points, set before torch or sklearn load their OpenMP runtimes.

    torch and scikit-learn each bring an OpenMP runtime whose idle threads spin by default; with both
    models of a replay in one process they starve each other (measured: 2-4x slower replays on 2 cores).
    Passive waiting fixes that; an explicit ``OMP_WAIT_POLICY`` in the environment wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_mlflow_uri(home: Path) -> str:
    return f"sqlite:///{(home / 'mlflow.db').resolve()}"


def load_settings(home: str | os.PathLike | None = None) -> Settings:
    """Settings from arguments, then the environment, then defaults."""
    h = Path(home or os.environ.get("WORKBENCH_HOME") or ".workbench").resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri(h)
    trusted = tuple(Path(p).resolve() for p in os.environ.get("WORKBENCH_TRUSTED_KEYS", "").split(os.pathsep) if p)
    return Settings(
        home=h,
        mlflow_tracking_uri=uri,
        signer=os.environ.get("WORKBENCH_SIGNER") or _default_signer(),
        trusted_keys=trusted,
        webhook_secret=os.environ.get("WORKBENCH_WEBHOOK_SECRET") or None,
        api_token=os.environ.get("WORKBENCH_API_TOKEN") or None,
        published=Path(os.environ["WORKBENCH_PUBLISHED_DIR"]).resolve()
        if os.environ.get("WORKBENCH_PUBLISHED_DIR")
        else None,
        prices=_prices(),
    )


PRICE_VARIABLES = {
    "cpu_hour": "WORKBENCH_PRICE_CPU_HOUR",
    "gpu_hour": "WORKBENCH_PRICE_GPU_HOUR",
    "memory_gb_hour": "WORKBENCH_PRICE_MEMORY_GB_HOUR",
}


def _prices() -> dict[str, float]:
    """The prices set in the environment; a value that is not a finite, non-negative number is an error naming
    its variable."""
    from workbench.errors import WorkbenchError

    out = {}
    for key, var in PRICE_VARIABLES.items():
        raw = os.environ.get(var)
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise WorkbenchError(f"{var} must be a finite, non-negative price in USD, not {raw!r}")
        out[key] = value
    return out


def _default_signer() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "workbench"
    return f"{user}@{platform.node()}"
