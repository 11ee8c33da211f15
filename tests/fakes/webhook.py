"""A fake webhook receiver: the operator's endpoint as docs/destinations/webhook.md tells them
to write it, verifying everything tracklayerd promises.

Run it on port 0 and point a ``webhook`` destination's ``endpoint`` at it::

    fake = FakeReceiver(secret="s3cret")
    server = await aiohttp_server(fake.app)
    endpoint = str(server.make_url("/hook"))

Any POST path is the endpoint. Every request must pass these checks, else it is answered
``401`` (signature) or ``400`` (anything else) and the problem is added to ``errors``:

- ``Content-Type: application/json`` and a body ``{"events": [<object>, ...]}`` (nothing else);
- ``Idempotency-Key`` is the first 32 hex digits of SHA-256 of the body;
- ``X-Tracklayerd-Timestamp`` is whole Unix seconds within ``tolerance_secs`` of ``now()``;
- with ``secret`` set, ``X-Tracklayerd-Signature`` is ``t=<that timestamp>,v1=<hex>`` where
  hex is HMAC-SHA256(secret, ``<timestamp>.<body>``), recomputed here with :mod:`hmac` alone
  (nothing from tracklayerd is imported, so the fake checks the code instead of echoing it);
- with ``required_headers`` set, each of those headers has exactly that value.

A request that passes is answered 200 ``{"received": n}`` and its events are recorded.

Scripting (each scripted answer is used by exactly one request, in order, after the checks):

- ``respond_next(status, body=b"", headers=None)``: answer this; records no events;
- ``results_next(statuses, status=200)``: answer the per-event results protocol, one entry
  per event: ``"ok"``, ``"retry"``, ``"rejected"`` or ``(status, reason)``; the events
  answered ``"ok"`` are recorded;
- ``reset_next()``: drop the connection without an answer;
- ``hang_next()``: never answer (until ``release()`` or the server stops);
- ``reject_event(event_id, reason)``: every (unscripted) request holding this event answers
  200 with per-event results rejecting it and accepting the others, which are recorded.

What it received: ``requests`` (every request: :class:`Received` path, headers, body),
``batches`` (the recorded events of each answered request, with its headers), ``events`` and
``event_ids`` (all recorded events, in order) and ``errors`` (failed checks).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

ResultSpec = str | tuple[str, str]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Batch:
    headers: dict[str, str]
    events: list[dict[str, Any]]


@dataclass(frozen=True)
class _Respond:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Results:
    statuses: list[ResultSpec]
    status: int


class _Hang:
    pass


class _Reset:
    pass


class CheckFailed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, header: str | None, timestamp: str | None, body: bytes) -> bool:
    """What a receiver does: parse ``t=...,v1=...`` and compare in constant time."""
    if not header or not timestamp:
        return False
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    if parts.get("t") != timestamp or "v1" not in parts:
        return False
    return hmac.compare_digest(parts["v1"], expected_signature(secret, timestamp, body))


class FakeReceiver:
    def __init__(
        self, *, secret: str | None = None, now: Callable[[], float] = time.time,
        tolerance_secs: float = 300.0, required_headers: dict[str, str] | None = None,
    ) -> None:
        self.secret = secret
        self.now = now
        self.tolerance_secs = tolerance_secs
        self.required_headers = dict(required_headers or {})
        self.requests: list[Received] = []
        self.batches: list[Batch] = []
        self.errors: list[str] = []
        self._script: deque[_Respond | _Results | _Hang | _Reset] = deque()
        self._rejected: dict[str, str] = {}
        self._released = asyncio.Event()
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

    def results_next(self, statuses: Sequence[ResultSpec], status: int = 200) -> None:
        self._script.append(_Results(list(statuses), status))

    def reset_next(self) -> None:
        self._script.append(_Reset())

    def hang_next(self) -> None:
        self._script.append(_Hang())

    def release(self) -> None:
        self._released.set()

    def reject_event(self, event_id: str, reason: str = "rejected by the fake receiver") -> None:
        self._rejected[event_id] = reason

    # --- what it received --------------------------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for batch in self.batches for event in batch.events]

    @property
    def event_ids(self) -> list[str]:
        return [event["event_id"] for event in self.events]

    # --- the endpoint ------------------------------------------------------------------------

    async def _on_shutdown(self, app: web.Application) -> None:
        self._released.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        self.requests.append(Received(request.path, headers, body))
        try:
            events = self._check(request, body)
        except CheckFailed as exc:
            self.errors.append(str(exc))
            return web.json_response({"error": str(exc)}, status=exc.status)
        if self._script:
            scripted = self._script.popleft()
            if isinstance(scripted, _Hang):
                await self._released.wait()
                return web.json_response({"error": "released"}, status=503)
            if isinstance(scripted, _Reset):
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("fake receiver dropped the connection")
            if isinstance(scripted, _Respond):
                return web.Response(status=scripted.status, body=scripted.body,
                                    headers=scripted.headers, content_type="application/json")
            return self._results(headers, events, scripted.statuses, scripted.status)
        if any(event.get("event_id") in self._rejected for event in events):
            specs: list[ResultSpec] = [
                ("rejected", self._rejected[event["event_id"]])
                if event.get("event_id") in self._rejected else "ok" for event in events
            ]
            return self._results(headers, events, specs, 200)
        self.batches.append(Batch(headers, events))
        return web.json_response({"received": len(events)})

    def _results(self, headers: dict[str, str], events: list[dict[str, Any]],
                 specs: Sequence[ResultSpec], status: int) -> web.Response:
        results: list[dict[str, str]] = []
        ok: list[dict[str, Any]] = []
        for index, spec in enumerate(specs):
            name, reason = (spec, None) if isinstance(spec, str) else spec
            results.append({"status": name} if reason is None
                           else {"status": name, "reason": reason})
            if name == "ok" and index < len(events):
                ok.append(events[index])
        if ok:
            self.batches.append(Batch(headers, ok))
        return web.json_response({"results": results}, status=status)

    def _check(self, request: web.Request, body: bytes) -> list[dict[str, Any]]:
        if request.content_type != "application/json":
            raise CheckFailed(400, f"content type is {request.content_type}")
        key = request.headers.get("Idempotency-Key")
        if key != hashlib.sha256(body).hexdigest()[:32]:
            raise CheckFailed(400, "Idempotency-Key is not the body's SHA-256 prefix")
        timestamp = request.headers.get("X-Tracklayerd-Timestamp")
        if timestamp is None or not timestamp.isdigit():
            raise CheckFailed(400, "X-Tracklayerd-Timestamp is missing or not Unix seconds")
        if abs(self.now() - int(timestamp)) > self.tolerance_secs:
            raise CheckFailed(401, "X-Tracklayerd-Timestamp is too old or in the future")
        if self.secret is not None and not verify_signature(
                self.secret, request.headers.get("X-Tracklayerd-Signature"), timestamp, body):
            raise CheckFailed(401, "X-Tracklayerd-Signature does not verify")
        for name, value in self.required_headers.items():
            if request.headers.get(name) != value:
                raise CheckFailed(401, f"header {name} is missing or wrong")
        try:
            decoded = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise CheckFailed(400, "the body is not JSON") from None
        if not isinstance(decoded, dict) or set(decoded) != {"events"}:
            raise CheckFailed(400, 'the body is not {"events": [...]}')
        events = decoded["events"]
        if not isinstance(events, list) or not events:
            raise CheckFailed(400, "events is not a non-empty list")
        if not all(isinstance(event, dict) and "event_id" in event for event in events):
            raise CheckFailed(400, "every event is an object with an event_id")
        return events
