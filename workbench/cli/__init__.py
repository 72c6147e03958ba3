"""The ``workbench`` command: parses arguments, calls the library, prints.

With ``--json`` every command prints exactly one JSON object on stdout; logs and progress go to stderr.
Errors print one line (``error: ...``) and exit non-zero, without a traceback (``WORKBENCH_DEBUG=1``
shows it).
"""

from __future__ import annotations

from workbench.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
