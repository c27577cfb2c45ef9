"""Sink registry: type name → implementation. A new sink is one module plus one line here."""
