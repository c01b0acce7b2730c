"""gradbench: objectives, measurement, Hydra entry point, CLI and reports."""
