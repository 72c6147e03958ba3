"""Live canary: router, upstream client, SLO, traffic log, mesh renderers, HTTP service."""
