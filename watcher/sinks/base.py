"""What every sink is. A sink only transports: it sends one event and says how that went.

``send`` returns a ``SendResult`` when the receiver confirmed the event (2xx, exit 0, fsync done), and raises
``errors.DeliveryError(retryable=..., reason=..., retry_after=..., disable=...)`` otherwise. It never
decides *when* to retry: the dispatcher and ``policy.py`` do. A sink never logs or raises a secret (its URL,
signing secret or custom header values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from watcher.config import SinkConfig
from watcher.model import Event


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the receiver answered, for ``test-sink`` and debug logs. ``detail`` is never a secret."""

    status: int | None = None  # HTTP status, exec exit code, None for file/stdout
    detail: str = ""  # a short, secret-free summary (e.g. first 200 chars of the response body)


class Sink(Protocol):
    name: str
    config: SinkConfig

    async def start(self) -> None:
        """Open what the sink needs (HTTP session, file). Called once before the first ``send``."""

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        """Deliver one event. ``body`` is the event's stored JSON bytes (``Event.body()``), passed so every retry
        sends exactly the same bytes; sinks that render a message ignore it. Raises ``DeliveryError``."""

    async def close(self) -> None:
        """Release resources. Safe to call twice, and after a failed ``start``."""
