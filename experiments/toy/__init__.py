"""Toy experiments: configs for ``python -m testbed fit`` and the scripts that turn runs into tables."""
