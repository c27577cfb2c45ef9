"""Config parsing (CONTRACT §3): every rule, table-driven, with no real environment and no real files."""

from __future__ import annotations

import base64
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher import config as config_mod
from watcher import logs
from watcher.config import (
    API_KEYS,
    DELIVERY_KEYS,
    SERVER_KEYS,
    SINK_COMMON_KEYS,
    WATCH_KEYS,
    Config,
    SinkConfig,
    find_config,
    interpolate,
    load,
    parse,
)
from watcher.errors import ConfigError
from watcher.secret import Secret
from watcher.sinks.registry import REGISTRY, sink_config

SOURCE = Path("/etc/fw/flora-watcher.toml")
ENV_KEY = "sk_test_fromenv0001"
BASE_ENV = {"HOME": "/home/op", "FLORA_API_KEY": ENV_KEY}
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
WHSEC2 = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
CANARY = "CaNaRy7f3a9cQ"  # a secret that must never show up in an error message
BAD_LISTEN = 'expected host:port, e.g. "127.0.0.1:9464" or "[::1]:9464"'
ALL_TYPES = "webhook, slack, discord, teams, google_chat, file, stdout, exec, apprise"
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "flora-watcher.example.toml"


def reader(files: dict[str, str | OSError]):
    def read_file(path: str) -> str:
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory", path)
        value = files[path]
        if isinstance(value, OSError):
            raise value
        return value

    return read_file


def run(
    text: str = "",
    *,
    env: dict[str, str | None] | None = None,
    files: dict[str, str | OSError] | None = None,
    source: Path | None = SOURCE,
    require_api_key: bool = True,
) -> Config:
    merged = {**BASE_ENV, **(env or {})}
    final_env = {k: v for k, v in merged.items() if v is not None}
    return parse(
        textwrap.dedent(text),
        env=final_env,
        read_file=reader(files or {}),
        sink_types=REGISTRY,
        source=source,
        require_api_key=require_api_key,
    )


def error(text: str = "", **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        run(text, **kw)
    message = str(info.value)
    assert "\n" not in message, "config errors are one line"
    return info.value


def sink(body: str, **kw) -> SinkConfig:
    cfg = run("[[sinks]]\n" + textwrap.dedent(body), **kw)
    assert len(cfg.sinks) == 1
    return cfg.sinks[0]


def sink_error(body: str, **kw) -> str:
    return str(error("[[sinks]]\n" + textwrap.dedent(body), **kw))


# ------------------------------------------------------------------------------------------ defaults


def test_empty_config_is_all_defaults_with_the_key_from_the_environment():
    cfg = run("", source=None)
    assert cfg.api.base_url == "https://app.flora.ai/api/v1"
    assert cfg.api.api_key == Secret(ENV_KEY)
    assert cfg.api.api_key_source == "FLORA_API_KEY"
    assert (cfg.api.timeout, cfg.api.max_rps) == (30.0, 5.0)
    assert (cfg.watch.interval, cfg.watch.concurrency) == (5.0, 8)
    assert cfg.watch.events == ("run.completed", "run.failed", "run.stalled")
    assert (cfg.watch.resources, cfg.watch.stalled_after) == (("technique-runs", "generations"), 1800.0)
    assert cfg.watch.state_dir == Path("/home/op/.local/state/flora-watcher")
    assert cfg.server.listen is None
    assert cfg.delivery.retry_horizon == 72 * 3600
    assert cfg.sinks == (sink_config(name="console", type="stdout", format="text"),)
    assert cfg.source is None


def test_every_documented_key_is_read():
    cfg = run(
        f"""
        [api]
        base_url = "https://api.example.com/v1/"
        api_key = "sk_live_inline0001"
        timeout = 12
        max_rps = 2.5
        [watch]
        interval = 1.5
        concurrency = 3
        workspace_id = "ws_a"
        project_id = ["prj_a", "prj_b", "prj_a"]
        technique_id = ["tech_x"]
        events = ["run.started", "run.failed"]
        state_dir = "state"
        poll_max_interval = 30
        resync_interval = 120
        [server]
        listen = "[::1]:9464"
        [delivery]
        retry_horizon = 3600
        backoff_initial = 2
        backoff_max = 60
        shutdown_grace = 0
        [[sinks]]
        name = "ops"
        type = "webhook"
        url = "https://hooks.example.com/x"
        secret = ["{WHSEC}", "{WHSEC2}"]
        headers = {{ X-Team = "core" }}
        events = ["run.failed"]
        match = {{ error_code = "GPU_*", technique = ["CCTV*", "Other"] }}
        timeout = 3
        """
    )
    assert cfg.api.base_url == "https://api.example.com/v1"
    assert cfg.api.api_key_source == "api_key"
    assert (cfg.api.timeout, cfg.api.max_rps) == (12.0, 2.5)
    w = cfg.watch
    assert (w.interval, w.concurrency, w.poll_max_interval, w.resync_interval) == (1.5, 3, 30.0, 120.0)
    assert (w.workspace_id, w.project_id, w.technique_id) == (("ws_a",), ("prj_a", "prj_b"), ("tech_x",))
    assert w.events == ("run.started", "run.failed")
    assert w.state_dir == Path("/etc/fw/state")
    assert cfg.server.listen == "[::1]:9464"
    d = cfg.delivery
    assert (d.retry_horizon, d.backoff_initial, d.backoff_max, d.shutdown_grace) == (3600, 2, 60, 0)
    (ops,) = cfg.sinks
    assert ops.options.url == Secret("https://hooks.example.com/x")
    assert ops.options.secrets == (Secret(WHSEC), Secret(WHSEC2))
    assert ops.options.signature == "standard"
    assert ops.options.headers == {"X-Team": Secret("core")}
    assert ops.events == ("run.failed",)
    assert ops.match == {"error_code": ("GPU_*",), "technique": ("CCTV*", "Other")}
    assert ops.timeout == 3.0


# ------------------------------------------------------------------------------------- ${VAR} rules


@pytest.mark.parametrize(
    ("template", "env", "expected"),
    [
        ("plain", {}, "plain"),
        ("${A}", {"A": "x"}, "x"),
        ("pre-${A}-${B}-post", {"A": "1", "B": "2"}, "pre-1-2-post"),
        ("$$", {}, "$"),
        ("$${A}", {"A": "x"}, "${A}"),
        ("$$$${A}", {"A": "x"}, "$${A}"),
        ("$$${A}", {"A": "x"}, "$x"),
        ("cost $5", {}, "cost $5"),
        ("trailing $", {}, "trailing $"),
        ("${A}", {"A": ""}, ""),
        ("${A}${A}", {"A": "ab"}, "abab"),
    ],
)
def test_interpolation(template, env, expected):
    assert interpolate(template, env, "k") == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${MISSING}", "k: environment variable MISSING is not set"),
        ("x-${UNCLOSED", "k: unterminated '${' (write '$$' for a literal '$')"),
        ("${}", "k: invalid variable name in '${...}' (letters, digits and _ only)"),
        ("${1A}", "k: invalid variable name in '${...}' (letters, digits and _ only)"),
        ("${A B}", "k: invalid variable name in '${...}' (letters, digits and _ only)"),
    ],
)
def test_interpolation_errors(template, message):
    with pytest.raises(ConfigError) as info:
        interpolate(template, {}, "k")
    assert str(info.value) == message


