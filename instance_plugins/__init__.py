"""Dagster instance plugins named in ``dagster.yaml``: the run launcher and its warm workers."""
