"""A fake Meta Graph API: the Conversions API endpoint, strict the way Meta documents it.

Run it on port 0 and point a destination's ``endpoint`` at it::

    fake = FakeMeta(access_token="token", now=lambda: NOW)
    server = await aiohttp_server(fake.app)
    endpoint = str(server.make_url("/v24.0/1234567890/events"))

Any POST path ending in ``/events`` is the endpoint. What it checks (reference/destinations.md
§1); like Meta, one invalid event fails the whole request with HTTP 400 and the Graph error
envelope ``{"error": {message, type, code, error_subcode, is_transient, error_user_title,
error_user_msg, fbtrace_id}}``:

- ``access_token`` query parameter equals the fake's token (else code 190); with ``app_secret``
  set, ``appsecret_proof`` is its HMAC-SHA256 of the token (else code 100);
- a JSON object body with only Meta's top-level keys, ``data`` a list of 1..1,000 events;
- each event: only Meta's server-event keys; ``event_name`` a non-empty string;
  ``event_time`` whole Unix seconds, not older than 7 days (62 for ``physical_store``:
  100/2804003) and at most ``max_future_secs`` ahead (so milliseconds fail); ``action_source``
  one of Meta's values; ``user_data`` an object of Meta's keys only, hashed keys as SHA-256
  lowercase hex (a Parameter Builder suffix is allowed), clear keys (fbc, fbp, IP, user agent)
  never hashed, the IP an IP; not only a baseline-invalid combination; website events with
  ``client_user_agent`` and ``event_source_url``; ``Purchase`` with ``custom_data.value`` and
  ``currency`` (100/2804009); LDU options well-formed.

Success answers 200 ``{"events_received": n, "messages": [], "fbtrace_id": "..."}``.

Scripting (each scripted answer is used by exactly one request, in order, before validation):

- ``respond_next(status, body, headers=None)``: answer with these bytes/JSON;
- ``fail_next(code, subcode=None, *, status=400, message=..., is_transient=False,
  retry_after=None)``: answer with a Graph error (``retry_after`` sets ``Retry-After``);
- ``hang_next()``: never answer (until ``release()`` or the server stops), so the client times out;
- ``reset_next()``: drop the connection without an answer;
- ``fail_when_event_id(event_id, code=100, subcode=None, message=...)``: every request whose
  batch contains this event id fails as a whole, as Meta does for one bad event.

What it received:

- ``requests``: every request, answered or not (:class:`RawRequest`: method, path, query,
  headers, body bytes);
- ``accepted``: the requests answered 200 (:class:`AcceptedRequest`: query and decoded body);
- ``events`` / ``event_ids``: the events of accepted requests, in order;
- ``accepted_any``: an asyncio.Event set at each accepted request (clear it, then wait).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

ACTION_SOURCES = frozenset({
    "email", "website", "app", "phone_call", "chat", "physical_store", "system_generated",
    "business_messaging", "other",
})
TOP_LEVEL_KEYS = frozenset({
    "data", "test_event_code", "namespace_id", "upload_id", "upload_tag", "upload_source",
    "partner_agent",
})
EVENT_KEYS = frozenset({
    "event_name", "event_time", "user_data", "custom_data", "event_source_url", "opt_out",
    "event_id", "action_source", "data_processing_options", "data_processing_options_country",
    "data_processing_options_state", "app_data", "original_event_data", "attribution_data",
    "messaging_channel", "referrer_url", "advanced_measurement_table",
})
HASHED_KEYS = frozenset({"em", "ph", "fn", "ln", "ct", "st", "zp", "country", "db", "ge",
                         "external_id"})
CLEAR_KEYS = frozenset({
    "client_ip_address", "client_user_agent", "fbc", "fbp", "subscription_id", "fb_login_id",
    "lead_id", "anon_id", "madid", "page_id", "page_scoped_user_id", "ctwa_clid",
    "ig_account_id", "ig_sid",
})
BASELINE_INVALID = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)
_SHA256 = re.compile(r"[0-9a-f]{64}(\.[A-Za-z0-9]{2,8})?")
_LOOKS_HASHED = re.compile(r"[0-9a-fA-F]{64}")
DAY = 86400


class GraphError(Exception):
    def __init__(self, message: str, code: int = 100, subcode: int | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.subcode = message, code, subcode


@dataclass(frozen=True)
class RawRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class AcceptedRequest:
    query: dict[str, str]
    body: dict[str, Any]

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.body["data"]
        return events


@dataclass(frozen=True)
class _Respond:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class _Hang:
    pass


class _Reset:
    pass


def graph_error_body(code: int, subcode: int | None = None, message: str = "Invalid parameter",
                     *, is_transient: bool = False, user_msg: str | None = None) -> bytes:
    error: dict[str, Any] = {
        "message": message, "type": "OAuthException", "code": code,
        "is_transient": is_transient, "fbtrace_id": _trace_id(),
    }
    if subcode is not None:
        error["error_subcode"] = subcode
        error["error_user_title"] = message
        error["error_user_msg"] = user_msg or f"{message} (fake Meta)"
    return msgspec.json.encode({"error": error})


def _trace_id() -> str:
    return "A" + secrets.token_urlsafe(15)


class FakeMeta:
    def __init__(
        self, *, access_token: str = "fake-meta-token", app_secret: str | None = None,
        now: Callable[[], float] = time.time, max_future_secs: float = 300,
    ) -> None:
        self.access_token = access_token
        self.app_secret = app_secret
        self.now = now
        self.max_future_secs = max_future_secs
        self.requests: list[RawRequest] = []
        self.accepted: list[AcceptedRequest] = []
        self._script: deque[_Respond | _Hang | _Reset] = deque()
        self._bad_ids: dict[str, GraphError] = {}
        self._released = asyncio.Event()
        # Set at each accepted request: tests wait on it instead of polling.
        self.accepted_any = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/{path:.*}", self._handle)
        self.app.on_shutdown.append(self._on_shutdown)

    # --- scripting ---------------------------------------------------------------------------

    def respond_next(self, status: int, body: bytes | str | dict[str, Any] = b"",
                     headers: dict[str, str] | None = None) -> None:
        if isinstance(body, dict):
            body = msgspec.json.encode(body)
        elif isinstance(body, str):
            body = body.encode()
        self._script.append(_Respond(status, body, dict(headers or {})))

    def fail_next(self, code: int, subcode: int | None = None, *, status: int = 400,
                  message: str = "Invalid parameter", is_transient: bool = False,
                  retry_after: float | None = None) -> None:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        self._script.append(_Respond(
            status, graph_error_body(code, subcode, message, is_transient=is_transient), headers))

    def hang_next(self) -> None:
        self._script.append(_Hang())

    def reset_next(self) -> None:
        self._script.append(_Reset())

    def release(self) -> None:
        """Let hanging requests finish (with an error the client no longer waits for)."""
        self._released.set()

    def fail_when_event_id(self, event_id: str, code: int = 100, subcode: int | None = None,
                           message: str = "Invalid parameter") -> None:
        self._bad_ids[event_id] = GraphError(message, code, subcode)

    # --- what it received --------------------------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for request in self.accepted for event in request.events]

    @property
    def event_ids(self) -> list[str]:
        """The event_id of each accepted event ("" for an event sent without one)."""
        return [str(event.get("event_id", "")) for event in self.events]

    # --- the endpoint ------------------------------------------------------------------------

    async def _on_shutdown(self, app: web.Application) -> None:
        self._released.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        query = dict(request.query)
        self.requests.append(RawRequest(request.method, request.path, query,
                                        dict(request.headers), body))
        if self._script:
            scripted = self._script.popleft()
            if isinstance(scripted, _Hang):
                await self._released.wait()
                return _error_response(GraphError("released", 2))
            if isinstance(scripted, _Reset):
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("fake Meta dropped the connection")
            return web.Response(status=scripted.status, body=scripted.body,
                                headers=scripted.headers, content_type="application/json")
        try:
            decoded = self._validate(request, query, body)
        except GraphError as exc:
            return _error_response(exc)
        self.accepted.append(AcceptedRequest(query, decoded))
        self.accepted_any.set()
        return web.json_response({"events_received": len(decoded["data"]), "messages": [],
                                  "fbtrace_id": _trace_id()})

    def _validate(self, request: web.Request, query: dict[str, str], body: bytes
                  ) -> dict[str, Any]:
        if not request.path.endswith("/events"):
            raise GraphError("Unknown path components", 2500)
        token = query.get("access_token")
        if token != self.access_token:
            raise GraphError("Invalid OAuth access token - Cannot parse access token", 190)
        if self.app_secret is not None:
            proof = hmac.new(self.app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
            if query.get("appsecret_proof") != proof:
                raise GraphError("Invalid appsecret_proof provided in the API argument")
        if request.content_type != "application/json":
            raise GraphError(f"(#100) unsupported content type {request.content_type}")
        try:
            decoded = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise GraphError("(#100) the body is not JSON") from None
        if not isinstance(decoded, dict):
            raise GraphError("(#100) the body is not a JSON object")
        if unknown := sorted(set(decoded) - TOP_LEVEL_KEYS):
            raise GraphError(f"(#100) unknown parameters: {', '.join(unknown)}")
        data = decoded.get("data")
        if not isinstance(data, list) or not data:
            raise GraphError("(#100) The parameter data is required")
        if len(data) > 1000:
            raise GraphError("(#100) data cannot contain more than 1000 events")
        for index, event in enumerate(data):
            self._validate_event(index, event)
        for event in data:
            bad = self._bad_ids.get(event.get("event_id"))
            if bad is not None:
                raise bad
        return decoded

    def _validate_event(self, index: int, event: Any) -> None:
        where = f"data[{index}]"
        if not isinstance(event, dict):
            raise GraphError(f"(#100) {where} is not an object")
        if unknown := sorted(set(event) - EVENT_KEYS):
            raise GraphError(f"(#100) {where}: unknown parameters: {', '.join(unknown)}")
        name = event.get("event_name")
        if not isinstance(name, str) or not name:
            raise GraphError(f"(#100) {where}: event_name is required")
        source = event.get("action_source")
        if source not in ACTION_SOURCES:
            raise GraphError(f"(#100) {where}: action_source must be one of Meta's values")
        self._validate_time(where, event.get("event_time"), source)
        user_data = event.get("user_data")
        if not isinstance(user_data, dict):
            raise GraphError(f"(#100) {where}: user_data is required")
        _validate_user_data(where, user_data)
        if source == "website" and not (user_data.get("client_user_agent")
                                        and event.get("event_source_url")):
            raise GraphError(f"(#100) {where}: website events require client_user_agent and "
                             "event_source_url")
        custom = event.get("custom_data", {})
        if not isinstance(custom, dict):
            raise GraphError(f"(#100) {where}: custom_data is not an object")
        if "value" in custom and (not isinstance(custom["value"], int | float)
                                  or isinstance(custom["value"], bool)):
            raise GraphError(f"(#100) {where}: custom_data.value is not a number")
        currency = custom.get("currency")
        if currency is not None and not (isinstance(currency, str)
                                         and re.fullmatch(r"[A-Za-z]{3}", currency)):
            raise GraphError(f"(#100) {where}: custom_data.currency is not a currency code")
        if name == "Purchase" and ("value" not in custom or currency is None):
            raise GraphError("Missing Value for Purchase Event", 100, 2804009)
        _validate_ldu(where, event)

    def _validate_time(self, where: str, event_time: Any, source: str) -> None:
        if not isinstance(event_time, int) or isinstance(event_time, bool):
            raise GraphError(f"(#100) {where}: event_time must be an integer (Unix seconds)")
        now = self.now()
        if event_time > now + self.max_future_secs:
            # Milliseconds land here too: they read as a time far in the future.
            raise GraphError(f"(#100) {where}: event_time is in the future")
        max_age = (62 if source == "physical_store" else 7) * DAY
        if event_time < now - max_age:
            raise GraphError("Event Timestamp Too Old", 100, 2804003)


def _validate_user_data(where: str, user_data: dict[str, Any]) -> None:
    if unknown := sorted(set(user_data) - HASHED_KEYS - CLEAR_KEYS):
        raise GraphError(f"(#100) {where}: unknown user_data parameters: {', '.join(unknown)}")
    for key, value in user_data.items():
        values = value if isinstance(value, list) and key in HASHED_KEYS else [value]
        for item in values:
            if not isinstance(item, str) or not item:
                raise GraphError(f"(#100) {where}: user_data.{key} must be a non-empty string")
            if key in HASHED_KEYS and not _SHA256.fullmatch(item):
                raise GraphError(f"(#100) {where}: user_data.{key} must be hashed with SHA-256")
            if key in CLEAR_KEYS and _LOOKS_HASHED.fullmatch(item):
                raise GraphError(f"(#100) {where}: user_data.{key} must not be hashed")
    if "client_ip_address" in user_data:
        try:
            ipaddress.ip_address(user_data["client_ip_address"])
        except ValueError:
            raise GraphError(f"(#100) {where}: client_ip_address is not an IP address") from None
    present = frozenset(user_data)
    if any(present <= combination for combination in BASELINE_INVALID):
        raise GraphError(f"(#100) {where}: the customer information parameters are not enough "
                         "to match (baseline-invalid combination)")


def _validate_ldu(where: str, event: dict[str, Any]) -> None:
    options = event.get("data_processing_options")
    if options is None:
        return
    if not isinstance(options, list) or any(option != "LDU" for option in options):
        raise GraphError(f"(#100) {where}: data_processing_options must be [] or [\"LDU\"]")
    country = event.get("data_processing_options_country")
    state = event.get("data_processing_options_state")
    if options and country not in (0, 1):
        raise GraphError(f"(#100) {where}: data_processing_options_country must be 0 or 1")
    if country is not None and not (state == 0 or (isinstance(state, int)
                                                   and 1000 <= state <= 1013)):
        raise GraphError(f"(#100) {where}: data_processing_options_state is required with a "
                         "country (0 or 1000-1013)")


def _error_response(error: GraphError) -> web.Response:
    return web.Response(status=400, content_type="application/json",
                        body=graph_error_body(error.code, error.subcode, error.message))