_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_literals = st.text(max_size=20)


@given(_literals)
def test_text_with_dollars_escaped_comes_back_unchanged(text):
    assert interpolate(text.replace("$", "$$"), {}, "k") == text


@given(st.lists(st.one_of(_literals.map(lambda s: ("lit", s)), _names.map(lambda n: ("var", n))), max_size=8),
       st.dictionaries(_names, st.text(max_size=10)))
def test_template_of_literals_and_variables(parts, values):
    env = {name: values.get(name, f"<{name}>") for kind, name in parts if kind == "var"}
    template = "".join(s.replace("$", "$$") if kind == "lit" else "${" + s + "}" for kind, s in parts)
    expected = "".join(s if kind == "lit" else env[s] for kind, s in parts)
    assert interpolate(template, env, "k") == expected


def test_interpolation_applies_to_every_string_and_names_the_key():
    cfg = run(
        """
        [watch]
        workspace_id = ["${WS}", "static"]
        [[sinks]]
        name = "x"
        type = "exec"
        command = ["/bin/notify", "--to=${WHO}"]
        """,
        env={"WS": "ws_1", "WHO": "ops"},
    )
    assert cfg.watch.workspace_id == ("ws_1", "static")
    assert cfg.sinks[0].options.command == ("/bin/notify", "--to=ops")
    assert str(error('[api]\nbase_url = "${NOPE}"')) == "api.base_url: environment variable NOPE is not set"
    err = sink_error('name = "x"\ntype = "exec"\ncommand = ["a", "${NOPE}"]')
    assert err == "sinks[0].command[1]: environment variable NOPE is not set"


def test_empty_variable_for_a_secret_names_the_variable():
    err = sink_error('name = "x"\ntype = "slack"\nurl = "${SLACK}"', env={"SLACK": ""})
    assert err == "sinks[0].url: is empty ($SLACK is set to an empty string)"


# -------------------------------------------------------------------------------------- API key


@pytest.mark.parametrize(
    ("text", "env", "files", "key", "source"),
    [
        ('[api]\napi_key = "sk_live_inline"', {}, {}, "sk_live_inline", "api_key"),
        ('[api]\napi_key = "${MYKEY}"', {"MYKEY": "sk_live_fromvar"}, {}, "sk_live_fromvar", "api_key"),
        ('[api]\napi_key_file = "/k"', {}, {"/k": "sk_live_file\n"}, "sk_live_file", "api_key_file"),
        ('[api]\napi_key_file = "/k"', {}, {"/k": "sk_live_crlf\r\n"}, "sk_live_crlf", "api_key_file"),
        ('[api]\napi_key_file = "k"', {}, {"/etc/fw/k": "sk_live_rel"}, "sk_live_rel", "api_key_file"),
        ('[api]\napi_key_file = "~/k"', {}, {"/home/op/k": "sk_live_home"}, "sk_live_home", "api_key_file"),
        ("", {"CREDENTIALS_DIRECTORY": "/run/cred"}, {"/run/cred/flora_api_key": "sk_live_cred\n"},
         "sk_live_cred", "credential"),
        ("", {"CREDENTIALS_DIRECTORY": "/run/cred"}, {}, ENV_KEY, "FLORA_API_KEY"),
        ('[api]\napi_key_file = "/k"', {"CREDENTIALS_DIRECTORY": "/run/cred"},
         {"/k": "sk_live_file", "/run/cred/flora_api_key": "sk_live_cred"}, "sk_live_file", "api_key_file"),
        ("", {}, {}, ENV_KEY, "FLORA_API_KEY"),
    ],
)
def test_api_key_sources_first_found_wins(text, env, files, key, source):
    cfg = run(text, env=env, files=files)
    assert cfg.api.api_key == Secret(key)
    assert cfg.api.api_key_source == source


def test_relative_file_without_a_config_file_stays_relative():
    cfg = run('[api]\napi_key_file = "k"', files={"k": "sk_live_rel"}, source=None)
    assert cfg.api.api_key == Secret("sk_live_rel")


