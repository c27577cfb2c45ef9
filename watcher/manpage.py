"""The man page, generated from the argparse parser: every command, every option, with its help text. Pure.

``flora-watcher man`` prints it; ``flora-watcher install-unit`` installs it as flora-watcher(1), which the unit's
``Documentation=`` names.
"""

from __future__ import annotations

import argparse
import re

EXIT_STATUS = (
    ("0", "success; for run, a clean stop on SIGTERM or SIGINT"),
    ("1", "a fatal error (run: the API refused the key, the state store is unusable); status, events, "
          "deliveries, replay, migrate-state: the state store cannot be opened or read (one line on stderr with "
          "the database's own reason, such as connection refused or password authentication failed, never the "
          "password); replay: an EVENT_ID matches no event; test-sink: not delivered; watch: the run failed"),
    ("2", "a configuration or usage error, an unknown sink name, or (run) another flora-watcher holds the "
          "state; systemd does not restart the unit for it"),
    ("3, 4, 124", "watch: run not found, authentication error, --timeout reached"),
)
ENVIRONMENT = (
    ("FLORA_API_KEY", "the FLORA API key, when neither the config nor a credential gives one"),
    ("FLORA_WATCHER_CONFIG", "the config file, when -c is absent"),
    ("FLORA_BASE_URL", "the API base URL, when the config does not set api.base_url"),
    ("CREDENTIALS_DIRECTORY", "set by systemd's LoadCredential=; the key is read from flora_api_key in it"),
    ("STATE_DIRECTORY", "set by systemd's StateDirectory=; the default state_dir"),
    ("NO_COLOR", "plain console logs on a terminal"),
)
FILES = (
    ("/etc/flora-watcher/flora-watcher.toml", "the config (after $FLORA_WATCHER_CONFIG and ./flora-watcher.toml)"),
    ("/etc/flora-watcher/flora_api_key", "the API key, root-only, loaded by the unit with LoadCredential="),
    ("/var/lib/flora-watcher/state.sqlite3", "the state under systemd; flora-watcher.lock beside it is held by the "
                                             "running daemon"),
)


def _escape(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"(?m)^([.'])", r"\\&\1", text)


def _para(text: str) -> str:
    return _escape(" ".join(text.split()))


GLOBAL_DESTS = frozenset({"help", "version", "log_format", "log_level"})


def _option_lines(parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> list[str]:
    lines: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS or action.dest in skip:
            continue
        if action.option_strings:
            metavar = ""
            if action.nargs != 0:
                if action.choices:
                    metavar = " {" + ",".join(map(str, action.choices)) + "}"
                else:
                    metavar = " " + str(action.metavar or action.dest.upper())
            head = ", ".join(f"\\fB{_escape(o)}\\fR" for o in action.option_strings) + _escape(str(metavar))
        else:
            head = f"\\fI{_escape(str(action.metavar or action.dest))}\\fR"
        help_text = action.help or ""
        if "%(default)" in help_text:
            help_text = help_text % {"default": action.default}
        lines += [".TP", head, _para(help_text)]
    return lines


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def render(parser: argparse.ArgumentParser, version: str) -> str:
    """roff source of flora-watcher(1)."""
    prog = parser.prog
    out = [
        f'.TH {prog.upper()} 1 "" "{prog} {version}" "User Commands"',
        ".ad l",  # left-aligned: long option lists do not stretch
        ".SH NAME",
        f"{prog} \\- {_para(parser.description or '')}",
        ".SH SYNOPSIS",
        f".B {prog}",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _para("flora-watcher watches the AI-generation runs of a FLORA workspace and reports every completion "
              "and failure to webhooks, chat channels, files, the terminal or a command: one event per "
              "transition, with an id that never changes, delivered at least once to each sink, surviving "
              "restarts, API outages and rate limits. A receiver may see an event again after a crash or a "
              "timeout (same id, same body): it deduplicates on the id; the file sink does so itself. Run it "
              "as a systemd service (see install-unit) or in the foreground."),
        ".SH GLOBAL OPTIONS",
        _para("They may come before or after the command."),
        *_option_lines(parser),
        ".SH COMMANDS",
    ]
    for name, help_text, sub in _subcommands(parser):
        usage = " ".join(sub.format_usage().removeprefix("usage: ").split())
        usage = re.sub(r" \[(-h|--log-format \{[^}]*\}|--log-level \{[^}]*\})\]", "", usage)
        out += [f".SS {name}", _para(help_text) + ".", ".PP", f"\\fB{_escape(usage)}\\fR"]
        description = (sub.description or "").strip()
        if description and description != help_text:
            for paragraph in re.split(r"\n\s*\n", description):
                out += [".PP", _para(paragraph)]
        options = _option_lines(sub, skip=GLOBAL_DESTS)
        if options:
            out += [".PP", "Options:", ".RS", *options, ".RE"]
    for title, rows in (("EXIT STATUS", EXIT_STATUS), ("ENVIRONMENT", ENVIRONMENT), ("FILES", FILES)):
        out.append(f".SH {title}")
        for key, text in rows:
            out += [".TP", f"\\fB{_escape(key)}\\fR", _para(text)]
    out += [
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBsystemd.exec\\fR(5), \\fBjournalctl\\fR(1).",
        _para("The operations guide (install, credentials, metrics, troubleshooting) is docs/operations.md; it "
              "ships inside the package, and the unit written by install-unit names its path in Documentation=."),
    ]
    return "\n".join(out) + "\n"
