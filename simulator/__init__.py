"""trainsim: gradient-descent runs replayed as mock ML training jobs, exported to Prometheus."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trainsim")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