def test_no_api_key_is_an_error_unless_not_required():
    err = error("", env={"FLORA_API_KEY": None})
    assert str(err) == (
        "api.api_key: no API key: set api.api_key or api.api_key_file, provide the flora_api_key "
        "credential, or export FLORA_API_KEY"
    )
    assert err.key == "api.api_key"
    cfg = run("", env={"FLORA_API_KEY": None}, require_api_key=False)
    assert cfg.api.api_key is None and cfg.api.api_key_source is None
    assert run("", env={"FLORA_API_KEY": ""}, require_api_key=False).api.api_key is None


@pytest.mark.parametrize(
    ("text", "env", "files", "message"),
    [
        ('[api]\napi_key = "a"\napi_key_file = "/k"', {}, {},
         "api.api_key: set either api_key or api_key_file, not both"),
        ('[api]\napi_key_file = "/k"', {}, {}, "api.api_key_file: cannot read /k: No such file or directory"),
        ('[api]\napi_key_file = "/k"', {}, {"/k": PermissionError(13, "Permission denied")},
         "api.api_key_file: cannot read /k: Permission denied"),
        ('[api]\napi_key_file = "/k"', {}, {"/k": "\n"}, "api.api_key_file: /k is empty"),
        ('[api]\napi_key_file = "/k"', {}, {"/k": "one\ntwo\n"},
         "api.api_key_file: /k holds more than one line (or a NUL character)"),
        ('[api]\napi_key = ""', {}, {}, "api.api_key: is empty"),
        ('[api]\napi_key = "has space"', {}, {}, "api.api_key: contains whitespace or control characters"),
        ('[api]\napi_key_file = "~/k"', {"HOME": None}, {},
         "api.api_key_file: starts with ~ but $HOME is not set"),
        ("", {"CREDENTIALS_DIRECTORY": "/c"}, {"/c/flora_api_key": PermissionError(13, "Permission denied")},
         "api.api_key (credential flora_api_key): cannot read /c/flora_api_key: Permission denied"),
        ("", {"CREDENTIALS_DIRECTORY": "/c"}, {"/c/flora_api_key": ""},
         "api.api_key (credential flora_api_key): /c/flora_api_key is empty"),
    ],
)
def test_api_key_errors(text, env, files, message):
    # the first problem: without $HOME, watch.state_dir has no default either (reported too)
    assert str(error(text, env=env, files=files).problems()[0]) == message


# ------------------------------------------------------------------------------------------ base URL


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("", {}, "https://app.flora.ai/api/v1"),
        ("", {"FLORA_BASE_URL": "https://staging.flora.ai/api/v1/"}, "https://staging.flora.ai/api/v1"),
        ('[api]\nbase_url = "https://x.example/api/v1"', {"FLORA_BASE_URL": "https://y.example"},
         "https://x.example/api/v1"),
        ('[api]\nbase_url = "http://127.0.0.1:8080/api/v1/"', {}, "http://127.0.0.1:8080/api/v1"),
        ('[api]\nbase_url = "http://localhost:9/api/v1"', {}, "http://localhost:9/api/v1"),
        ('[api]\nbase_url = "http://[::1]:9/api/v1"', {}, "http://[::1]:9/api/v1"),
        ('[api]\nbase_url = "http://127.8.9.10/api/v1"', {}, "http://127.8.9.10/api/v1"),
    ],
)
def test_base_url(text, env, expected):
    assert run(text, env=env).api.base_url == expected


HTTP_ONLY_LOOPBACK = "http:// is only allowed for loopback hosts (127.0.0.0/8, ::1, localhost); use https://"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://app.flora.ai/api/v1", HTTP_ONLY_LOOPBACK),
        ("http://localhost.evil.example/", HTTP_ONLY_LOOPBACK),
        ("http://0.0.0.0:8080/", HTTP_ONLY_LOOPBACK),
        ("http://10.0.0.1/", HTTP_ONLY_LOOPBACK),
        ("ftp://example.com/", "must be an https:// URL (http:// only for loopback hosts)"),
        ("example.com/api", "must be an https:// URL (http:// only for loopback hosts)"),
        ("https://", "URL has no host"),
        ("https://host:99999/", "not a valid URL"),
        ("https://ho st/", "URL contains whitespace or control characters"),
        ("https://x.example/api?x=1", "must not have a query string or fragment"),
    ],
)
def test_bad_base_urls(url, message):
    assert str(error(f'[api]\nbase_url = "{url}"')) == f"api.base_url: {message}"


def test_bad_base_url_from_the_environment_names_the_variable():
    err = error("", env={"FLORA_BASE_URL": "http://example.com"})
    assert str(err) == f"api.base_url (from $FLORA_BASE_URL): {HTTP_ONLY_LOOPBACK}"


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://hooks.example.com/a", True),
        ("http://127.0.0.1:5000/hook", True),
        ("http://[::1]/hook", True),
        ("http://LOCALHOST/hook", True),
        ("http://hooks.example.com/a", False),
        ("ws://127.0.0.1/a", False),
    ],
)
def test_sink_urls_refuse_plain_http_except_loopback(url, ok):
    body = f'name = "w"\ntype = "webhook"\nurl = "{url}"'
    if ok:
        assert sink(body).options.url == Secret(url)
    else:
        assert sink_error(body).startswith("sinks[0].url: ")


