"""The installed package's version, read from its metadata (``0.0.0`` in an uninstalled tree)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("amortized-ppl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
