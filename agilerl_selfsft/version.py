"""The package version (one place: setup.cfg reads it, ``agilerl-selfsft --version`` prints it)."""

__version__ = "0.1.0"