# -------------------------------------------------------------------------------------- strict keys


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[apii]", "apii: unknown key (did you mean 'api'?)"),
        ("[zzz]", "zzz: unknown key"),
        ("[api]\ntimout = 3", "api.timout: unknown key (did you mean 'timeout'?)"),
        ("[watch]\nintervall = 3", "watch.intervall: unknown key (did you mean 'interval'?)"),
        ("[server]\nlisten_on = 'x'", "server.listen_on: unknown key (did you mean 'listen'?)"),
        ("[delivery]\nbackoff_maximum = 3",
         "delivery.backoff_maximum: unknown key (did you mean 'backoff_max'?)"),
        (
            '[[sinks]]\nname = "a"\ntype = "stdout"\n[[sinks]]\nname = "b"\ntype = "webhook"\nulr = "https://x"',
            "sinks[1].ulr: unknown key (did you mean 'url'?)",
        ),
        ('[[sinks]]\nname = "a"\ntype = "stdout"\nurl = "https://x"',
         "sinks[0].url: does not apply to a stdout sink"),
        ('[[sinks]]\nname = "a"\ntype = "webhook"\nurl = "https://x"\nformat = "json"',
         "sinks[0].format: does not apply to a webhook sink"),
        ('[[sinks]]\nname = "a"\ntype = "slack"\nurl = "https://x"\nsecret = "s"',
         "sinks[0].secret: does not apply to a slack sink"),
        ('[[sinks]]\nname = "a"\ntype = "slack"\nurl = "https://x"\nthread = "run"',
         "sinks[0].thread: does not apply to a slack sink"),
        ('[[sinks]]\nname = "a"\ntype = "stdout"\nmatch = { error_cod = "X" }',
         "sinks[0].match.error_cod: unknown key (did you mean 'error_code'?)"),
    ],
)
def test_unknown_keys_are_errors_with_a_suggestion(text, message):
    assert str(error(text).problems()[0]) == message  # a misspelt required key is also reported missing


# ------------------------------------------------------------------------------------ types and ranges


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("api = 5", "api: must be a table, got an integer"),
        ("[api]\ntimeout = 0", "api.timeout: must be greater than 0, got 0"),
        ("[api]\ntimeout = -1.5", "api.timeout: must be greater than 0, got -1.5"),
        ('[api]\ntimeout = "30"', "api.timeout: must be a number, got a string"),
        ("[api]\ntimeout = true", "api.timeout: must be a number, got a boolean"),
        ("[api]\ntimeout = nan", "api.timeout: must be a finite number"),
        ("[api]\nmax_rps = inf", "api.max_rps: must be a finite number"),
        ("[api]\nmax_rps = 0", "api.max_rps: must be greater than 0, got 0"),
        ("[api]\nbase_url = 5", "api.base_url: must be a string, got an integer"),
        ("[watch]\ninterval = 0", "watch.interval: must be greater than 0, got 0"),
        ("[watch]\nconcurrency = 0", "watch.concurrency: must be at least 1, got 0"),
        ("[watch]\nconcurrency = 2.0", "watch.concurrency: must be an integer, got a number"),
        ("[watch]\npoll_max_interval = 0", "watch.poll_max_interval: must be greater than 0, got 0"),
        ("[watch]\nresync_interval = -3", "watch.resync_interval: must be greater than 0, got -3"),
        ("[watch]\nworkspace_id = 5",
         "watch.workspace_id: must be a string or an array of strings, got an integer"),
        ("[watch]\nworkspace_id = []",
         "watch.workspace_id: must not be an empty array (leave the key out instead)"),
        ('[watch]\nproject_id = ["prj_a", ""]', "watch.project_id[1]: is empty"),
        ('[watch]\ntechnique_id = ["t", 3]', "watch.technique_id[1]: must be a string, got an integer"),
        ("[watch]\nevents = []", "watch.events: must not be an empty array (leave the key out instead)"),
        ('[watch]\nevents = ["run.complete"]',
         "watch.events[0]: unknown event 'run.complete'; choose from run.completed, run.failed, run.started, "
         "run.stalled (did you mean 'run.completed'?)"),
        ('[watch]\nevents = ["exploded"]',
         "watch.events[0]: unknown event 'exploded'; choose from run.completed, run.failed, run.started, "
         "run.stalled"),
        ('[watch]\nstate_dir = ""', "watch.state_dir: must not be empty"),
        ('[server]\nlisten = "9464"', f"server.listen: {BAD_LISTEN}"),
        ('[server]\nlisten = "localhost:70000"', f"server.listen: {BAD_LISTEN}"),
        ('[server]\nlisten = ":9464"', f"server.listen: {BAD_LISTEN}"),
        ("[delivery]\nretry_horizon = 0", "delivery.retry_horizon: must be greater than 0, got 0"),
        ("[delivery]\nbackoff_initial = 0", "delivery.backoff_initial: must be greater than 0, got 0"),
        ("[delivery]\nbackoff_initial = 10\nbackoff_max = 5",
         "delivery.backoff_max: must be at least backoff_initial (10)"),
        ("[delivery]\nshutdown_grace = -1", "delivery.shutdown_grace: must be at least 0, got -1"),
        ("[sinks]\nname = 'x'", "sinks: must be an array of tables: write each sink as a [[sinks]] section"),
        ("sinks = [1]", "sinks: must be an array of tables: write each sink as a [[sinks]] section"),
    ],
)
def test_type_and_range_errors(text, message):
    assert str(error(text)) == message


def test_toml_syntax_error_is_one_line_with_line_and_column():
    err = error('[api]\ntimeout = 3\nbase_url = "https://x\n')
    assert err.key == ""
    assert re.fullmatch(r"invalid TOML in /etc/fw/flora-watcher.toml: .*\(at line 3, column \d+\)", str(err))


