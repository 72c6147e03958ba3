"""Slices of an evaluation's rows: each row's segment value or time window as a small integer id."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

OTHER = "other"
NULL_VALUE = "(null)"


def slice_ids(values: pa.Array, top_k: int | None) -> tuple[np.ndarray, list[str]]:
    """Slice index per row and slice names: every value, or the ``top_k`` most frequent plus "other"."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    enc = pc.fill_null(values.cast(pa.string()), NULL_VALUE).dictionary_encode()
    names = enc.dictionary.to_pylist()
    codes = enc.indices.to_numpy(zero_copy_only=False)
    freq = np.bincount(codes, minlength=len(names))
    if top_k is None:
        rank = sorted(range(len(names)), key=lambda i: names[i])
        keep, other = rank, []
    else:
        rank = sorted(range(len(names)), key=lambda i: (-freq[i], names[i]))
        keep, other = rank[:top_k], rank[top_k:]
    slot = np.empty(len(names), dtype=np.int16 if len(keep) < 2**15 else np.int64)  # int16: grouped by a radix sort
    slot[keep] = np.arange(len(keep))
    slot[other] = len(keep)
    labels = [names[i] for i in keep] + ([OTHER] if other else [])
    return slot[codes], labels
