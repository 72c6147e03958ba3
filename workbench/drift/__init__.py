"""Drift: stat-test registry, reference sketches, concept drift, data quality, the HTML report."""