def test_watch_filters_accept_a_string_or_a_list():
    cfg = run('[watch]\nworkspace_id = "ws_1"\nproject_id = ["prj_1", "prj_2"]')
    assert cfg.watch.workspace_id == ("ws_1",)
    assert cfg.watch.project_id == ("prj_1", "prj_2")
    assert cfg.watch.technique_id == ()


# ----------------------------------------------------------------------------------------- state_dir


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("", {"STATE_DIRECTORY": "/var/lib/flora-watcher"}, "/var/lib/flora-watcher"),
        ("", {"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, "/var/lib/a"),
        ("", {"XDG_STATE_HOME": "/xdg"}, "/xdg/flora-watcher"),
        ("", {"XDG_STATE_HOME": "relative/xdg"}, "/home/op/.local/state/flora-watcher"),
        ("", {}, "/home/op/.local/state/flora-watcher"),
        ('[watch]\nstate_dir = "/srv/state"', {"STATE_DIRECTORY": "/var/lib/x"}, "/srv/state"),
        ('[watch]\nstate_dir = "state"', {}, "/etc/fw/state"),
        ('[watch]\nstate_dir = "~/st"', {}, "/home/op/st"),
        ('[watch]\nstate_dir = "${SD}/x"', {"SD": "/data"}, "/data/x"),
    ],
)
def test_state_dir(text, env, expected):
    assert run(text, env=env).watch.state_dir == Path(expected)


def test_state_dir_without_any_default_is_an_error():
    err = error("", env={"HOME": None})
    assert str(err) == (
        "watch.state_dir: no default: set watch.state_dir, $STATE_DIRECTORY, $XDG_STATE_HOME or $HOME"
    )


# --------------------------------------------------------------------------------------------- sinks


def test_no_sinks_means_one_console_sink_with_every_watched_event():
    assert run("sinks = []").sinks == (sink_config(name="console", type="stdout", format="text"),)
    cfg = run('[watch]\nevents = ["run.started", "run.completed", "run.failed"]')
    all_events = ("run.started", "run.completed", "run.failed")
    assert cfg.sinks == (sink_config(name="console", type="stdout", format="text", events=all_events),)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('type = "webhook"\nurl = "https://h.example/x"',
         {"url": Secret("https://h.example/x"), "secrets": (), "signature": "standard", "headers": {}}),
        (f'type = "webhook"\nurl = "https://h.example/x"\nsecret = "{WHSEC}"', {"secrets": (Secret(WHSEC),)}),
        ('type = "webhook"\nurl = "https://h.example/x"\nsecret = "anything goes"\nsignature = "flora"',
         {"secrets": (Secret("anything goes"),), "signature": "flora"}),
        ('type = "webhook"\nurl = "https://h.example/x"\nsecret_file = ["/s1", "s2"]',
         {"secrets": (Secret(WHSEC), Secret(WHSEC2))}),
        ('type = "slack"\nurl = "https://hooks.slack.com/services/T/B/C"\ntemplate = "run {run_id}"',
         {"url": Secret("https://hooks.slack.com/services/T/B/C"), "template": "run {run_id}"}),
        ('type = "discord"\nurl_file = "/u"', {"url": Secret("https://discord.com/api/webhooks/1/abc")}),
        ('type = "teams"\nurl = "https://t.example/wf"',
         {"url": Secret("https://t.example/wf"), "template": None}),
        ('type = "google_chat"\nurl = "https://chat.googleapis.com/v1/x"', {"thread": "run"}),
        ('type = "google_chat"\nurl = "https://chat.googleapis.com/v1/x"\nthread = "project"',
         {"thread": "project"}),
        ('type = "file"\npath = "events.jsonl"', {"path": Path("/etc/fw/events.jsonl")}),
        ('type = "file"\npath = "/var/lib/fw/e.jsonl"', {"path": Path("/var/lib/fw/e.jsonl")}),
        ('type = "stdout"', {"format": "text"}),
        ('type = "stdout"\nformat = "json"', {"format": "json"}),
        ('type = "exec"\ncommand = ["/usr/bin/logger", "-t", "flora"]',
         {"command": ("/usr/bin/logger", "-t", "flora")}),
    ],
)
def test_each_sink_type(body, expected):
    files = {
        "/s1": WHSEC + "\n",
        "/etc/fw/s2": WHSEC2,
        "/u": "https://discord.com/api/webhooks/1/abc\n",
    }
    got = sink(f'name = "s"\n{body}', files=files)
    for name, value in expected.items():
        assert getattr(got.options, name) == value, name
    assert got.timeout == 10.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('type = "stdout"', "sinks[0].name: required (a unique name for logs, metrics and test-sink)"),
        ('name = ""\ntype = "stdout"', "sinks[0].name: is empty"),
        ('name = "has space"\ntype = "stdout"',
         "sinks[0].name: may only contain letters, digits, '_', '.' and '-'"),
        ('name = "s"', f"sinks[0].type: required ({ALL_TYPES})"),
        ('name = "s"\ntype = "web_hook"',
         f"sinks[0].type: unknown sink type 'web_hook'; choose from {ALL_TYPES} (did you mean 'webhook'?)"),
        ('name = "s"\ntype = "webhook"', "sinks[0].url: required (or url_file)"),
        ('name = "s"\ntype = "slack"\nurl = "https://x.example"\nurl_file = "/u"',
         "sinks[0].url: set either url or url_file, not both"),
        ('name = "s"\ntype = "webhook"\nurl = "https://x.example"\nsignature = "hmac"',
         "sinks[0].signature: must be one of standard, flora, got 'hmac'"),
        ('name = "s"\ntype = "webhook"\nurl = "https://x.example"\nsignature = "flora"',
         "sinks[0].signature: needs secret or secret_file to sign with"),
        ('name = "s"\ntype = "webhook"\nurl = "https://x.example"\nsecret = "plain"',
         "sinks[0].secret: not a Standard Webhooks secret ('whsec_' + base64); use one, or set "
         'signature = "flora"'),
        (f'name = "s"\ntype = "webhook"\nurl = "https://x.example"\nsecret = ["{WHSEC}", "whsec_%%%"]',
         "sinks[0].secret[1]: not a Standard Webhooks secret ('whsec_' + base64); use one, or set "
         'signature = "flora"'),
        ('name = "s"\ntype = "webhook"\nurl = "https://x.example"\nsecret = "whsec_"',
         "sinks[0].secret: not a Standard Webhooks secret ('whsec_' + base64); use one, or set "
         'signature = "flora"'),
        ('name = "s"\ntype = "webhook"\nurl = "https://x.example"\nsecret = []',
         "sinks[0].secret: must not be an empty array (leave the key out instead)"),
        (f'name = "s"\ntype = "webhook"\nurl = "https://x.example"\nsecret = "{WHSEC}"\nsecret_file = "/s"',
         "sinks[0].secret: set either secret or secret_file, not both"),
        ('name = "s"\ntype = "webhook"\nurl = "https://x.example"\nheaders = { "Bad Name" = "v" }',
         'sinks[0].headers.Bad Name: not a valid HTTP header name'),
        ('name = "s"\ntype = "webhook"\nurl = "https://x.example"\nheaders = { Webhook-Signature = "v" }',
         "sinks[0].headers.Webhook-Signature: set by the webhook sink itself; it cannot be overridden"),
        ('name = "s"\ntype = "webhook"\nurl = "https://x.example"\nheaders = { X-A = 1 }',
         "sinks[0].headers.X-A: must be a string, got an integer"),
        ('name = "s"\ntype = "webhook"\nurl = "https://x.example"\nheaders = "X-A: 1"',
         "sinks[0].headers: must be a table, got a string"),
        ('name = "s"\ntype = "slack"\nurl = "https://x.example"\ntemplate = "{oops"',
         "sinks[0].template: not a valid template: expected '}' before end of string"),
        ('name = "s"\ntype = "google_chat"\nurl = "https://x.example"\nthread = "space"',
         "sinks[0].thread: must be one of run, project, none, got 'space'"),
        ('name = "s"\ntype = "file"', "sinks[0].path: required: the JSON Lines file to append events to"),
        ('name = "s"\ntype = "stdout"\nformat = "yaml"',
         "sinks[0].format: must be one of text, json, got 'yaml'"),
        ('name = "s"\ntype = "exec"',
         "sinks[0].command: required: the program and its arguments as an array (no shell)"),
        ('name = "s"\ntype = "exec"\ncommand = "notify --all"',
         "sinks[0].command: must be an array of strings (argv; no shell), got a string"),
        ('name = "s"\ntype = "exec"\ncommand = []',
         "sinks[0].command: must not be an empty array (leave the key out instead)"),
        ('name = "s"\ntype = "exec"\ncommand = ["", "x"]',
         "sinks[0].command[0]: the program must not be empty"),
        ('name = "s"\ntype = "stdout"\ntimeout = 0', "sinks[0].timeout: must be greater than 0, got 0"),
        ('name = "s"\ntype = "stdout"\nmatch = "GPU_*"', "sinks[0].match: must be a table, got a string"),
        ('name = "s"\ntype = "stdout"\nmatch = { error_code = [] }',
         "sinks[0].match.error_code: must not be an empty array (leave the key out instead)"),
        ('name = "s"\ntype = "stdout"\nmatch = { project_id = [1] }',
         "sinks[0].match.project_id[0]: must be a string, got an integer"),
    ],
)
def test_sink_errors(body, message):
    assert sink_error(body) == message


