"""Evaluation: pure metric functions, intervals, paired tests, latency."""
