"""Experiment configs: one file per study, each with get_config(arg=None) -> ConfigDict."""