def test_sink_names_are_unique():
    text = '[[sinks]]\nname = "a"\ntype = "stdout"\n[[sinks]]\nname = "a"\ntype = "file"\npath = "/x"'
    assert str(error(text)) == "sinks[1].name: duplicate sink name 'a' (also sinks[0])"


def test_sink_events_default_to_and_must_be_within_watch_events():
    text = '[watch]\nevents = ["run.failed", "run.started"]\n[[sinks]]\nname = "a"\ntype = "stdout"\n'
    assert run(text).sinks[0].events == ("run.failed", "run.started")
    assert run(text + 'events = "run.started"').sinks[0].events == ("run.started",)
    err = error(text + 'events = ["run.failed", "run.completed"]')
    assert str(err) == (
        "sinks[0].events[1]: event 'run.completed' is not enabled in [watch].events; add it there first"
    )
    err = error(text + 'events = ["run.finished"]')
    assert str(err).startswith("sinks[0].events[0]: unknown event 'run.finished'")


def test_sink_match_globs():
    got = sink('name = "a"\ntype = "stdout"\nmatch = { error_code = "GPU_*", workspace_id = ["ws_a", "ws_b"] }\n')
    assert got.match == {"error_code": ("GPU_*",), "workspace_id": ("ws_a", "ws_b")}


# ------------------------------------------------------------------------------- secrets stay secret

