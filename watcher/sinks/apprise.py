"""Apprise: every destination Apprise speaks (``mailto://``, ``pagerduty://``, ``tgram://``, ``ntfys://``,
``matrixs://``, ``pover://``, ``json://`` … more than 100), through the optional extra ``flora-watcher[apprise]``.

Keys: ``urls`` or ``urls_file`` (one URL per line; blank lines and lines starting with ``#`` are skipped),
``title_template``, ``group_wait``, ``group_by`` (as the chat sinks). The ``apprise`` package is imported only
when an apprise sink is checked, built or sends: ``status``, ``events`` and the rest work without it.

**Each URL is its own delivery target.** ``AppriseOptions.targets`` splits a sink with N URLs into N configured
sinks of one URL each, named ``<sink>:<scheme>`` (``alerts:mailtos``, ``alerts:tgram``; the second URL of the
same scheme ``alerts:tgram#2``), which the daemon routes, queues and delivers exactly as it does any sink
(``spec.delivery_targets``): one delivery row per (event, target), each with its own retries, breaker, dead
letters and ``replay``. A failing Telegram never makes the email go out twice. A name never holds more of the
URL than its scheme; it stays the same when a URL's secret changes or URLs of other schemes are added.

**Apprise says whether a send worked, not why**: a failure is retryable (``Reason.SERVICE_FAILED``) under the
sink's delivery policy; the warnings Apprise logged during that send (scrubbed of the URL's secrets) are the
error's text. Apprise's logger does not reach ours (it logs URLs at debug level): its records are only read
for that text.

**Never on the event loop.** Apprise sends block (``requests``, ``smtplib``): each runs in a daemon thread of
its own target, at most one per target at a time, so the threads are bounded by the number of URLs and a hung
SMTP server holds one thread, never another target's or the loop. A send that has not finished after the
sink's ``timeout`` is a retryable TIMEOUT; its thread is not killed (Python cannot) but ends with Apprise's own
socket timeouts, which this sink sets to ``timeout`` (unless the URL sets ``cto``/``rto``) — the next send to
that target waits for it first. An email that was in fact sent after the timeout is sent again on the retry:
at least once, as everywhere. Apprise's own thread pool is not used (``_asset``): one hung send never queues
another target's.

**Rendering** (pure, below): a title and a body from ``render.View``/``GroupView``, in the format the service
takes (``resolve_format``): markdown with API text neutralised (CommonMark backslash escapes, mentions broken)
for markdown services, plain text for the rest (Apprise escapes text for HTML services itself).
``notify_type`` from the event type: failed → failure, completed → success, stalled → warning, started → info.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import ipaddress
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from watcher.clock import SYSTEM_CLOCK, Clock
from watcher.errors import ConfigError, DeliveryError, Reason
from watcher.model import Event
from watcher.render import (
    CODE_BACKTICK,
    GROUP_LINE_TECHNIQUE_MAX,
    OUTPUT_TEXT_MAX,
    TECHNIQUE_MAX,
    TEXT_LINE_MESSAGE_MAX,
    View,
    and_more,
    break_mentions,
    check_template,
    cut,
    fit,
    group_view,
    label_text,
    lines_within,
    one_line,
    render_template,
    view,
)
from watcher.secret import Secret
from watcher.sinks.http import (
    DEFAULT_GROUP_BY,
    DEFAULT_GROUP_WAIT,
    IntervalPacer,
    parse_group_by,
    scrub,
    secret_needles,
)
from watcher.sinks.spec import BuildContext, SendResult, SinkConfig, SinkType, Table, check_secret_text

APPRISE_KEYS = ("urls", "urls_file", "title_template", "group_wait", "group_by")
INSTALL_HINT = "the apprise sink needs the optional extra: pip install 'flora-watcher[apprise]'"

TITLE_MAX = 250  # a title longer than this is cut (email subjects, push titles)
BODY_MAX = 3_500  # a grouped body stops listing runs here ("… and N more")
GROUP_LINES_MAX = 25  # runs listed in a grouped message at most

# ------------------------------------------------------------------------------------------- URLs

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# Apprise schemes that send in clear text to the host in the URL, and the twin that uses TLS (CONTRACT §3: plain
# http only to loopback hosts). Other services choose TLS themselves.
PLAIN_TWINS = {"json": "jsons", "xml": "xmls", "form": "forms"}


def scheme_of(url: str) -> str | None:
    """The scheme of an Apprise URL (``tgram``), lower-cased; None when it has none. All of the URL that is ever
    shown anywhere."""
    m = _SCHEME.match(url)
    return m.group(1).lower() if m else None


def shown(url: str) -> str:
    """What logs, ``status``, errors and ``check-config`` may show of a URL: ``tgram://…``."""
    scheme = scheme_of(url)
    return f"{scheme}://…" if scheme else "(no scheme)"


