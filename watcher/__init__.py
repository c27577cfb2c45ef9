"""flora-watcher: watches FLORA technique runs and reports their outcomes."""

__version__ = "0.1.0"
