"""canary-workbench: shadow replay, paired evaluation and signed canary decisions for ML models."""

__version__ = "0.1.0"


class WorkbenchError(Exception):
    """An error the user can act on; the CLI prints its message as one line, without a traceback."""
