"""[store] in the config: url / url_file / credential, lease, and the password kept out of every message. Pure."""

from __future__ import annotations

import subprocess
import sys

import pytest

from watcher.config import parse
from watcher.errors import ConfigError
from watcher.sinks.registry import REGISTRY

URL = "postgresql://flora:s3cr3t-pw@db.internal/flora"


def load(text: str, env: dict[str, str] | None = None, files: dict[str, str] | None = None):
    def read_file(path: str) -> str:
        if files and path in files:
            return files[path]
        raise FileNotFoundError(path)

    return parse(text, env={"FLORA_API_KEY": "k" * 20, "HOME": "/home/x", **(env or {})}, read_file=read_file,
                 sink_types=REGISTRY)


def test_default_is_sqlite_with_a_ten_second_lease() -> None:
    cfg = load("")
    assert cfg.store.url is None and cfg.store.lease == 10.0 and cfg.store.backend == "sqlite"


def test_url_from_env_file_and_credential_and_the_password_is_a_secret() -> None:
    cfg = load('[store]\nurl = "${DB_URL}"\nlease = 4\n', env={"DB_URL": URL})
    assert cfg.store.url.reveal() == URL and cfg.store.lease == 4 and cfg.store.backend == "postgresql"
    assert "s3cr3t-pw" in cfg.secret_values() and "s3cr3t-pw" not in repr(cfg)
    cfg = load('[store]\nurl_file = "/etc/fw/url"\n', files={"/etc/fw/url": URL + "\n"})
    assert cfg.store.url.reveal() == URL and cfg.store.url_source == "url_file"
    cfg = load("", env={"CREDENTIALS_DIRECTORY": "/run/cred"}, files={"/run/cred/flora_store_url": URL})
    assert cfg.store.url.reveal() == URL and cfg.store.url_source == "credential"


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[store]\nurl = "mysql://x@y/z"\n', "store.url", "postgresql://"),
        ('[store]\nurl = "x"\nurl_file = "y"\n', "store.url", "not both"),
        ("[store]\nlease = 0\n", "store.lease", ""),
        ('[store]\nurl = "postgresql://a@b/c"\npool = 3\n', "store.pool", ""),
    ],
)
def test_bad_store_settings_name_the_key(text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(text)
    assert info.value.key == key and words in str(info.value)


def test_the_base_install_never_imports_psycopg() -> None:
    code = ("import sys, watcher.cli, watcher.daemon, watcher.stores, watcher.commands.status;"
            "assert not [m for m in sys.modules if m.startswith('psycopg')]")
    subprocess.run([sys.executable, "-c", code], check=True)
