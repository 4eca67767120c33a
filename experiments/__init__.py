"""Experiment entry points (absl apps) and their ml_collections configs."""
