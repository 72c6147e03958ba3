"""Model references and loading through MLflow flavors, behind one small :class:`Predictor` protocol.

A model URI is anything ``mlflow.pyfunc.load_model`` accepts (``models:/name@alias``, ``models:/name/3``,
``runs:/<id>/model``, a local model folder). The score of a binary classifier is the probability of the
positive class (``predict_proba[:, 1]`` for sklearn, a torch module's output, a pyfunc's numeric output); a
multi-class classifier gives an n x C matrix of class probabilities (``predict_proba``, or a pyfunc's output of
one column per class) for its classes (the estimator's ``classes_``, else the metadata's ``classes``).
The decision threshold comes from the model's metadata (``threshold``), else 0.5.

A regression model may also predict quantiles of its target: it declares their levels in its metadata
(``quantiles = [0.1, 0.5, 0.9]``), or names them in its output signature (columns ``q0.1``, ``q0.5``, ...
beside ``prediction``). Its pyfunc output is then a DataFrame with the column ``prediction`` (the point
prediction) and one column ``q<level>`` per level (:func:`quantile_column`), or an n x (1 + levels) matrix in that
order (prediction, then the levels ascending). A central interval is given as its two quantiles (an 80 %
interval: ``q0.1`` and ``q0.9``).

Each model's task (:mod:`workbench.tasks`) is its metadata's ``task`` when it sets one; otherwise an sklearn
estimator with ``predict_proba`` is a classifier (binary, or multi-class with more than two classes) and one
without it that scikit-learn calls a regressor is a regression model (its ``predict`` is the prediction); any
other model is taken as a binary classifier (``replay --task`` overrides this).

MLflow and torch are imported lazily: only where a model is actually loaded.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, replace
from typing import Protocol

import numpy as np
import pyarrow as pa

from workbench import WorkbenchError
from workbench.replay.resources import LoadStats, measure_load
from workbench.tasks import BINARY, MULTICLASS, REGRESSION, check_task

log = logging.getLogger(__name__)
DEFAULT_THRESHOLD = 0.5
_REGISTRY_URI = re.compile(r"models:/(?P<name>[^/@\s]+)(?:@(?P<alias>[^/\s]+)|/(?P<version>\d+))")  # fullmatch only


@dataclass(frozen=True)
class ModelRef:
    """What a run records about one model: where it came from and how it scores."""

    uri: str
    name: str | None
    version: str | None
    run_id: str | None
    flavor: str
    features: tuple[str, ...]
    threshold: float
    task: str = BINARY  # what it predicts (workbench.tasks); set from the metadata or the loaded model
    task_source: str = "default"  # where ``task`` came from: "metadata", "model", "default" or "option"
    classes: tuple[str, ...] | None = None  # a classifier's classes as text, in its probabilities' order
    quantiles: tuple[float, ...] | None = None  # a regression model's quantile levels, ascending

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        d["classes"] = None if self.classes is None else list(self.classes)
        d["quantiles"] = None if self.quantiles is None else list(self.quantiles)
        return d

    @property
    def width(self) -> int | None:
        """The columns of the model's output when it has several (a multi-class classifier's classes; a quantile
        regression model's prediction and levels), else None (one score per row)."""
        if self.task == MULTICLASS:
            return len(self.classes or ())
        if self.task == REGRESSION and self.quantiles:
            return 1 + len(self.quantiles)
        return None


class Predictor(Protocol):
    """Scores a batch of traffic: one positive-class score per row, in row order. ``load_stats`` (optional, set by
    :func:`load_predictor`): what loading it cost."""

    ref: ModelRef
    device: str

    def predict(self, batch: pa.Table) -> np.ndarray: ...


def parse_registry_uri(uri: str) -> tuple[str, str | None, str | None] | None:
    """(name, alias, version) of a ``models:/`` URI, or None for other URIs."""
    m = _REGISTRY_URI.fullmatch(uri)
    return (m["name"], m["alias"], m["version"]) if m else None


def choose_device(requested: str = "auto") -> str:
    """Pick the torch device once: ``auto`` means CUDA when present, else CPU (logged)."""
    if requested not in ("auto", "cpu", "cuda"):
        raise WorkbenchError(f"unknown device {requested!r}: use auto, cpu or cuda")
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise WorkbenchError("--device cuda was asked for but no CUDA device is available")
    log.info("no CUDA device available: torch models run on the CPU")
    return "cpu"


def _features(signature) -> tuple[str, ...]:
    if signature is None or signature.inputs is None:
        raise WorkbenchError(
            "the model has no input signature: log it with a signature so the workbench knows its feature columns"
        )
    names = signature.inputs.input_names()
    if not names or any(not isinstance(n, str) for n in names):
        raise WorkbenchError("the model's input signature has unnamed inputs; log it with named columns")
    return tuple(names)


POINT_COLUMN = "prediction"  # a quantile regression model's point prediction in its output
_QUANTILE_COLUMN = re.compile(r"q(0?\.\d+)")  # fullmatch only


