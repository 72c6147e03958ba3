"""``python -m workbench.cli``."""

from workbench.cli.parser import main

if __name__ == "__main__":
    raise SystemExit(main())
