"""Admin auth for everything under /-/: a token when one is set, else loopback only."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from tests.conftest import auth, make_config
from tracklayerd.app import CONFIG
from tracklayerd.secrets import Secret
from tracklayerd.web.auth import (
    REALM,
    Access,
    check_admin,
    decide,
    is_loopback_peer,
    presented_token,
    require_admin,
)

ADMIN = "adm-secret-1"
SECRET = Secret(ADMIN, "inline")
TRACE = "/-/events/1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_with_admin_token_a_request_without_credentials_gets_401_and_a_challenge(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(make_config(tmp_path, server={"admin_token": ADMIN}))
    resp = await client.get(TRACE)
    assert resp.status == 401
    # The Basic challenge is what makes a browser show its login prompt.
    assert resp.headers["WWW-Authenticate"] == REALM
    body = await resp.json()
    assert body["error"] == "unauthorized" and "admin_token" in body["message"]


@pytest.mark.parametrize("headers", [
    bearer("wrong"),
    bearer(ADMIN + "x"),
    {"Authorization": basic("admin", "wrong")},
    {"Authorization": basic(ADMIN, "")},  # the token as user name is not it
    {"Authorization": f"Token {ADMIN}"},
])
async def test_with_admin_token_a_wrong_token_gets_401(
    make_client: Any, tmp_path: Path, headers: dict[str, str]
) -> None:
    client = await make_client(make_config(tmp_path, server={"admin_token": ADMIN}))
    resp = await client.get(TRACE, headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == REALM


async def test_the_source_token_is_not_an_admin_token(make_client: Any, tmp_path: Path) -> None:
    client = await make_client(make_config(tmp_path, server={"admin_token": ADMIN}))
    assert (await client.get(TRACE, headers=auth())).status == 401


@pytest.mark.parametrize("headers", [
    bearer(ADMIN),
    {"Authorization": f"bearer  {ADMIN}"},
    {"Authorization": basic("anyone", ADMIN)},
    {"Authorization": basic("", ADMIN)},
])
async def test_with_admin_token_bearer_or_basic_password_is_let_through(
    make_client: Any, tmp_path: Path, headers: dict[str, str]
) -> None:
    client = await make_client(make_config(tmp_path, server={"admin_token": ADMIN}))
    resp = await client.get(TRACE, headers=headers)
    # Past the auth check: there is no event 1 yet.
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"


async def test_without_admin_token_a_loopback_client_is_let_through(make_client: Any) -> None:
    client = await make_client()  # the test client connects from 127.0.0.1
    resp = await client.get(TRACE)
    assert resp.status == 404


async def test_without_admin_token_behind_a_proxy_everyone_gets_403(
    make_client: Any, tmp_path: Path
) -> None:
    config = make_config(tmp_path, server={"trusted_proxies": ["127.0.0.1"]})
    client = await make_client(config)
    resp = await client.get(TRACE)
    # The proxy connects from loopback for every client: loopback proves nothing here.
    assert resp.status == 403
    body = await resp.json()
    assert body["error"] == "forbidden" and "server.admin_token" in body["message"]
    assert "WWW-Authenticate" not in resp.headers


@pytest.mark.parametrize(("peer", "expected"), [
    ("127.0.0.1", Access.ALLOWED),
    ("127.8.9.10", Access.ALLOWED),
    ("::1", Access.ALLOWED),
    ("::ffff:127.0.0.1", Access.ALLOWED),
    ("198.51.100.7", Access.NOT_LOCAL),
    ("10.0.0.1", Access.NOT_LOCAL),
    ("::ffff:198.51.100.7", Access.NOT_LOCAL),
    ("2001:db8::1", Access.NOT_LOCAL),
    ("localhost", Access.NOT_LOCAL),  # a peer is an address, never a name
    ("", Access.NOT_LOCAL),
    (None, Access.NOT_LOCAL),
])
def test_without_admin_token_only_a_loopback_peer_is_allowed(
    peer: str | None, expected: Access
) -> None:
    assert decide(None, [], peer, None) is expected


def test_without_admin_token_trusted_proxies_deny_even_loopback() -> None:
    assert decide(None, ["10.0.0.0/8"], "127.0.0.1", None) is Access.NOT_LOCAL


@pytest.mark.parametrize("peer", ["127.0.0.1", "198.51.100.7", None])
def test_with_admin_token_the_peer_does_not_matter(peer: str | None) -> None:
    assert decide(SECRET, [], peer, None) is Access.NO_CREDENTIALS
    assert decide(SECRET, ["10.0.0.0/8"], peer, f"Bearer {ADMIN}") is Access.ALLOWED
    assert decide(SECRET, [], peer, "Bearer nope") is Access.WRONG_CREDENTIALS


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Basic", "Basic !!!notbase64",
    "Basic " + base64.b64encode(b"no-colon").decode(), "Digest abc", "\x00",
])
def test_malformed_authorization_presents_no_token(header: str | None) -> None:
    assert presented_token(header) is None
    assert decide(SECRET, [], "127.0.0.1", header) is Access.NO_CREDENTIALS


def test_a_basic_password_that_is_not_utf8_is_compared_without_raising() -> None:
    header = "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()
    assert presented_token(header) == "\udcff"
    assert decide(SECRET, [], "127.0.0.1", header) is Access.WRONG_CREDENTIALS


def test_basic_password_may_contain_colons() -> None:
    header = basic("u", "a:b:c")
    assert presented_token(header) == "a:b:c"


def test_ipv6_zone_ids_are_understood() -> None:
    assert is_loopback_peer("::1%lo")
    assert not is_loopback_peer("fe80::1%eth0")


def _request(tmp_path: Path, peername: Any, **server: Any) -> web.Request:
    app = web.Application()
    app[CONFIG] = make_config(tmp_path, server=server)
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        peername if name == "peername" else default)
    return make_mocked_request("GET", TRACE, app=app, transport=transport)


def test_the_tcp_peer_decides_not_a_replaced_remote(tmp_path: Path) -> None:
    # A forwarded-headers middleware may clone the request with the client's claimed address.
    request = _request(tmp_path, ("198.51.100.7", 40000)).clone(remote="127.0.0.1")
    assert request.remote == "127.0.0.1"
    assert check_admin(request) is Access.NOT_LOCAL


def test_x_forwarded_for_is_ignored(tmp_path: Path) -> None:
    app = web.Application()
    app[CONFIG] = make_config(tmp_path)
    transport = mock.Mock()
    transport.get_extra_info.return_value = ("198.51.100.7", 40000)
    request = make_mocked_request("GET", TRACE, headers={"X-Forwarded-For": "127.0.0.1"},
                                  app=app, transport=transport)
    assert check_admin(request) is Access.NOT_LOCAL


def test_a_unix_socket_peer_is_not_proven_local(tmp_path: Path) -> None:
    assert check_admin(_request(tmp_path, "")) is Access.NOT_LOCAL


def test_require_admin_raises_401_with_challenge_or_403(tmp_path: Path) -> None:
    with pytest.raises(web.HTTPUnauthorized) as unauthorized:
        require_admin(_request(tmp_path, ("127.0.0.1", 1), admin_token=ADMIN))
    assert unauthorized.value.headers["WWW-Authenticate"] == REALM
    with pytest.raises(web.HTTPForbidden) as forbidden:
        require_admin(_request(tmp_path, ("198.51.100.7", 1)))
    assert "server.admin_token" in forbidden.value.text
    require_admin(_request(tmp_path, ("127.0.0.1", 1)))
