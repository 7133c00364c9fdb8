"""napari-sr-uncertainty: x2 super-resolution with Monte Carlo dropout uncertainty.

Importing the package is cheap: JAX is imported only when a computation starts.
"""

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("napari-sr-uncertainty")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
