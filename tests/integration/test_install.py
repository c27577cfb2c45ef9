"""Install and docs (issue 14): install-unit, the man page and shell completion, all generated from this install."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from watcher.cli import COMMANDS, build_parser, main
from watcher.commands.install_unit import placement_warnings, render_unit
from watcher.resources import read_data

BIN = Path(sys.executable).parent / "flora-watcher"


def test_render_unit_replaces_only_the_program_and_the_documentation() -> None:
    template = read_data("flora-watcher.service")
    unit = render_unit(template, exec_path="/opt/flora-watcher/venv/bin/flora-watcher",
                       docs=["man:flora-watcher(1)", "file:///x/operations.md"])
    assert re.findall(r"(?m)^ExecStart=.*$", unit) == ["ExecStart=/opt/flora-watcher/venv/bin/flora-watcher run"]
    assert re.findall(r"(?m)^Documentation=.*$", unit) == ["Documentation=man:flora-watcher(1) file:///x/operations.md"]
    changed = {line for line in unit.splitlines() if not line.startswith("#")} ^ {
        line for line in template.splitlines() if not line.startswith("#")}
    assert all(line.startswith(("ExecStart=", "Documentation=")) for line in changed)
    with pytest.raises(ValueError):
        render_unit(template, exec_path="/opt/my venv/flora-watcher", docs=[])


def test_install_unit_writes_the_unit_the_man_page_and_the_example_config(tmp_path: Path, capsys) -> None:
    assert main(["install-unit", "--root", str(tmp_path)]) == 0
    unit = (tmp_path / "etc/systemd/system/flora-watcher.service").read_text()
    assert f"\nExecStart={os.path.abspath(BIN)} run\n" in unit
    documentation = re.search(r"(?m)^Documentation=(.*)$", unit).group(1).split()
    assert documentation[0] == "man:flora-watcher(1)"
    assert Path(documentation[1].removeprefix("file://")).name == "operations.md"
    assert Path(documentation[1].removeprefix("file://")).is_file()
    man = tmp_path / "usr/local/share/man/man1/flora-watcher.1"
    assert man.read_text().startswith(".TH FLORA-WATCHER 1")
    config_dir = tmp_path / "etc/flora-watcher"
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o755
    config = config_dir / "flora-watcher.toml"
    assert config.read_text() == read_data("flora-watcher.example.toml")
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    config.write_text("# edited\n")
    assert main(["install-unit", "--root", str(tmp_path), "--prefix", "/lib/systemd/system", "--no-man"]) == 0
    assert config.read_text() == "# edited\n"  # an existing config is never replaced
    assert (tmp_path / "lib/systemd/system/flora-watcher.service").is_file()
    assert "wrote" in capsys.readouterr().out


def test_install_unit_without_permission_says_so_in_one_line(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["install-unit", "--prefix", str(blocker / "sub"), "--no-man",
                 "--config-dir", str(tmp_path / "c")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning: ")]
    assert len(errors) == 1  # (a test venv inside a checkout also gets its warning)


def test_placement_warnings_name_each_cause_once() -> None:
    """The rule (issue 24): warn, never refuse, when ExecStart= would be under /tmp, /var/tmp or /dev/shm
    (PrivateTmp=yes), under a home directory (ProtectHome=yes), inside a source checkout, or an editable
    install of one."""
    warn = placement_warnings
    assert warn(["/opt/flora-watcher/venv/bin/flora-watcher", "/opt/flora-watcher/venv/bin/python"], {}, None) == []
    assert warn(["/usr/local/bin/flora-watcher"], {}, None) == []
    (tmp,) = warn(["/tmp/v/bin/flora-watcher", "/tmp/v/bin/python"], {}, None)
    assert tmp.startswith("/tmp/v/bin/flora-watcher is under /tmp") and "PrivateTmp=yes" in tmp
    assert "/var/tmp" in warn(["/var/tmp/v/bin/flora-watcher"], {}, None)[0]
    assert "/tmpfoo" not in "".join(warn(["/tmpfoo/bin/flora-watcher"], {}, None))  # a prefix is not a parent
    # a symlink in /usr/local/bin to a venv in a home directory: the resolved path and its python say so
    (home,) = warn(["/usr/local/bin/flora-watcher", "/home/ann/venv/bin/flora-watcher", "/home/ann/venv/bin/python"],
                   {}, None)
    assert home.startswith("/home/ann/venv/bin/flora-watcher is under /home") and "ProtectHome=yes" in home
    (checkout,) = warn(["/srv/src/fw/.venv/bin/flora-watcher", "/srv/src/fw/.venv/bin/python"],
                       {"/srv/src/fw/.venv/bin/flora-watcher": "/srv/src/fw",
                        "/srv/src/fw/.venv/bin/python": "/srv/src/fw"}, "/srv/src/fw")
    assert "inside the source checkout /srv/src/fw" in checkout
    (editable,) = warn(["/opt/venv/bin/flora-watcher"], {}, "/srv/src/fw")
    assert "editable install of the source tree /srv/src/fw" in editable
    assert all("/opt/flora-watcher/venv" in w for w in (tmp, home, checkout, editable))


def test_install_unit_under_tmp_warns_and_writes_all_the_same(tmp_path: Path, capsys) -> None:
    venv = Path(tempfile.mkdtemp(prefix="flora-venv-", dir="/tmp"))
    try:
        script = venv / "bin" / "flora-watcher"
        script.parent.mkdir()
        script.write_text(f"#!{venv}/bin/python\nimport sys\n")
        script.chmod(0o755)
        assert main(["install-unit", "--root", str(tmp_path / "root"), "--bin", str(script), "--no-man"]) == 0
        out, err = capsys.readouterr()
        (warning,) = err.splitlines()
        assert warning.startswith(f"warning: {script} is under /tmp") and "PrivateTmp=yes" in warning
        unit = (tmp_path / "root/etc/systemd/system/flora-watcher.service").read_text()
        assert f"\nExecStart={script} run\n" in unit
        assert main(["install-unit", "--stdout", "--bin", str(script)]) == 0  # --stdout: the same warning
        out, err = capsys.readouterr()
        assert out.startswith("# Written by") and err.splitlines() == [warning]
    finally:
        shutil.rmtree(venv)


def test_the_man_page_names_every_command_and_option(capsys) -> None:
    assert main(["man"]) == 0
    page = capsys.readouterr().out
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, _module, _help in COMMANDS:
        assert f"\n.SS {name}\n" in page
        for action in sub.choices[name]._actions:
            if action.help == "==SUPPRESS==":
                continue
            for option in action.option_strings:
                if option not in ("-h", "--help", "--log-format", "--log-level"):
                    assert option.replace("-", "\\-") in page, (name, option)
    assert ".SH EXIT STATUS" in page and ".SH ENVIRONMENT" in page


REPO = Path(__file__).resolve().parents[2]


def test_no_page_promises_exactly_once_delivery(capsys) -> None:
    """Delivery is at least once (CONTRACT §5): the man page said "exactly once per transition and sink" while
    the README says a receiver must deduplicate (issue 24). "Exactly once" stays only where it is true: the file
    sink holds each event once, and a transition is detected (reported) once."""
    assert main(["man"]) == 0
    page = " ".join(capsys.readouterr().out.replace("\\-", "-").split())
    assert "exactly once" not in page.lower() and "at least once" in page
    allowed = ("holds each event exactly once", "reported exactly once")
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "config/flora-watcher.example.toml",
             REPO / "systemd/flora-watcher.service"]
    for path in pages:
        text = " ".join(path.read_text().split())
        for m in re.finditer(r"(?i)exactly[ -]once", text):
            context = text[max(0, m.start() - 40):m.end()]
            assert any(a in context for a in allowed), f"{path.name}: ...{context}"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_the_man_page_renders(tmp_path: Path) -> None:
    page = tmp_path / "flora-watcher.1"
    page.write_text(subprocess.run([str(BIN), "man"], capture_output=True, text=True, check=True).stdout)
    out = subprocess.run(["groff", "-man", "-Tutf8", "-z", "-wmac", str(page)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == ""


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completion_completes_commands_and_options(tmp_path: Path) -> None:
    script = tmp_path / "fw.bash"
    script.write_text(subprocess.run([str(BIN), "completion", "bash"], capture_output=True, text=True,
                                     check=True).stdout)

    def complete(*words: str) -> list[str]:
        probe = (f'source {script}; COMP_WORDS=(flora-watcher {" ".join(words)}); '
                 f'COMP_CWORD={len(words)}; _shtab_flora_watcher; printf "%s\\n" "${{COMPREPLY[@]}}"')
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split()

    assert set(complete('""')) >= {name for name, _m, _h in COMMANDS}
    assert {"--once", "--dry-run", "--config", "--log-format"} <= set(complete("run", "--"))
    assert complete("completion", '""') == ["bash", "zsh"]


def test_zsh_completion_is_generated_from_the_parser(capsys) -> None:
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#compdef flora-watcher")
    assert all(name in script for name, _m, _h in COMMANDS)
    assert "_files" in script  # -c/--config completes file names