# Every error a secret-bearing field can provoke, with the canary in that field.
HOOK = 'name = "s"\ntype = "webhook"\nurl = "https://h.example/"\n'
WEBHOOK = 'name = "s"\ntype = "webhook"\n'
CANARY_CASES = [
    ("[api]", f'api_key = "{CANARY} x"', {}, {}),
    ("[api]", f'api_key = "{CANARY}\\u0000"', {}, {}),
    ("[api]", 'api_key_file = "/k"', {}, {"/k": f"{CANARY}\n{CANARY}"}),
    ("[api]", "", {"FLORA_API_KEY": f"{CANARY} space"}, {}),
    ("[api]", "", {"CREDENTIALS_DIRECTORY": "/c"}, {"/c/flora_api_key": f"{CANARY}\tx"}),
    ("[api]", f'api_key = "{CANARY}"\napi_key_file = "/k"', {}, {}),
    ("[api]", f'api_key = "${{NOT_SET}}{CANARY}"', {}, {}),
    ("[api]", f'api_key = "{CANARY}${{"', {}, {}),
    ("[api]", f'api_key = "{CANARY}', {}, {}),  # TOML syntax error on the secret's line
    ("[api]", f"api_key = {CANARY}", {}, {}),  # bare value
    ("[[sinks]]", WEBHOOK + f'url = "http://{CANARY}.example/"', {}, {}),
    ("[[sinks]]", WEBHOOK + f'url = "ftp://h.example/{CANARY}"', {}, {}),
    ("[[sinks]]", WEBHOOK + f'url = "https://h.example/{CANARY} x"', {}, {}),
    ("[[sinks]]", WEBHOOK + f'url = "https://h.example:{CANARY}/"', {}, {}),
    ("[[sinks]]", WEBHOOK + f'url = "https:///{CANARY}"', {}, {}),
    ("[[sinks]]", WEBHOOK + f'url = "https://h.example/{CANARY}"\nurl_file = "/u"', {}, {}),
    ("[[sinks]]", WEBHOOK + 'url = "${HOOK}"\nformat = "json"', {"HOOK": f"https://{CANARY}"}, {}),
    ("[[sinks]]", WEBHOOK + 'url = "${HOOK}"\nsignature = "flora"', {"HOOK": f"https://{CANARY}"}, {}),
    ("[[sinks]]", 'name = "s"\ntype = "slack"\nurl_file = "/u"', {}, {"/u": f"http://{CANARY}.example/"}),
    ("[[sinks]]", HOOK + f'secret = "{CANARY}"', {}, {}),
    ("[[sinks]]", HOOK + f'secret = "whsec_{CANARY}!"', {}, {}),
    ("[[sinks]]", HOOK + 'secret_file = "/s"', {}, {"/s": f"{CANARY}\n"}),
    ("[[sinks]]", HOOK + f'secret = ["{WHSEC}", "{CANARY}"]', {}, {}),
    ("[[sinks]]", HOOK + f'headers = {{ X-T = "{CANARY}\\n" }}', {}, {}),
    ("[[sinks]]", HOOK + f'headers = {{ Host = "{CANARY}" }}', {}, {}),
]


@pytest.mark.parametrize(("section", "body", "env", "files"), CANARY_CASES)
def test_no_error_ever_contains_a_secret(section, body, env, files):
    err = error(f"{section}\n{body}\n", env=env, files=files)
    assert CANARY not in str(err)
    assert CANARY not in repr(err)
    assert CANARY not in err.key


def test_config_repr_shows_no_secret():
    cfg = run(
        f"""
        [api]
        api_key = "{CANARY}-key"
        [[sinks]]
        name = "w"
        type = "webhook"
        url = "https://h.example/{CANARY}-url"
        secret = "{WHSEC}"
        headers = {{ Authorization = "Bearer {CANARY}-hdr" }}
        """
    )
    text = repr(cfg) + str(cfg)
    assert CANARY not in text and WHSEC not in text
    assert set(cfg.secret_values()) >= {
        f"{CANARY}-key",
        f"https://h.example/{CANARY}-url",
        f"/{CANARY}-url",
        WHSEC,
        f"Bearer {CANARY}-hdr",
    }


# -------------------------------------------------------------------------------- search order, load


@pytest.fixture
def system_config(tmp_path, monkeypatch):
    path = tmp_path / "etc" / "flora-watcher.toml"
    monkeypatch.setattr(config_mod, "SYSTEM_CONFIG_PATH", path)
    return path


def test_search_order(tmp_path, system_config):
    cwd = tmp_path / "work"
    cwd.mkdir()
    assert find_config({}, cwd) is None
    system_config.parent.mkdir()
    system_config.write_text("")
    assert find_config({}, cwd) == system_config
    (cwd / "flora-watcher.toml").write_text("")
    assert find_config({}, cwd) == cwd / "flora-watcher.toml"
    assert find_config({"FLORA_WATCHER_CONFIG": "/elsewhere/fw.toml"}, cwd) == Path("/elsewhere/fw.toml")
    assert find_config({"FLORA_WATCHER_CONFIG": "rel.toml"}, cwd) == cwd / "rel.toml"
    assert find_config({"FLORA_WATCHER_CONFIG": ""}, cwd) == cwd / "flora-watcher.toml"


def test_load_reads_the_file_resolves_relative_paths_and_registers_secrets(tmp_path, system_config):
    secret_key = "sk_live_loadtest_4711"
    (tmp_path / "key").write_text(secret_key + "\n")
    (tmp_path / "fw.toml").write_text('[api]\napi_key_file = "key"\n')
    cfg = load("fw.toml", sink_types=REGISTRY, env={"HOME": "/h"}, cwd=tmp_path)
    assert cfg.source == tmp_path / "fw.toml"
    assert cfg.api.api_key == Secret(secret_key)
    assert cfg.api.api_key_source == "api_key_file"
    assert logs.redact(f"token is {secret_key}.") == "token is <secret>."


def test_load_without_any_file_uses_defaults(tmp_path, system_config):
    cfg = load(sink_types=REGISTRY, env={"HOME": "/h", "FLORA_API_KEY": "sk_live_k"}, cwd=tmp_path)
    assert cfg.source is None
    assert cfg.sinks[0].name == "console"
    assert cfg.api.api_key == Secret("sk_live_k")


