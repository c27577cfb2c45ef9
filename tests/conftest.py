"""Shared fixtures. Factories close what they create."""

from __future__ import annotations
