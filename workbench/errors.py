"""The one error type users see: its message is printed as one line, without a traceback."""


class WorkbenchError(Exception):
    """An error the user can act on; the CLI prints its message as one line, without a traceback."""
