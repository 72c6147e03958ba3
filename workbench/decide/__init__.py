"""Decisions: policy, scorecard, signing and the chain, the canary ramp, registry records."""
