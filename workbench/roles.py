"""The two models of every comparison, in the order results list them."""

from typing import Final

BASELINE: Final = "baseline"
CANDIDATE: Final = "candidate"
ROLES: Final = (BASELINE, CANDIDATE)
