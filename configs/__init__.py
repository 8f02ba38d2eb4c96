"""Experiment configs (data only): one file per experiment, each with ``get_config(arg)``."""