def quantile_column(level: float) -> str:
    """The output column of quantile ``level`` (``q0.1`` for 0.1)."""
    return f"q{level:g}"


def check_quantiles(levels, source: str) -> tuple[float, ...]:
    """``levels`` as ascending floats, each strictly between 0 and 1 and given once, else a one-line error."""
    try:
        qs = tuple(float(q) for q in levels)
    except (TypeError, ValueError):
        raise WorkbenchError(f"the {source} quantiles must be a list of numbers, got {levels!r}") from None
    if not qs or any(not 0 < q < 1 for q in qs) or len(set(qs)) != len(qs):
        raise WorkbenchError(f"the {source} quantiles must be distinct levels strictly between 0 and 1, got {list(qs)}")
    return tuple(sorted(qs))


def _declared_quantiles(metadata: dict, signature) -> tuple[float, ...] | None:
    """A model's quantile levels: its metadata's ``quantiles``, else its output signature's ``q<level>`` columns."""
    if metadata.get("quantiles") is not None:
        return check_quantiles(metadata["quantiles"], "model metadata's")
    outputs = getattr(signature, "outputs", None)
    names = [n for n in (outputs.input_names() if outputs is not None else []) if isinstance(n, str)]
    found = [float(m[1]) for n in names if (m := _QUANTILE_COLUMN.fullmatch(n))]
    return check_quantiles(found, "output signature's") if found else None


