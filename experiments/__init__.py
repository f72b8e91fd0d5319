"""Experiment configs, scripts and benchmarks (run as ``python -m experiments.<...>``)."""
