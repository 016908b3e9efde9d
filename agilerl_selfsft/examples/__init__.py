"""Worked examples that ship with the package (importable, so configs and tests can name them)."""
