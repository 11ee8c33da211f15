"""What every ingest endpoint shares: bodies within limits, durable append, answers, client IP."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import ipaddress
import logging
import re
from collections.abc import Sequence
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from tracklayerd.errors import StoreUnavailable
from tracklayerd.secrets import Secrets, as_bytes
from tracklayerd.store.base import Store

log = logging.getLogger("tracklayerd.ingest")

RETRY_AFTER_SECS = "1"
_encode = msgspec.json.encode


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=_encode(payload), content_type="application/json", headers=headers
    )


class TooLarge(Exception):
    """The request is over a configured limit (413)."""


class UnreadableBody(Exception):
    """The body cannot be read as sent (e.g. a corrupt gzip stream): 400."""


def error_response(
    status: int, code: str, message: str, path: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The one error shape of every endpoint: `code` is what Segment's SDKs read, `error` the
    same value under the native API's name, `path` the JSON path of the problem when known."""
    payload: dict[str, Any] = {"success": False, "error": code, "code": code, "message": message}
    if path is not None:
        payload["path"] = path
    return json_response(status, payload, headers=headers)


async def read_body_or_answer(request: web.Request, max_bytes: int) -> bytes | web.Response:
    """The body, or the answer to give when it is over the limit (413) or unreadable (400)."""
    try:
        return await read_body(request, max_bytes)
    except TooLarge as exc:
        return error_response(413, "too_large", str(exc))
    except UnreadableBody as exc:
        return error_response(400, "invalid_request", str(exc))


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The body, refusing (TooLarge) anything over max_bytes.

    The application's client_max_size bounds what aiohttp buffers for a chunked body.
    """
    length = request.content_length  # parsed from the header at each access
    if length is not None and length > max_bytes:
        raise TooLarge(f"request body is {length} bytes; the limit is {max_bytes}")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge(f"request body is over the limit of {max_bytes} bytes") from None
    except RequestPayloadError as exc:
        raise UnreadableBody(f"cannot read the body: {str(exc).strip()}") from None
    if len(body) > max_bytes:
        raise TooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    return body


async def note_reject(store: Store, source_id: str, reason: str) -> None:
    """Count a refused input for its source; best effort (the sender is told either way)."""
    with contextlib.suppress(StoreUnavailable):
        await store.record_reject(source_id, reason)


def unavailable(exc: StoreUnavailable) -> web.Response:
    log.warning("ingest refused (503, sender will retry): %s", exc)
    return error_response(503, "unavailable", "retry later",
                          headers={"Retry-After": RETRY_AFTER_SECS})


class KeyRing:
    """Finds the source a presented key (token, write key) belongs to.

    Keys are looked up by their SHA-256 digest, so lookup time says nothing about the key.
    A key found that way is remembered as presented, so each request after the first with
    it costs one dict lookup (~0.1 µs instead of ~1 µs); only configured keys get there,
    so this holds at most one entry per key, and a miss still goes through the digest.
    A source without keys (the dev mirror) takes requests that match no other source.
    """

    def __init__(self, keys: dict[str, Secrets | None]) -> None:
        self._by_digest: dict[bytes, str] = {}
        self._seen: dict[str, str] = {}
        self._open: str | None = None
        for source_id, secrets in keys.items():
            if secrets is None:
                self._open = source_id
                continue
            for secret in secrets:
                self._by_digest[_digest(secret.reveal())] = source_id

    def source_for(self, presented: str | None) -> str | None:
        if presented:
            found = self._seen.get(presented)
            if found is not None:
                return found
            found = self._by_digest.get(_digest(presented))
            if found is not None:
                self._seen[presented] = found
                return found
        return self._open


def _digest(key: str) -> bytes:
    return hashlib.sha256(as_bytes(key)).digest()


def basic_username(request: web.Request) -> str | None:
    """The username of HTTP Basic auth (Segment: the write key, password empty)."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(as_bytes(encoded.strip()), validate=True).decode()
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(":")[0] or None


class ClientAddress:
    """The sender's IP: the peer, or X-Forwarded-For when the peer is a trusted proxy."""

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def __call__(self, request: web.Request) -> str | None:
        peer = request.remote
        if not self._trusted or peer is None or not self._is_trusted(peer):
            return peer
        forwarded = request.headers.get("X-Forwarded-For", "")
        # Walk from the right: the first address not of our own proxies is the client.
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop if _looks_like_ip(hop) else peer
        return hops[0] if hops and _looks_like_ip(hops[0]) else peer


def _looks_like_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


_AT_PATH = re.compile(r" - at `\$(.*)`$")


def validation_problem(exc: msgspec.MsgspecError, prefix: str = "$") -> tuple[str, str]:
    """(path, message) from a msgspec error, the path rooted at `prefix` (e.g. `$.events[3]`)."""
    message = str(exc)
    match = _AT_PATH.search(message)
    path = prefix
    if match:
        path = prefix + match.group(1)
        message = message[: match.start()]
    unknown = re.match(r"Object contains unknown field `(.+)`$", message)
    if unknown:
        return f"{path}.{unknown.group(1)}", "unknown field"
    missing = re.match(r"Object missing required field `(.+)`$", message)
    if missing:
        return f"{path}.{missing.group(1)}", "required field is missing"
    return path, message
