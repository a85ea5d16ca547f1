"""The package's version, importable by every layer without the package's API."""

__version__ = "0.1.0"
