"""check-config means it (issue 14, bug 1): every check ``run`` makes at start is made by ``check-config``
through the same code (``watcher.validate.check_start``), both name the same key in one form
(``sinks[0].template``), and ``run`` refuses such a config with exit status 2 (a config error), not 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watcher.cli import main


def slack(template: str) -> str:
    return f'[[sinks]]\nname = "t"\ntype = "slack"\nurl = "http://127.0.0.1:9/hook"\ntemplate = "{template}"\n'


def file_sink(path: str) -> str:
    return f'[[sinks]]\nname = "journal"\ntype = "file"\npath = "{path}"\n'


def exec_sink(program: str) -> str:
    return f'[[sinks]]\nname = "hook"\ntype = "exec"\ncommand = ["{program}", "--flag"]\n'


# (id, [watch] state_dir or None for a good one, [[sinks]] text, the key both must name)
CASES = [
    ("template-positional", None, slack("{0}"), "sinks[0].template"),
    ("template-typo", None, slack("{run_idd} failed"), "sinks[0].template"),
    ("template-broken", None, slack("{run_id"), "sinks[0].template"),
    ("file-path-unwritable", None, file_sink("/proc/nope/events.jsonl"), "sinks[0].path"),
    ("file-path-is-a-directory", None, file_sink("{tmp}"), "sinks[0].path"),
    ("file-path-under-a-file", None, file_sink("{tmp}/flora-watcher.toml/events.jsonl"), "sinks[0].path"),
    ("state-dir-unwritable", "/proc/nope", "", "watch.state_dir"),
    ("state-dir-is-a-file", "{tmp}/flora-watcher.toml", "", "watch.state_dir"),
    ("exec-program-missing", None, exec_sink("/nonexistent/flora-hook"), "sinks[0].command[0]"),
    ("exec-program-not-on-path", None, exec_sink("flora-hook-that-does-not-exist"), "sinks[0].command[0]"),
    ("webhook-secret", None, '[[sinks]]\nname = "w"\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n'
                             'secret = "whsec_not base64!!"\n', "sinks[0].secret"),
]


def write_config(tmp_path: Path, state_dir: str | None, sinks: str) -> Path:
    cfg = tmp_path / "flora-watcher.toml"
    state = (state_dir or str(tmp_path / "state")).replace("{tmp}", str(tmp_path))
    cfg.write_text(f'[watch]\nstate_dir = "{state}"\ninterval = 1\n\n' + sinks.replace("{tmp}", str(tmp_path)))
    return cfg


@pytest.fixture(autouse=True)
def api_key(monkeypatch) -> None:
    monkeypatch.setenv("FLORA_API_KEY", "sk_test_startchecks0001")
    monkeypatch.delenv("FLORA_WATCHER_CONFIG", raising=False)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("flora-watcher: config error: ")]


@pytest.mark.parametrize(("state_dir", "sinks", "key"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_config_and_run_agree(tmp_path: Path, capsys, state_dir, sinks, key) -> None:
    cfg = write_config(tmp_path, state_dir, sinks)
    assert main(["check-config", "-c", str(cfg)]) == 2
    checked = error_lines(capsys.readouterr().err)
    assert main(["run", "--once", "-c", str(cfg)]) == 2
    ran = error_lines(capsys.readouterr().err)
    assert checked == ran, "check-config and run report the same problems"
    assert len(checked) == 1 and checked[0].startswith(f"flora-watcher: config error: {key}: "), checked
    assert not (tmp_path / "state").exists(), "a refused config leaves no state behind"
    assert not Path("/proc/nope").exists()


def test_check_config_reports_every_problem_one_line_each(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, "/proc/nope",
                       slack("{run_idd}") + file_sink("/proc/nope/e.jsonl").replace('"journal"', '"j"')
                       + '[[sinks]]\nname = "x"\ntype = "stdout"\nformat = "yaml"\nurl = "https://x"\n')
    assert main(["check-config", "-c", str(cfg)]) == 2
    lines = error_lines(capsys.readouterr().err)
    # parse errors (every sink's) first; the start-time checks need a parsed config
    assert [line.split(": ")[2] for line in lines] == ["sinks[0].template", "sinks[2].url", "sinks[2].format"]
    cfg = write_config(tmp_path, "/proc/nope", file_sink("/proc/nope/e.jsonl") + exec_sink("/nonexistent/x"))
    assert main(["check-config", "-c", str(cfg)]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert [line.split(": ")[2] for line in lines] == ["watch.state_dir", "sinks[0].path", "sinks[1].command[0]"]
    assert main(["run", "--once", "-c", str(cfg)]) == 2
    assert error_lines(capsys.readouterr().err) == lines


def test_a_good_config_passes_both_and_leaves_nothing_behind(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, None, file_sink("{tmp}/out/events.jsonl") + exec_sink(sys.executable))
    assert main(["check-config", "-c", str(cfg)]) == 0
    assert "config OK" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flora-watcher.toml"]


def test_the_real_process_exits_2(tmp_path: Path) -> None:
    """The console script, as systemd runs it: RestartPreventExitStatus=2 stops the unit at once."""
    cfg = write_config(tmp_path, None, slack("{0}"))
    script = Path(sys.executable).parent / "flora-watcher"
    done = subprocess.run([str(script), "--log-format", "json", "run", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "flora-watcher: config error: sinks[0].template: a positional field is not supported" in done.stderr
