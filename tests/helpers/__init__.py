"""Test-only helpers (tiny gravity runs, callbacks, comparisons, hostile files); public test models live in
``testbed.testing``."""
