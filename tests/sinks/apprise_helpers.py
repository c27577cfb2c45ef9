"""What the apprise sink's tests share: the ``apprise`` package or a clear skip (a failure under CI), and a real
SMTP server on 127.0.0.1 (aiosmtpd's protocol on the test's own event loop; Apprise's blocking send reaches it
from its thread)."""

from __future__ import annotations

import asyncio
import email
import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from tests.needs import unavailable


def need_apprise() -> None:
    """Skip (fail under CI) when the optional extra is not installed."""
    try:
        import apprise  # noqa: F401
    except ImportError:
        unavailable("the apprise package is not installed: pip install -e '.[test,apprise]'")


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        part = self.message.get_body(("plain", "html"))
        assert part is not None
        return part.get_content()


@dataclass
class SmtpServer:
    """aiosmtpd on 127.0.0.1:<free port>; ``mails`` holds what arrived. AUTH is accepted over plain text (any
    user and password: the tests put canaries there). ``hang`` answers nothing at all: a server that accepted the
    connection and then stopped (``release`` closes those connections)."""

    hang: bool = False
    mails: list[Mail] = field(default_factory=list)
    port: int = 0
    connections: int = 0
    _server: Any = None
    _hung: list[asyncio.StreamWriter] = field(default_factory=list)

    def url(self, query: str = "", userinfo: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        base = f"mailto://{at}127.0.0.1:{self.port}?to=ops@example.com&from=flora@example.com&mode=insecure"
        return base + (f"&{query}" if query else "")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's handler hook
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.hang:
            async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                self.connections += 1
                self._hung.append(writer)

            self._server = await asyncio.start_server(stall, "127.0.0.1", 0)
        else:
            from aiosmtpd.smtp import SMTP, AuthResult

            def accept(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
                return AuthResult(success=True)

            def protocol() -> SMTP:
                self.connections += 1
                return SMTP(self, hostname="localhost", authenticator=accept, auth_require_tls=False)

            self._server = await loop.create_server(protocol, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def release(self) -> None:
        for writer in self._hung:
            writer.close()
        self._hung.clear()

    async def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