def _is_public_host(host: str) -> bool:
    """An IP address, ``localhost`` or a DNS name (``smtp.example.com``): not a token in the host's place."""
    bare = host.strip("[]")
    if bare.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(bare)
        return True
    except ValueError:
        pass
    labels = bare.lower().split(".")
    return len(labels) >= 2 and labels[-1].isalpha() and all(re.fullmatch(r"[a-z0-9-]+", label) for label in labels)


def _token_shaped(value: str) -> bool:
    """A token rather than a word: 8+ characters with a digit, or 16+ characters."""
    return len(value) >= 16 or (len(value) >= 8 and any(c.isdigit() for c in value))


def secret_parts(url: str) -> tuple[str, ...]:
    """The parts of an Apprise URL that may be secret, for log redaction and scrubbing: the URL without its
    scheme, the password (and the user:password pair), a host that is a token (Telegram's ``bot_id:token``),
    and token-shaped path segments and query values. Pure."""
    _, _, rest = url.partition("://")
    parts = [rest]
    cut_at = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut_at], rest[cut_at:]
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        parts.append(userinfo)
        if colon and password:
            parts += [password, unquote(password)]
        if _token_shaped(user):
            parts.append(user)
    port_free = re.sub(r":\d+\Z", "", hostport)
    if hostport and not _is_public_host(port_free):
        parts += [hostport, *(piece for piece in hostport.split(":") if len(piece) >= 8)]
    path, _, query = tail.partition("?")
    parts += [s for seg in path.split("/") for s in (seg, unquote(seg)) if _token_shaped(s)]
    try:
        pairs = parse_qsl(query, keep_blank_values=True)
    except ValueError:
        pairs = []
    parts += [v for _, v in pairs if _token_shaped(v)]
    if query:
        parts.append(query)
    return tuple(dict.fromkeys(p for p in parts if len(p) >= 6))


def target_names(sink: str, schemes: Iterable[str]) -> tuple[str, ...]:
    """The delivery target of each URL: ``<sink>:<scheme>``, the k-th URL of a scheme ``<sink>:<scheme>#k``
    (k ≥ 2). Pure; a sink name has no ``:`` or ``#``, so a target never shares a name with a sink."""
    seen: dict[str, int] = {}
    names = []
    for scheme in schemes:
        seen[scheme] = seen.get(scheme, 0) + 1
        names.append(f"{sink}:{scheme}" + (f"#{seen[scheme]}" if seen[scheme] > 1 else ""))
    return tuple(names)


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class AppriseOptions:
    """An apprise sink's settings. ``urls`` are secrets; ``secrets`` their secret parts (``secret_parts``), held
    so they are registered for log redaction and scrubbed from errors like every ``Secret`` in sink options;
    ``where`` is each URL's config key for messages (``sinks[2].urls[0]``, ``sinks[2].urls_file line 3``).
    ``parent`` is set on a delivery target: the name of the sink it is one URL of."""

    urls: tuple[Secret, ...] = ()
    secrets: tuple[Secret, ...] = ()
    where: tuple[str, ...] = ()
    title_template: str | None = None  # the title of a single event's message; str.format-style event fields
    group_wait: float = DEFAULT_GROUP_WAIT
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    parent: str | None = None

    def targets(self, cfg: SinkConfig[AppriseOptions]) -> tuple[SinkConfig[AppriseOptions], ...]:
        """One configured sink per URL (``spec.delivery_targets``); a target is its own only target."""
        if self.parent is not None or not self.urls:
            return (cfg,)
        schemes = [scheme_of(url.reveal()) or "unknown" for url in self.urls]
        wheres = self.where or tuple(cfg.key(f"urls[{i}]") for i in range(len(self.urls)))
        return tuple(
            dataclasses.replace(cfg, name=name, options=dataclasses.replace(
                self, urls=(url,), secrets=tuple(Secret(p) for p in secret_parts(url.reveal())), where=(where,),
                parent=cfg.name))
            for name, url, where in zip(target_names(cfg.name, schemes), self.urls, wheres, strict=True)
        )


