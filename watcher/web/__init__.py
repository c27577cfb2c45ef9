"""The status page: ``status.py`` (pure) shapes the data; ``index.html``, ``status.css`` and ``status.js`` are
served as they are by ``watcher.server``."""