@pytest.mark.parametrize(
    ("path", "env", "message"),
    [
        ("missing.toml", {}, "cannot read config file {tmp}/missing.toml: No such file or directory"),
        (None, {"FLORA_WATCHER_CONFIG": "gone.toml"},
         "cannot read config file {tmp}/gone.toml (from $FLORA_WATCHER_CONFIG): No such file or directory"),
        ("binary.toml", {}, "cannot read config file {tmp}/binary.toml: not valid UTF-8 (byte 0)"),
    ],
)
def test_load_errors(tmp_path, system_config, path, env, message):
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError) as info:
        load(path, sink_types=REGISTRY, env={"HOME": "/h", "FLORA_API_KEY": "sk_live_k", **env}, cwd=tmp_path)
    assert str(info.value) == message.format(tmp=tmp_path)


# ------------------------------------------------------------------------------------ example config


EXAMPLE_ENV = {
    "OPS_WEBHOOK_URL": "https://ops.example.com/flora",
    "OPS_WEBHOOK_SECRET": WHSEC,
    "OPS_RECEIVER_TOKEN": "receiver-token-1",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/xyz",
}


def test_example_config_parses():
    text = EXAMPLE.read_text(encoding="utf-8")
    cfg = parse(text, env={**BASE_ENV, **EXAMPLE_ENV}, read_file=reader({}), sink_types=REGISTRY, source=EXAMPLE)
    assert [(s.name, s.type) for s in cfg.sinks] == [
        ("ops", "webhook"), ("team-slack", "slack"), ("journal", "file"), ("console", "stdout"),
    ]
    assert cfg.sinks[0].options.secrets == (Secret(WHSEC),)
    assert cfg.sinks[0].events == ("run.failed",)
    assert cfg.delivery == config_mod.DeliveryConfig()  # documented values are the defaults
    assert cfg.api == config_mod.ApiConfig(api_key=Secret(ENV_KEY), api_key_source="FLORA_API_KEY")


def test_example_config_documents_every_key():
    text = EXAMPLE.read_text(encoding="utf-8")
    keys = {*API_KEYS, *WATCH_KEYS, *SERVER_KEYS, *DELIVERY_KEYS, *SINK_COMMON_KEYS}
    keys.update(*(spec.keys for spec in REGISTRY.values()))
    undocumented = sorted(k for k in keys if not re.search(rf"(^|[\s#{{,]){k}\s*=", text, re.MULTILINE))
    assert undocumented == []
    for sink_type in REGISTRY:
        assert re.search(rf'type = "{sink_type}"', text), sink_type


# ------------------------------------------------------------------------------------ check-config


@pytest.fixture
def cli_env(tmp_path, monkeypatch, system_config):
    """A clean process environment for ``flora-watcher check-config`` run in-process, logging restored after."""
    import logging

    import structlog

    for name in ("FLORA_WATCHER_CONFIG", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "XDG_STATE_HOME",
                 "FLORA_BASE_URL", "FLORA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, structlog.get_config(), logs._handler)
    yield tmp_path
    logs.clear_secrets()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    structlog.configure(**saved[2])
    logs._handler = saved[3]


def test_check_config_prints_a_summary_and_no_secret(cli_env, monkeypatch, capsys):
    from watcher.cli import main

    key, hook = f"sk_live_{CANARY}", f"https://hooks.example.com/{CANARY}"
    (cli_env / "key").write_text(key + "\n")
    (cli_env / "fw.toml").write_text(
        '[api]\napi_key_file = "key"\n[watch]\nproject_id = "prj_a"\n'
        f'[[sinks]]\nname = "ops"\ntype = "webhook"\nurl = "${{HOOK}}"\nsecret = "{WHSEC}"\nevents = ["run.failed"]\n'
    )
    monkeypatch.setenv("HOOK", hook)
    assert main(["check-config", "-c", "fw.toml"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"config OK: {cli_env / 'fw.toml'}"
    assert "https://app.flora.ai/api/v1 (key from api.api_key_file)" in out
    assert "interval 5s, concurrency 8, max_rps 5" in out
    assert f"state_dir:  {cli_env / 'home/.local/state/flora-watcher'}" in out
    assert "project_id=prj_a" in out
    assert re.search(r"ops\s+webhook\s+run\.failed\s+\[signed \(standard, 1 secret\)\]", out)
    assert CANARY not in out and WHSEC not in out


def test_check_config_without_a_file_uses_defaults(cli_env, monkeypatch, capsys):
    from watcher.cli import main

    monkeypatch.setenv("FLORA_API_KEY", "sk_live_fromenv")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "config OK: defaults (no file found)"
    assert "(key from environment variable FLORA_API_KEY)" in out
    assert re.search(r"console\s+stdout\s+run\.completed, run\.failed", out)


def test_check_config_errors_exit_2_on_one_line_without_secrets(cli_env, monkeypatch, capsys):
    from watcher.cli import main

    monkeypatch.setenv("FLORA_API_KEY", "sk_live_fromenv")
    (cli_env / "fw.toml").write_text(f'[[sinks]]\nname = "x"\ntype = "slack"\nurl = "http://{CANARY}.example/"\n')
    assert main(["check-config", "-c", "fw.toml"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"flora-watcher: config error: sinks[0].url: {HTTP_ONLY_LOOPBACK}\n"
    assert main(["check-config", "-c", "nope.toml"]) == 2
    assert "cannot read config file" in capsys.readouterr().err
    monkeypatch.delenv("FLORA_API_KEY")
    assert main(["check-config"]) == 2
    assert "api.api_key: no API key" in capsys.readouterr().err