def check_url_syntax(url: str, key: str) -> None:
    """What can be said of an Apprise URL without Apprise: a scheme, no whitespace, TLS or loopback for the
    generic web hooks. Messages show at most the scheme."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ConfigError(key, "the Apprise URL contains whitespace or control characters")
    scheme = scheme_of(url)
    if scheme is None:
        raise ConfigError(key, "not an Apprise URL (scheme://…, e.g. mailtos://… or tgram://…)")
    if scheme in PLAIN_TWINS:
        host = re.sub(r":\d+\Z", "", url.partition("://")[2].split("/", 1)[0].split("?", 1)[0].rpartition("@")[2])
        if host.strip("[]").lower() != "localhost" and not _is_loopback_ip(host.strip("[]")):
            raise ConfigError(key, f"{scheme}:// sends in clear text; use {PLAIN_TWINS[scheme]}:// "
                                   f"({scheme}:// only for loopback hosts)")


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_urls(t: Table) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(urls, their config keys) from ``urls`` or ``urls_file``."""
    if t.has("urls") and t.has("urls_file"):
        raise ConfigError(t.key("urls"), "set either urls or urls_file, not both")
    if t.has("urls"):
        items = t.strings("urls")
        assert items is not None
        for value, raw, key in items:
            check_secret_text(value, raw, key)
            check_url_syntax(value, key)
        return tuple(v for v, _, _ in items), tuple(k for _, _, k in items)
    if t.has("urls_file"):
        key = t.key("urls_file")
        path = t.path("urls_file")
        assert path is not None
        try:
            content = t.ctx.read_file(str(path))
        except OSError as exc:
            raise ConfigError(key, f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
        urls, keys = [], []
        for n, line in enumerate(content.splitlines(), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            check_url_syntax(text, f"{key} line {n}")
            urls.append(text)
            keys.append(f"{key} line {n}")
        if not urls:
            raise ConfigError(key, f"{path} holds no Apprise URL (one per line; # starts a comment)")
        return tuple(urls), tuple(keys)
    raise ConfigError(t.key("urls"), "required (or urls_file): one or more Apprise URLs")


def parse(t: Table) -> AppriseOptions:
    """Pure: reads the keys; whether Apprise knows each URL is ``check``'s question (it needs the package)."""
    urls, where = _read_urls(t)
    title_template = t.string("title_template")
    if title_template is not None:
        try:
            check_template(title_template)
        except ValueError as exc:
            raise ConfigError(t.key("title_template"), str(exc)) from None
    return AppriseOptions(
        urls=tuple(Secret(u) for u in urls),
        secrets=tuple(Secret(p) for u in urls for p in secret_parts(u)),
        where=where,
        title_template=title_template,
        group_wait=t.number("group_wait", DEFAULT_GROUP_WAIT, inclusive=True),
        group_by=parse_group_by(t),
    )


def _import_apprise() -> Any:
    """The ``apprise`` package (None when the extra is not installed), its logging kept out of ours."""
    quiet_apprise_logger()
    try:
        import apprise
    except ImportError:
        return None
    return apprise


def url_problem(apprise: Any, url: str) -> str | None:
    """Why Apprise will not take ``url`` (None: it does). Shows only the scheme."""
    scheme = scheme_of(url) or ""
    try:
        from apprise.manager_plugins import NotificationManager

        known: bool | None = scheme in NotificationManager()
    except Exception:  # an Apprise without this module: say less
        known = None
    if known is False:
        return f"unknown Apprise scheme {scheme + '://'!r}; see Apprise's list of services"
    if _instantiate(apprise, url) is None:
        return f"Apprise does not accept this {scheme}:// URL (a token, user or target missing or malformed)"
    return None


def check(cfg: SinkConfig[AppriseOptions]) -> Iterable[ConfigError]:
    """Start-time checks (``check-config``, ``run``, reload): Apprise is installed and takes every URL."""
    apprise = _import_apprise()
    if apprise is None:
        yield ConfigError(cfg.key("type"), INSTALL_HINT)
        return
    wheres = cfg.options.where or tuple(cfg.key(f"urls[{i}]") for i in range(len(cfg.options.urls)))
    for url, where in zip(cfg.options.urls, wheres, strict=False):
        problem = url_problem(apprise, url.reveal())
        if problem is not None:
            yield ConfigError(where, problem)


def describe(cfg: SinkConfig[AppriseOptions]) -> Iterable[str]:
    targets = [t.name for t in cfg.options.targets(cfg)]
    yield f"{len(targets)} URL{'s' if len(targets) != 1 else ''}, each its own delivery target: {', '.join(targets)}"


# ------------------------------------------------------------------------------------------- rendering

NOTIFY_TYPES = {"run.failed": "failure", "run.completed": "success", "run.stalled": "warning",
                "run.started": "info"}
_SEVERITY = ("info", "success", "warning", "failure")

TEXT = "text"
MARKDOWN = "markdown"

_MD_SPECIAL = re.compile(r"([\\`*_~\[\]<>|#!(){}])")


def notify_type(event_type: str) -> str:
    """Apprise's ``notify_type`` for an event type."""
    return NOTIFY_TYPES.get(event_type, "info")


def group_notify_type(event_types: Iterable[str]) -> str:
    """The most severe of a group's types (a group that mixes failures and completions is a failure)."""
    return max((notify_type(t) for t in event_types), key=_SEVERITY.index, default="info")


def md_escape(raw: str) -> str:
    """API text → inert markdown: on one line, every markdown character backslash-escaped (CommonMark), mentions
    broken. Nothing of it can format, link, quote or ping."""
    return break_mentions(_MD_SPECIAL.sub(r"\\\1", one_line(raw)))


def md_code(raw: str) -> str:
    """API text for the inside of a code span: one line, backticks replaced by a look-alike."""
    return break_mentions(one_line(raw).replace("`", CODE_BACKTICK))


def plain(raw: str) -> str:
    """API text for a plain-text body: one line, control and bidi characters removed."""
    return one_line(raw)


@dataclass(frozen=True, slots=True)
class Message:
    """One Apprise notification: what ``notify(body, title, notify_type, body_format)`` gets."""

    title: str
    body: str
    notify_type: str
    body_format: str  # TEXT | MARKDOWN


def _title(v: View, escape: Any) -> str:
    technique = fit(v.technique or "(technique unknown)", TECHNIQUE_MAX, escape)
    title = f"{v.marker} {v.title}: {technique}"
    if v.failed and v.error_code:
        title += f" ({escape(v.error_code)})"
    return title


def title_of(event: Event, *, markdown: bool, template: str | None = None) -> str:
    """The title of one event's message (an email's subject): marker, what happened, the technique and, on a
    failure, the error code; or ``template`` with the event's fields. One line."""
    escape = md_escape if markdown else plain
    if template is not None:
        return cut(one_line(render_template(template, event, escape)), TITLE_MAX)
    return cut(_title(view(event), escape), TITLE_MAX)


def body_of(event: Event, *, markdown: bool) -> str:
    """The body of one event's message: technique, run, error, duration and cost, project, outputs, event id."""
    v = view(event)
    esc = md_escape if markdown else plain

    def code(raw: str) -> str:
        return f"`{md_code(raw)}`" if markdown else plain(raw)

    def label(text: str) -> str:
        return f"**{text}:**" if markdown else f"{text}:"

    lines = [f"{label('Technique')} {fit(v.technique or '(technique unknown)', TECHNIQUE_MAX, esc)}",
             f"{label('Run')} {code(v.run_id)}"]
    if v.failed:
        lines.append(f"{label('Error code')} {code(v.error_code) if v.error_code else 'none given'}")
        if v.error_message:
            lines.append(f"{label('Error message')} {fit(v.error_message, TEXT_LINE_MESSAGE_MAX, esc)}")
    lines.append(f"{label('Duration')} {v.duration or '—'} · {label('Cost')} {v.cost or '—'}")
    if v.project_id:
        lines.append(f"{label('Project')} {code(v.project_id)}")
    outputs = []
    for link in v.links[:10]:
        name = label_text(link.label)
        outputs.append(f"- [{md_escape(name)}]({link.url})" if markdown else f"- {plain(name)}: {link.url}")
    for text in v.texts[:3]:
        outputs.append(f"- {esc(text.label)}: “{fit(text.text, OUTPUT_TEXT_MAX, esc)}”")
    extra = len(v.links) + len(v.texts) - len(outputs)
    if extra > 0:
        outputs.append(f"- +{extra} more")
    if outputs:
        lines += ["", label("Outputs"), *outputs]
    lines.append("")
    if v.late:
        lines.append("Late: it happened while the watcher was stopped.")
    lines.append(f"flora-watcher · {code(v.event_id)}")
    return ("  \n" if markdown else "\n").join(lines)  # two spaces: a hard line break in markdown


def message(event: Event, *, markdown: bool, title_template: str | None = None) -> Message:
    """One event's notification."""
    return Message(title=title_of(event, markdown=markdown, template=title_template),
                   body=body_of(event, markdown=markdown), notify_type=notify_type(event.type),
                   body_format=MARKDOWN if markdown else TEXT)


def _group_line(v: View, markdown: bool) -> str:
    esc = md_escape if markdown else plain
    parts = [fit(v.technique or "(technique unknown)", GROUP_LINE_TECHNIQUE_MAX, esc),
             f"`{md_code(v.run_id)}`" if markdown else plain(v.run_id)]
    if v.duration:
        parts.append(v.duration)
    if v.links:
        parts.append(f"[output]({v.links[0].url})" if markdown else v.links[0].url)
    return "- " + " · ".join(parts)


def group_message(events: list[Event], *, markdown: bool) -> Message:
    """A burst as one notification: the headline as title ("❌ 60 runs failed: INSUFFICIENT_CREDITS"), one line
    per run while within ``GROUP_LINES_MAX`` and ``BODY_MAX``, then "… and N more" with the command that lists
    them all. A group of one is ``message``'s notification (without ``title_template``: the sink decides)."""
    g = group_view(events)
    esc = md_escape if markdown else plain
    title = cut(f"{g.marker} {g.count} runs {g.verb}" + (f": {esc(g.error_code)}" if g.error_code else ""),
                TITLE_MAX)
    lines = [_group_line(v, markdown) for v in g.views]
    more_line = and_more(len(lines)) + ": " + (f"`{md_code(g.command)}`" if markdown else g.command)
    n = min(GROUP_LINES_MAX, lines_within(lines, BODY_MAX, len(more_line) + 1))
    body = "\n".join(lines[:n])
    if n < len(lines):
        body += "\n\n" + and_more(len(lines) - n) + ": " + (f"`{md_code(g.command)}`" if markdown else g.command)
    return Message(title=title, body=body, notify_type=group_notify_type(v.event_type for v in g.views),
                   body_format=MARKDOWN if markdown else TEXT)


# ------------------------------------------------------------------------------- Apprise's log records

_capture: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("apprise_capture", default=None)
_logger_lock = threading.Lock()
_logger_ready = False


class _CaptureHandler(logging.Handler):
    """Collects Apprise's warnings and errors for the send in progress (the one whose context holds a list;
    Apprise 2 runs a send in its own executor, with the caller's context copied)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        lines = _capture.get()
        if lines is not None and len(lines) < 10:
            try:
                lines.append(record.getMessage())
            except Exception:
                lines.append(str(record.msg))


def quiet_apprise_logger() -> None:
    """Apprise's records, and those of ``urllib3`` under it, never reach our log stream (they log URLs with their
    tokens at debug level, from the import on): both loggers stop propagating and keep warnings and errors only,
    for ``_CaptureHandler`` (the text of a failed send's error). Called before ``apprise`` is imported."""
    global _logger_ready
    with _logger_lock:
        if _logger_ready:
            return
        handler = _CaptureHandler()
        for name in ("apprise", "urllib3"):
            logger = logging.getLogger(name)
            logger.propagate = False
            logger.setLevel(logging.WARNING)
            logger.addHandler(handler)
        _logger_ready = True


# ------------------------------------------------------------------------------------------------ sink


def _instantiate(apprise: Any, url: str, asset: Any = None) -> Any:
    try:
        return apprise.Apprise.instantiate(url, asset=asset, suppress_exceptions=True)
    except Exception:
        return None


def _asset(apprise: Any) -> Any:
    """Our name on what Apprise sends, and the send in the calling thread: no ``async_mode`` (Apprise's thread
    pool) and no ``service_timeout`` (Apprise 2 would otherwise run every send in its shared executor, a pool of
    min(32, CPUs + 4) threads for the whole process, where a few hung SMTP servers would hold up every other
    Apprise target). The sink's own thread per URL and its ``timeout`` take their place."""
    base = {"app_id": "flora-watcher", "app_desc": "flora-watcher", "async_mode": False}
    try:
        return apprise.AppriseAsset(**base, service_timeout=0)
    except Exception:  # an Apprise without service_timeout sends in the calling thread anyway
        return apprise.AppriseAsset(**base)


def _takes_markdown(apprise: Any, service: Any) -> bool:
    """Whether the service takes markdown as it is (Apprise 2: ``resolve_format``; 1.x: ``notify_format``)."""
    resolve = getattr(service, "resolve_format", None)
    fmt = resolve(apprise.NotifyFormat.MARKDOWN) if callable(resolve) else getattr(service, "notify_format", None)
    return fmt == apprise.NotifyFormat.MARKDOWN


def _settle(future: asyncio.Future[bool], ok: bool | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(bool(ok))


class _Target:
    """One URL: its Apprise object, the format it takes, and the thread of its send in progress."""

    def __init__(self, apprise: Any, url: Secret, timeout: float) -> None:
        self.scheme = shown(url.reveal())
        self.apprise = apprise
        self.service: Any = None
        self.notifier: Any = None
        self.markdown = False
        self.running: asyncio.Future[bool] | None = None  # the send in this URL's thread, if any
        self.interval = 0.0
        self.pacer: IntervalPacer | None = None
        if apprise is None:
            return
        asset = _asset(apprise)
        service = _instantiate(apprise, url.reveal(), asset)
        if service is None:
            return
        query = dict(parse_qsl(url.reveal().partition("?")[2], keep_blank_values=True))
        if "cto" not in query:
            service.socket_connect_timeout = timeout  # Apprise's own timeouts end a hung send's thread
        if "rto" not in query:
            service.socket_read_timeout = timeout
        # Apprise paces each service (``request_rate_per_sec``: seconds between two sends, 5.5 unless the service
        # says otherwise) by sleeping in the sending thread; that sleep would count against the sink's timeout (and
        # a send that timed out while asleep would still go out, then again on the retry). The sink paces on the
        # loop instead, with the same interval, before the thread starts.
        self.interval = max(0.0, float(getattr(service, "request_rate_per_sec", 0) or 0))
        service.request_rate_per_sec = 0
        self.service = service
        self.markdown = _takes_markdown(apprise, service)
        self.notifier = apprise.Apprise(asset=asset)
        self.notifier.add(service)

    def blocking_send(self, msg: Message, lines: list[str]) -> bool:
        """In the target's thread: one Apprise notify, its warnings collected in ``lines``."""
        _capture.set(lines)
        apprise = self.apprise
        fmt = apprise.NotifyFormat.MARKDOWN if msg.body_format == MARKDOWN else apprise.NotifyFormat.TEXT
        kind = apprise.NotifyType(msg.notify_type)
        return bool(self.notifier.notify(body=msg.body, title=msg.title, notify_type=kind, body_format=fmt))


class AppriseSink:
    """Sends each event (or group) to every URL of its options. The daemon builds one per delivery target (one
    URL); ``test-sink`` and code may build one with several, which fails when any URL fails."""

    def __init__(self, cfg: SinkConfig[AppriseOptions], *, clock: Clock = SYSTEM_CLOCK) -> None:
        if _import_apprise() is None:
            raise ConfigError(cfg.key("type"), INSTALL_HINT)
        if not cfg.options.urls:
            raise ConfigError(cfg.key("urls"), "required (or urls_file): one or more Apprise URLs")
        if cfg.options.title_template is not None:
            try:
                check_template(cfg.options.title_template)
            except ValueError as exc:
                raise ConfigError(cfg.key("title_template"), str(exc)) from None
        self.name = cfg.name
        self.config = cfg
        self.options = cfg.options
        self.clock = clock
        self._needles = secret_needles(cfg, min_length=6)
        self._targets: list[_Target] | None = None

    def __repr__(self) -> str:
        return f"<AppriseSink {self.name!r} {', '.join(shown(u.reveal()) for u in self.options.urls)}>"

    @classmethod
    def build(cls, cfg: SinkConfig[AppriseOptions], ctx: BuildContext) -> AppriseSink:
        return cls(cfg, clock=ctx.clock)

    async def start(self) -> None:
        if self._targets is None:
            apprise = _import_apprise()
            self._targets = [_Target(apprise, url, self.config.timeout) for url in self.options.urls]
            for target in self._targets:
                if target.interval > 0:
                    target.pacer = IntervalPacer(target.interval, self.clock)

    async def close(self) -> None:
        """Nothing to release: a send still running in its thread ends with Apprise's own timeouts."""
        return None

    async def send(self, event: Event, *, body: bytes | None = None) -> SendResult:
        """``body`` (the event's JSON) is not used: Apprise sends a rendered message."""
        return await self._send_all(lambda markdown: message(
            event, markdown=markdown, title_template=self.options.title_template))

    async def send_group(self, events: list[Event]) -> SendResult:
        if len(events) == 1:
            return await self.send(events[0])
        return await self._send_all(lambda markdown: group_message(events, markdown=markdown))

    async def _send_all(self, render: Any) -> SendResult:
        await self.start()
        assert self._targets is not None
        results = await asyncio.gather(*(self._send_one(t, render(t.markdown)) for t in self._targets),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, DeliveryError):
                raise error
        if errors:
            if len(self._targets) == 1:
                raise errors[0]
            first = errors[0]
            assert isinstance(first, DeliveryError)
            raise DeliveryError("; ".join(e.message for e in errors if isinstance(e, DeliveryError))[:1000],
                                retryable=all(getattr(e, "retryable", False) for e in errors), reason=first.reason)
        return SendResult(status=None, detail="sent to " + ", ".join(t.scheme for t in self._targets))

    def _clean(self, text: str) -> str:
        from watcher.logs import redact

        return redact(scrub(text.encode("utf-8", "replace"), self._needles).decode("utf-8", "replace"))

    async def _send_one(self, target: _Target, msg: Message) -> None:
        if target.notifier is None:
            raise DeliveryError(f"Apprise does not accept this {target.scheme} URL (check-config says why)",
                                retryable=False, reason=Reason.BAD_CONFIG)
        if target.pacer is not None:
            await target.pacer.acquire()  # Apprise's interval for this service, on the injected clock
        timeout = self.config.timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        if target.running is not None and not target.running.done():
            # The previous send to this URL timed out here but its thread still runs: one thread per URL.
            try:
                await asyncio.wait_for(asyncio.shield(target.running), timeout)
            except TimeoutError:
                raise DeliveryError(f"{target.scheme}: the previous send has not finished after {timeout:g}s "
                                    "more", retryable=True, reason=Reason.TIMEOUT) from None
            except Exception:
                pass
        future: asyncio.Future[bool] = loop.create_future()
        lines: list[str] = []

        def work() -> None:
            ok: bool | None = None
            error: BaseException | None = None
            try:
                ok = target.blocking_send(msg, lines)
            except Exception as exc:  # a bug in a plugin: a failure of this send, never of the thread's caller
                error = DeliveryError(f"Apprise raised {type(exc).__name__}", retryable=True,
                                      reason=Reason.SERVICE_FAILED)
            try:
                loop.call_soon_threadsafe(_settle, future, ok, error)
            except RuntimeError:  # the loop is closed (shutdown): nobody waits for this answer any more
                pass

        target.running = future
        threading.Thread(target=work, name=f"apprise {self.name}", daemon=True).start()
        remaining = max(0.0, timeout - (loop.time() - started))
        try:
            ok = await asyncio.wait_for(asyncio.shield(future), remaining)
        except TimeoutError:
            raise DeliveryError(f"{target.scheme}: no answer within {timeout:g}s (the service may still have it)",
                                retryable=True, reason=Reason.TIMEOUT) from None
        if not ok:
            why = self._clean(" ".join(dict.fromkeys(line.strip() for line in lines if line.strip())))[:400]
            raise DeliveryError(f"{target.scheme}: Apprise reports a failure" + (f": {why}" if why else ""),
                                retryable=True, reason=Reason.SERVICE_FAILED)


SINK = SinkType(
    name="apprise", keys=APPRISE_KEYS, options=AppriseOptions, parse=parse, build=AppriseSink.build,
    check=check, describe=describe,
)
