"""sound-monitor: always-on zero-shot sound-event monitoring."""

__version__ = "0.1.0"
