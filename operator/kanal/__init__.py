"""kanal: a Kubernetes-native LLM gateway with portable serverless functions."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kanal")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