def describe(uri: str) -> ModelRef:
    """Resolve ``uri`` to a :class:`ModelRef` without loading the model's weights."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as e:
        raise WorkbenchError(f"cannot resolve model {uri}: {str(e).splitlines()[0]}") from None
    name = version = None
    parsed = parse_registry_uri(uri)
    if parsed:
        name, alias, version = parsed
        if alias:
            mv = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
            version = str(mv.version)
    flavors = info.flavors
    flavor = "pytorch" if "pytorch" in flavors else "sklearn" if "sklearn" in flavors else "pyfunc"
    threshold = float((info.metadata or {}).get("threshold", DEFAULT_THRESHOLD))
    task = (info.metadata or {}).get("task")
    if task is not None:
        check_task(str(task), supported=False)
    classes = (info.metadata or {}).get("classes")
    quantiles = _declared_quantiles(info.metadata or {}, info.signature)
    return ModelRef(
        uri=uri,
        name=name,
        version=version,
        run_id=info.run_id,
        flavor=flavor,
        features=_features(info.signature),
        threshold=threshold,
        **({"task": str(task), "task_source": "metadata"} if task is not None else {}),
        classes=tuple(str(c) for c in classes) if isinstance(classes, list | tuple) else None,
        quantiles=quantiles,
    )


def estimator_task(model) -> str | None:
    """What an sklearn estimator (or pipeline) predicts, from its API: None when it does not say."""
    if hasattr(model, "predict_proba"):
        classes = getattr(model, "classes_", None)
        return MULTICLASS if classes is not None and len(classes) > 2 else BINARY
    if getattr(model, "_estimator_type", None) == "regressor":
        return REGRESSION
    try:
        from sklearn.base import is_regressor

        return REGRESSION if is_regressor(model) else None
    except Exception:  # not an sklearn object: its API says nothing
        return None


def load_predictor(uri: str, device: str = "auto") -> Predictor:
    """Load a model through its most specific flavor; torch models go to ``device``. The predictor's
    ``load_stats`` say what loading it cost (:func:`workbench.replay.resources.measure_load`)."""
    ref = describe(uri)
    import mlflow

    # the flavor's library is imported (and the device chosen) before the load is measured: it is not the model's
    if ref.flavor == "pytorch":
        import mlflow.pytorch

        device = choose_device(device)
    elif ref.flavor == "sklearn":
        import mlflow.sklearn
        import sklearn  # noqa: F401

    def load() -> tuple[SklearnPredictor | PyfuncPredictor | TorchPredictor, str]:
        local = uri if os.path.isdir(uri) else mlflow.artifacts.download_artifacts(artifact_uri=uri)
        if ref.flavor == "pytorch":
            return TorchPredictor(ref, mlflow.pytorch.load_model(local, map_location="cpu"), device), local
        if ref.flavor == "sklearn":
            return SklearnPredictor(ref, mlflow.sklearn.load_model(local)), local
        return PyfuncPredictor(ref, mlflow.pyfunc.load_model(local)), local

    try:
        predictor, stats = measure_load(load)
    except WorkbenchError:
        raise
    except Exception as e:  # a model that cannot load is a user-facing error, whatever the flavor raised
        raise WorkbenchError(f"cannot load model {uri}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    predictor.load_stats = stats
    if isinstance(predictor, SklearnPredictor):
        task = estimator_task(predictor.model) if ref.task_source == "default" else None
        found = getattr(predictor.model, "classes_", None)
        classes = tuple(str(c) for c in found) if found is not None else ref.classes
        predictor.ref = replace(ref, classes=classes)
        if task is not None:
            predictor.ref = replace(predictor.ref, task=task, task_source="model")
    return predictor


def _positive_scores(out) -> np.ndarray:
    arr = np.asarray(out)
    if arr.ndim == 2 and arr.shape[1] == 2:
        arr = arr[:, 1]
    elif arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"model output has shape {arr.shape}; expected one score per row")
    return arr.astype(np.float64, copy=False)


def feature_matrix(batch: pa.Table, features: tuple[str, ...]) -> np.ndarray:
    """Row-major float32 matrix of ``features`` (nulls become NaN), built column by column."""
    out = np.empty((batch.num_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        col = batch.column(name)
        out[:, j] = (
            col.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            if col.null_count == 0
            else np.asarray(col.to_pandas(), dtype=np.float32)
        )
    return out


class SklearnPredictor:
    """An sklearn estimator or pipeline; scores with ``predict_proba[:, 1]`` when it has one (a regressor: with
    ``predict``)."""

    def __init__(self, ref: ModelRef, model):
        self.ref, self.model, self.device = ref, model, "cpu"
        self.load_stats: LoadStats | None = None

    def predict(self, batch: pa.Table) -> np.ndarray:
        X = batch.select(list(self.ref.features)).to_pandas()
        if self.ref.task == MULTICLASS:
            return np.asarray(self.model.predict_proba(X), dtype=np.float64)
        if self.ref.task != REGRESSION and hasattr(self.model, "predict_proba"):
            return _positive_scores(self.model.predict_proba(X))
        return _positive_scores(self.model.predict(X))


class PyfuncPredictor:
    """Any other MLflow model: its pyfunc's numeric output is the score (a multi-class classifier's: one column
    per class)."""

    def __init__(self, ref: ModelRef, model):
        self.ref, self.model, self.device = ref, model, "cpu"
        self.load_stats: LoadStats | None = None

    def predict(self, batch: pa.Table) -> np.ndarray:
        out = self.model.predict(batch.select(list(self.ref.features)).to_pandas())
        if self.ref.task == REGRESSION and self.ref.quantiles:
            return quantile_matrix(out, self.ref.quantiles)
        return np.asarray(out, dtype=np.float64) if self.ref.task == MULTICLASS else _positive_scores(out)


def quantile_matrix(out, levels: tuple[float, ...]) -> np.ndarray:
    """A quantile regression model's output as an n x (1 + levels) matrix: the prediction, then each level's
    quantile (from a DataFrame's named columns, or a matrix already in that order)."""
    columns = getattr(out, "columns", None)
    if columns is not None:
        names = [POINT_COLUMN, *(quantile_column(q) for q in levels)]
        missing = [n for n in names if n not in columns]
        if missing:
            has = ", ".join(map(str, columns))
            raise ValueError(f"model output lacks column(s) {', '.join(missing)} (it has {has})")
        out = out[names]
    return np.asarray(out, dtype=np.float64)


class TorchPredictor:
    """A torch module taking a float32 matrix of the signature's columns and returning one score per row."""

    def __init__(self, ref: ModelRef, module, device: str):
        import torch

        self.ref, self.device = ref, device
        self.load_stats: LoadStats | None = None
        self.module = module.to(device).eval()
        self._torch = torch
        self._warm_up()

    def _warm_up(self, rows: int = 1024, calls: int = 2) -> None:
        """Run the module on zeros before any request: CUDA kernels load and TorchScript optimizes on the first
        calls, which would otherwise show up as the first requests' latency. A module that fails here fails
        again, per row, when it scores."""
        torch = self._torch
        try:
            with torch.inference_mode():
                x = torch.zeros((rows, len(self.ref.features)), dtype=torch.float32, device=self.device)
                for _ in range(calls):
                    self.module(x)
                if self.device != "cpu":
                    torch.cuda.synchronize()
        except Exception as e:  # the model's problem is reported where it scores
            log.debug("warm-up of %s failed: %s", self.ref.uri, e)

    def predict(self, batch: pa.Table) -> np.ndarray:
        return self.predict_matrix(feature_matrix(batch, self.ref.features))

    def predict_matrix(self, X: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(X)
            if self.device != "cpu":
                x = x.pin_memory().to(self.device, non_blocking=True)
            out = self.module(x)
            if self.device != "cpu":
                torch.cuda.synchronize()
            arr = out.float().cpu().numpy()
            return arr.astype(np.float64) if self.ref.task == MULTICLASS else _positive_scores(arr)


REFERENCE_ARTIFACT = "reference/reference.parquet"


def download_reference(run_id: str) -> str:
    """Local path of the drift reference logged with a model (the run artifact ``reference/reference.parquet``)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_ARTIFACT)
    except (MlflowException, OSError) as e:
        raise WorkbenchError(
            f"no training reference for MLflow run {run_id}: log the reference sample as the "
            f"artifact {REFERENCE_ARTIFACT} ({str(e).splitlines()[0]})"
        ) from None
