"""Shadow replay: model loading, devices, the five-stage pipeline, error isolation, executors."""
