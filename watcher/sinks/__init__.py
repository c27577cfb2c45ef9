"""Sinks: where events go. One module per sink type (``webhook.py``, ``slack.py``, ``discord.py``, ``teams.py``,
``google_chat.py``, ``file.py``, ``stdout.py``, ``exec.py``), the contract they keep (``spec.py``), what the HTTP
types share (``http.py``), and the list of built-in types (``registry.py``).

This package module imports nothing, so importing ``watcher.sinks.spec`` (as ``config.py`` does) loads no sink.
"""
