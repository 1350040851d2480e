"""sound-monitor: always-on zero-shot sound-event monitoring."""

from importlib.metadata import PackageNotFoundError, version

try:  # one version string: the package metadata (pyproject.toml)
    __version__ = version("sound-monitor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
