"""canary-workbench: shadow replay, paired evaluation and signed canary decisions for ML models."""

from workbench.errors import WorkbenchError

__version__ = "0.1.0"
__all__ = ["WorkbenchError", "__version__"]
