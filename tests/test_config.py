from __future__ import annotations

from pathlib import Path

import pytest

from tracklayerd.config import (
    check_bind_safety,
    default_config,
    load_config,
    parse_config,
    parse_listen,
    redacted,
)
from tracklayerd.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tracklayerd.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[server]\nlisen = '1'\n", "server.lisen: unknown key"),
        ("[storage]\nsynchronous = 'off'\n", "storage.synchronous: Invalid enum value 'off'"),
        ("[sources.web]\ntoken = 'x'\n", "sources.web.type: required key is missing"),
        ("[sources.web]\ntype = 'nope'\n", "sources.web.type: unknown source type 'nope'"),
        ("[sources.web]\ntype = 'http_api'\ntokn = 'x'\n", "sources.web.tokn: unknown key"),
        ("[sources.web]\ntype = 'http_api'\nmax_event_bytes = 0\n",
         "sources.web.max_event_bytes: must be greater than 0"),
        ("[sources.'a b']\ntype = 'http_api'\n", "sources.a b: ids are 1-64"),
        ("[destinations.hook]\ntype = 'webhook'\n",
         "destinations.hook.endpoint: required key is missing"),
        ("[destinations.hook]\ntype = 'nope'\n",
         "destinations.hook.type: unknown destination type 'nope'"),
        ("[destinations.hook]\ntype = 'webhook'\nendpoint = 'http://x'\nmode = 'shadow'\n",
         "destinations.hook.mode: Invalid enum value 'shadow'"),
        ("[server]\nlisten = 'localhost'\n", "server.listen: expected HOST:PORT"),
        ("[server]\ntrusted_proxies = ['10.0.0.300']\n", "server.trusted_proxies[0]"),
        ("embedded_default = true\n", "embedded_default: unknown key"),
        ("[storage]\nmax_db_bytes = 0\n", "storage.max_db_bytes: must be greater than 0"),
        ("[server]\nshutdown_grace_secs = -1\n", "server.shutdown_grace_secs: must be 0"),
        ("[sources.a]\ntype = 'http_api'\ntoken = 'k'\n[sources.b]\ntype = 'http_api'\n"
         "token = ['j', 'k']\n",
         "sources.b: the same token or write key is also used by sources.a"),
        ("[sources._web]\ntype = 'http_api'\n", "starting with a letter or digit"),
        ("[identity]\ndefault_region = 'Narnia'\n", "identity.default_region: 'Narnia'"),
        ("[server\n", "invalid TOML"),
    ],
)
def test_invalid_config_names_the_path(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, toml))
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


def test_secrets_resolve_from_env_file_and_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TL_TOKEN_A", "from-env")
    (tmp_path / "token.txt").write_text("from-file\n")
    config = load_config(write(tmp_path, """
[sources.web]
type = "http_api"
token = [{ env = "TL_TOKEN_A" }, { file = "token.txt" }, "inline-token"]
"""))
    token = config.sources["web"].token
    assert token is not None
    assert [s.reveal() for s in token] == ["from-env", "from-file", "inline-token"]
    assert token.matches("from-file") and not token.matches("from-fil")


def test_secrets_are_redacted_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TL_SECRET", "s3cr3t-value")
    config = load_config(write(tmp_path, """
[sources.web]
type = "http_api"
token = { env = "TL_SECRET" }
[destinations.hook]
type = "webhook"
endpoint = "https://hooks.example/x"
secret = "hook-s3cr3t"
"""))
    shown = [repr(config), str(config), str(redacted(config))]
    for text in shown:
        assert "s3cr3t-value" not in text
        assert "hook-s3cr3t" not in text
    assert "env TL_SECRET" in str(redacted(config))


def test_missing_env_secret_names_variable_and_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sources.web.token: environment variable TL_NOPE_X"):
        load_config(
            write(tmp_path, '[sources.web]\ntype = "http_api"\ntoken = { env = "TL_NOPE_X" }\n')
        )


def test_secret_reference_with_unknown_form_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sources.web.token: expected a string"):
        load_config(write(tmp_path, '[sources.web]\ntype = "http_api"\ntoken = { vault = "x" }\n'))


def test_defaults_and_public_names(tmp_path: Path) -> None:
    config = parse_config({}, tmp_path)
    assert config.server.listen == "127.0.0.1:8787"
    assert config.storage.synchronous == "full"
    assert config.sources == {} and config.destinations == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:8787", ("127.0.0.1", 8787)), ("[::1]:80", ("::1", 80)),
     ("0.0.0.0:0", ("0.0.0.0", 0)), ("example.internal:9000", ("example.internal", 9000))],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8787", "host:99999", "[::1]", ":80"])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(value)


def test_unauthenticated_sources_may_only_bind_loopback(tmp_path: Path) -> None:
    dev = default_config()
    check_bind_safety(dev, "127.0.0.1")
    check_bind_safety(dev, "::1")
    check_bind_safety(dev, "localhost")
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0"):
        check_bind_safety(dev, "0.0.0.0")
    keyed = parse_config({"sources": {"web": {"type": "http_api", "token": "k"}}}, tmp_path)
    check_bind_safety(keyed, "0.0.0.0")
