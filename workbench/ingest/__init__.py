"""Ingest: traffic and label contracts, quarantine with reasons, fingerprints."""
