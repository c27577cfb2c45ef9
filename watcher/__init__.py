"""flora-watcher: watches FLORA technique runs and reports their outcomes."""

__version__ = "0.1.0"
USER_AGENT = f"flora-watcher/{__version__}"  # sent to the FLORA API and to every HTTP sink
