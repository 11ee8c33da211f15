"""Who may read the introspection pages under ``/-/`` (trace, status): the admin.

With ``server.admin_token`` set, a request must present it, as ``Authorization: Bearer
<token>`` or as the password of HTTP Basic auth (any user name, so a browser's login prompt
works). Without it, only a client on this machine may read them: the TCP peer is loopback
and no reverse proxy is configured. Behind a proxy every request comes from the proxy's
address, often loopback, so the peer says nothing about the client and only a token will do.
X-Forwarded-For is never consulted here: it is whatever the client wants it to be.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from tracklayerd.config import ServerConfig
from tracklayerd.ingest.common import error_response
from tracklayerd.secrets import Secret, as_bytes

REALM = 'Basic realm="tracklayerd"'


class Access(enum.Enum):
    ALLOWED = "allowed"
    NO_CREDENTIALS = "no_credentials"  # 401: token configured, none presented
    WRONG_CREDENTIALS = "wrong_credentials"  # 401: token configured, another presented
    NOT_LOCAL = "not_local"  # 403: no token configured and the client is not provably local


MESSAGES = {
    Access.NO_CREDENTIALS: "admin token required: send Authorization: Bearer <server.admin_token>"
                           " (or HTTP Basic auth with it as the password)",
    Access.WRONG_CREDENTIALS: "wrong admin token",
    Access.NOT_LOCAL: "the pages under /-/ answer only to clients on this machine unless "
                      "server.admin_token is set (and never without it behind trusted_proxies); "
                      "set server.admin_token to read them remotely",
}


def decide(
    admin_token: Secret | None, trusted_proxies: Sequence[str], peer: str | None,
    authorization: str | None,
) -> Access:
    """The access rule, pure. `peer` is the TCP peer's address (None: unknown or not TCP);
    `authorization` the Authorization header as sent."""
    if admin_token is not None:
        presented = presented_token(authorization)
        if presented is None:
            return Access.NO_CREDENTIALS
        return Access.ALLOWED if admin_token.matches(presented) else Access.WRONG_CREDENTIALS
    if not trusted_proxies and peer is not None and is_loopback_peer(peer):
        return Access.ALLOWED
    return Access.NOT_LOCAL


def presented_token(authorization: str | None) -> str | None:
    """The token in a Bearer header or the password of a Basic one; never raises."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return None
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(as_bytes(credentials), validate=True)
        except (binascii.Error, ValueError):
            return None
        user_and_password = decoded.decode("utf-8", "surrogateescape")
        if ":" not in user_and_password:
            return None
        return user_and_password.partition(":")[2]
    return None


def is_loopback_peer(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    # Python 3.11 does not count ::ffff:127.0.0.1 (a dual-stack socket's view) as loopback.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def tcp_peer(request: web.Request) -> str | None:
    """The TCP peer's address from the socket itself, not request.remote, which a
    forwarded-headers middleware may have replaced with a client-supplied value."""
    transport = request.transport
    if transport is None:
        return None
    peername: Any = transport.get_extra_info("peername")
    if isinstance(peername, tuple | list) and peername and isinstance(peername[0], str):
        return peername[0]
    return None  # a Unix socket or unknown: nothing proves the client is local


def server_config(request: web.Request) -> ServerConfig:
    from tracklayerd.app import CONFIG  # the app imports the web layer, not the reverse

    return request.config_dict[CONFIG].server


def check_admin(request: web.Request) -> Access:
    server = server_config(request)
    return decide(server.admin_token, server.trusted_proxies, tcp_peer(request),
                  request.headers.get("Authorization"))


def require_admin(request: web.Request) -> None:
    """Return if the request may read /-/ pages; else raise 401 (with a Basic challenge, so
    browsers prompt) or 403. The body is the service's JSON error shape."""
    access = check_admin(request)
    if access is Access.ALLOWED:
        return
    if access is Access.NOT_LOCAL:
        raise web.HTTPForbidden(text=MESSAGES[access], content_type="text/plain")
    raise web.HTTPUnauthorized(text=MESSAGES[access], content_type="text/plain",
                               headers={"WWW-Authenticate": REALM})


def denial(request: web.Request) -> web.Response | None:
    """None if the request may read /-/ pages, else the 401/403 answer to give."""
    access = check_admin(request)
    if access is Access.ALLOWED:
        return None
    if access is Access.NOT_LOCAL:
        return error_response(403, "forbidden", MESSAGES[access])
    return error_response(401, "unauthorized", MESSAGES[access],
                          headers={"WWW-Authenticate": REALM})


def admin_only(handler: Handler) -> Handler:
    """Wrap a /-/ handler: the admin check runs first and answers 401/403 itself, with its
    WWW-Authenticate header (which an HTTPException would lose in web.errors.guarded)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        denied = denial(request)
        if denied is not None:
            return denied
        return await handler(request)

    return guarded
