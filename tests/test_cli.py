from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracklayerd import __version__
from tracklayerd.cli import cli


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.output


def test_version() -> None:
    assert run("version") == (0, f"tracklayerd {__version__}\n")


def test_check_valid_config_exits_0_and_redacts(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[sources.web]\ntype = "http_api"\ntoken = "very-secret-token"\n')
    code, output = run("check", "--config", str(path), "--show")
    assert code == 0
    assert "ok (1 source(s), 0 destination(s))" in output
    assert "very-secret-token" not in output and "***" in output


@pytest.mark.parametrize(
    ("text", "message"),
    [("[server]\nlisen = 1\n", "server.lisen: unknown key"),
     ("[sources.x]\ntype = 'http_api'\ntoken = { env = 'TL_UNSET_VAR' }\n", "TL_UNSET_VAR")],
)
def test_check_invalid_config_exits_1_with_one_message(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    code, output = run("check", "--config", str(path))
    assert code == 1
    assert message in output
    assert "Traceback" not in output


def test_check_applies_the_same_bind_rule_as_serve(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nlisten = "0.0.0.0:8787"\n[sources.web]\ntype = "http_api"\n')
    code, output = run("check", "--config", str(path))
    assert code == 1 and "refusing to listen on 0.0.0.0" in output


def test_bare_command_serves_with_config_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nlisten = 'nonsense'\n")
    code, output = run(env={"TRACKLAYERD_CONFIG": str(path)})
    assert code == 1 and "server.listen: expected HOST:PORT" in output


def test_store_from_a_newer_version_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    db = tmp_path / "tl.sqlite3"
    sqlite3.connect(db).execute("PRAGMA user_version = 999")
    path = tmp_path / "c.toml"
    path.write_text(f'[storage]\npath = "{db}"\n')
    code, output = run("serve", "--config", str(path), "--listen", "127.0.0.1:0")
    assert code == 1
    assert "cannot open the store" in output and "newer than this tracklayerd" in output
    assert "Traceback" not in output


def test_port_in_use_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run("serve", "--listen", f"127.0.0.1:{port}",
                           "--data-dir", str(tmp_path))
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in output and "Traceback" not in output


def test_serve_refuses_public_bind_without_credentials() -> None:
    code, output = run("serve", "--listen", "0.0.0.0:8787")
    assert code == 1
    assert "refusing to listen on 0.0.0.0" in output


def test_serve_reports_bad_config_without_traceback(tmp_path: Path) -> None:
    code, output = run("serve", "--config", str(tmp_path / "missing.toml"))
    assert code == 1
    assert "config file not found" in output and "Traceback" not in output


def test_serve_reads_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nlisten = 'nonsense'\n")
    code, output = run("serve", env={"TRACKLAYERD_CONFIG": str(path)})
    assert code == 1 and "server.listen: expected HOST:PORT" in output


def test_forget_command_reports_what_it_removed(tmp_path: Path) -> None:
    import asyncio
    import json

    from tracklayerd.config import parse_config
    from tracklayerd.ingest.segment_messages import BatchFields, prepare
    from tracklayerd.processor import Pipeline, Processor
    from tracklayerd.store.sqlite import SQLiteStore

    config_path = tmp_path / "c.toml"
    config_path.write_text(f'[storage]\npath = "{tmp_path / "tl.sqlite3"}"\n')

    async def fill() -> None:
        store = SQLiteStore(tmp_path / "tl.sqlite3")
        await store.open()
        message = {"type": "identify", "userId": "u-del", "messageId": "m1",
                   "traits": {"email": "Del@Example.com"}}
        rows = prepare([json.dumps(message).encode()], BatchFields(origin="tracking_api"),
                       source_id="web", received_at=1.0, request_ip=None,
                       max_event_bytes=32768).rows
        await store.append_inbox(rows)
        await Processor(store, Pipeline(parse_config({}, tmp_path))).run_until_idle()
        await store.close()

    asyncio.run(fill())
    code, output = run("forget", "--config", str(config_path), "--email", "del@example.com")
    assert code == 0
    assert output.strip() == ("removed 2 identity link(s), 1 event(s), 0 delivery row(s), "
                              "1 raw inbox row(s)")
    code, output = run("forget", "--config", str(config_path))
    assert code == 2 and "at least one" in output


def test_check_show_hides_credentials_in_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[sources.web]\ntype = "http_api"\ntoken = "t"\n'
        '[destinations.hook]\ntype = "webhook"\n'
        'endpoint = "https://robot:pa55word@hooks.example.com/in?api_key=k-123&team=x"\n')
    code, output = run("check", "--config", str(path), "--show")
    assert code == 0
    assert "pa55word" not in output and "k-123" not in output and "robot" not in output
    assert "https://***@hooks.example.com/in?api_key=***&team=***" in output


def test_check_runs_each_destinations_healthcheck(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[sources.web]\ntype = "http_api"\ntoken = "t"\n'
        '[destinations.meta]\ntype = "meta_capi"\npixel_id = "123"\naccess_token = "  "\n')
    code, output = run("check", "--config", str(path))
    assert code == 1
    assert "error: destination meta:" in output
