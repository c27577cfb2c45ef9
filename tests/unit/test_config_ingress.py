"""[ingress] (CONTRACT §9): defaults, the signing secret's sources (like the API key's), and every refusal."""

from __future__ import annotations

import pytest

from tests.unit.test_config import CANARY, error, run
from watcher.config import DEFAULT_INGRESS_PATH, INGRESS_KEYS, IngressConfig
from watcher.secret import Secret

SECRET = "whsec_c2lnbmluZyBzZWNyZXQ"
CANARY_SECRET = f"whsec_{CANARY}"


def test_off_unless_listen_is_set() -> None:
    cfg = run("")
    assert cfg.ingress == IngressConfig() and not cfg.ingress.enabled
    assert cfg.ingress.path == DEFAULT_INGRESS_PATH == "/flora/callbacks" and cfg.ingress.tolerance == 600


def test_a_full_ingress_table() -> None:
    cfg = run(f"""
        [ingress]
        listen = "127.0.0.1:8788"
        path = "/hooks/flora"
        signing_secret = "{SECRET}"
        tolerance = 900
    """)
    assert cfg.ingress == IngressConfig(listen="127.0.0.1:8788", path="/hooks/flora",
                                        signing_secrets=(Secret(SECRET),), tolerance=900.0,
                                        secret_source="signing_secret")
    assert cfg.ingress.enabled and SECRET in cfg.secret_values()
    assert SECRET not in repr(cfg)


def test_the_secret_from_a_file_from_the_environment_and_several_while_rotating() -> None:
    cfg = run("""
        [ingress]
        listen = "127.0.0.1:8788"
        signing_secret_file = "secret.txt"
    """, files={"/etc/fw/secret.txt": SECRET + "\n"})
    assert cfg.ingress.signing_secrets == (Secret(SECRET),) and cfg.ingress.secret_source == "signing_secret_file"
    cfg = run("""
        [ingress]
        listen = "127.0.0.1:8788"
        signing_secret = ["${NEW}", "${OLD}"]
    """, env={"NEW": "whsec_new1", "OLD": "whsec_old1"})
    assert cfg.ingress.signing_secrets == (Secret("whsec_new1"), Secret("whsec_old1"))


def test_the_systemd_credential_stands_in_for_the_secret() -> None:
    cfg = run('[ingress]\nlisten = "127.0.0.1:8788"\n', env={"CREDENTIALS_DIRECTORY": "/run/credentials/fw"},
              files={"/run/credentials/fw/flora_signing_secret": SECRET})
    assert cfg.ingress.signing_secrets == (Secret(SECRET),) and cfg.ingress.secret_source == "credential"
    # the config's own key wins over the credential
    cfg = run('[ingress]\nlisten = "127.0.0.1:8788"\nsigning_secret = "whsec_mine"\n',
              env={"CREDENTIALS_DIRECTORY": "/run/credentials/fw"},
              files={"/run/credentials/fw/flora_signing_secret": SECRET})
    assert cfg.ingress.signing_secrets == (Secret("whsec_mine"),)


@pytest.mark.parametrize(("text", "key", "message"), [
    ('listen = "127.0.0.1:8788"', "ingress.signing_secret", "ingress.listen needs the signing secret"),
    ('listen = "8788"', "ingress.listen", "expected host:port"),
    (f'listen = "127.0.0.1:8788"\nsigning_secret = "{CANARY}"', "ingress.signing_secret", "whsec_"),
    ('listen = "127.0.0.1:8788"\nsigning_secret = "whsec_"', "ingress.signing_secret", "whsec_"),
    (f'listen = "127.0.0.1:8788"\nsigning_secret = "{CANARY_SECRET} x"', "ingress.signing_secret", "whitespace"),
    (f'signing_secret = "{SECRET}"\nsigning_secret_file = "x"', "ingress.signing_secret", "not both"),
    (f'signing_secret = "{SECRET}"\npath = "flora"', "ingress.path", "URL path"),
    (f'signing_secret = "{SECRET}"\npath = "/a?b=1"', "ingress.path", "URL path"),
    (f'signing_secret = "{SECRET}"\ntolerance = -1', "ingress.tolerance", "at least 0"),
    (f'signing_secret = "{SECRET}"\nport = 1', "ingress.port", "unknown key"),
])
def test_refusals_name_the_key_and_never_the_secret(text: str, key: str, message: str) -> None:
    err = error(f"[ingress]\n{text}\n")
    assert err.key == key and message in str(err)
    assert CANARY not in str(err)


def test_the_ingress_needs_a_listener_of_its_own() -> None:
    err = error(f'[server]\nlisten = "127.0.0.1:9464"\n[ingress]\nlisten = "127.0.0.1:9464"\n'
                f'signing_secret = "{SECRET}"\n')
    assert err.key == "ingress.listen" and "server.listen" in str(err)


def test_tolerance_zero_turns_the_timestamp_check_off() -> None:
    assert run(f'[ingress]\nsigning_secret = "{SECRET}"\ntolerance = 0\n').ingress.tolerance == 0


def test_the_example_config_documents_every_ingress_key() -> None:
    from tests.unit.test_config import EXAMPLE

    text = EXAMPLE.read_text(encoding="utf-8")
    assert "[ingress]" in text
    for key in INGRESS_KEYS:
        assert f"{key} =" in text, key
