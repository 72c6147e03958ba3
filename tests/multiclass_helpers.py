"""Shared by the multi-class tests: a seeded traffic set whose class labels are text, and in-process
multi-class predictors whose probabilities are a softmax of traffic columns (so every replay predicts the same)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from conftest import task_model_ref, task_traffic, write_task_data

CLASSES = ("high", "low", "mid")  # sorted, as scikit-learn orders a classifier's classes_


class SoftmaxModel:
    """A multi-class predictor: the softmax of ``sharpness`` x (one logit per class from x) plus ``noise`` x the
    traffic column ``column``; ``classes`` are its classes in the order of its probabilities."""

    def __init__(
        self,
        name: str,
        version: str,
        sharpness: float,
        noise: float = 0.0,
        column: str = "zb",
        classes: tuple[str, ...] = CLASSES,
        width: int | None = None,
    ):
        self.ref = task_model_ref(name, version, column, "multiclass", classes=classes)
        self.device, self.sharpness, self.noise, self.column = "cpu", sharpness, noise, column
        self.width = width or len(classes)

    def predict(self, batch: pa.Table) -> np.ndarray:
        x = batch.column("x").to_numpy() + self.noise * batch.column(self.column).to_numpy()
        centres = {"low": -1.0, "mid": 0.0, "high": 1.0}
        logits = np.stack([-self.sharpness * (x - centres[c]) ** 2 for c in self.ref.classes], axis=1)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return p[:, : self.width] if self.width <= p.shape[1] else np.pad(p, ((0, 0), (0, self.width - p.shape[1])))


def true_classes(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The class of each x: ``low`` below -0.5, ``high`` above 0.5, ``mid`` between, with 15 % of the labels
    drawn at random (label noise)."""
    cls = np.array(["low", "mid", "high"])[np.digitize(x, [-0.5, 0.5])]
    flip = rng.random(len(x)) < 0.15
    cls[flip] = rng.choice(["low", "mid", "high"], int(flip.sum()))
    return cls


def write_traffic(folder: Path, rows: int, seed: int = 0, unknown: int = 0) -> tuple[Path, Path]:
    """Traffic (x, two noise columns, a region segment) and its class labels; the last ``unknown`` labels name a
    class no model knows (``"other"``). Returns (traffic file, labels file)."""
    rng = np.random.default_rng(seed)
    x = 1.2 * rng.standard_normal(rows)
    traffic = task_traffic(f"m{seed}", x, rng)
    y = true_classes(x, rng)
    if unknown:
        y[-unknown:] = "other"
    return write_task_data(folder, seed, traffic, {"label": y})
