"""Paths under the workbench home stay under it: no ``..`` escape, no symlink pointing out.

Keys, artifacts and reports live in folders of the home; a name that comes from configuration (a policy's
experiment name) or a file found in one of them (a trusted key) is resolved with :func:`within` before
it is read or written.
"""

from __future__ import annotations

import os
from pathlib import Path

from workbench import WorkbenchError


def within(root: Path, path: str | os.PathLike, what: str = "path") -> Path:
    """``path`` (relative to ``root``, or absolute) resolved, following every symlink on the way; refused
    unless the result is ``root`` itself or inside it."""
    text = os.fspath(path)
    if "\x00" in text:
        raise WorkbenchError(f"invalid {what} {text!r}")
    base = Path(root).resolve()
    target = (base / text).resolve()
    if target != base and base not in target.parents:
        raise WorkbenchError(f"{what} {text!r} leads outside {base} (to {target}); refused")
    return target
