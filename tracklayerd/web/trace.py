"""The per-event trace: `GET /-/events/{id}` and `GET /-/events?source=&event_id=`.

One document answers "what happened to this event": what arrived, what it became, every
pipeline decision, and each destination's payload and attempts with the platform's answers.
Personal data is redacted throughout (tracklayerd.web.redact); hashes are kept. The web
layer only reads: nothing here writes to the store, and nothing here logs event content.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from tracklayerd.ingest.common import error_response, json_response
from tracklayerd.store.base import QUEUED, AttemptRecord, DeliveryRecord, InboxRecord, Store
from tracklayerd.web.auth import admin_only
from tracklayerd.web.redact import IP, marker, redact, redact_text

# Event rows are SQLite integers: more digits than this cannot be one (and would overflow).
_ROW_ID = re.compile(r"\d{1,18}")
NOT_PROCESSED = "received"  # the event's status while the processor has not reached it
_HEADERS = {"Cache-Control": "no-store", "Vary": "Accept"}
# The HTML page is self-contained: no scripts, no external anything.
_HTML_HEADERS = {
    **_HEADERS,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def trace_handler(store: Store) -> Handler:
    """`GET /-/events/{id}`: the trace of the stored event with that row id (inbox seq)."""

    async def trace(request: web.Request) -> web.StreamResponse:
        fmt = _format(request)
        if isinstance(fmt, web.Response):
            return fmt
        raw_id = request.match_info["id"]
        if not _ROW_ID.fullmatch(raw_id):
            return error_response(400, "invalid_request",
                                  "the event id in /-/events/{id} is the event's row number "
                                  "(an integer); to find an event by its event_id use "
                                  "/-/events?source=SOURCE&event_id=EVENT_ID")
        document = await trace_document(store, int(raw_id))
        if document is None:
            return error_response(404, "not_found", f"no event {raw_id}")
        return _answer(fmt, document)

    return admin_only(trace)


def lookup_handler(store: Store) -> Handler:
    """`GET /-/events?source=S&event_id=E`: the trace of the event(s) with that event id; one
    document, or a list of them when the source has several events with that id."""

    async def lookup(request: web.Request) -> web.StreamResponse:
        fmt = _format(request)
        if isinstance(fmt, web.Response):
            return fmt
        source = request.query.get("source")
        event_id = request.query.get("event_id")
        if not source or not event_id:
            return error_response(400, "invalid_request",
                                  "give source and event_id: /-/events?source=S&event_id=E")
        documents = [
            document for stored in await store.events_for(source, [event_id])
            if (document := await trace_document(store, stored.id)) is not None
        ]
        if not documents:
            return error_response(404, "not_found", "no event with that source and event_id")
        return _answer(fmt, documents[0] if len(documents) == 1 else documents)

    return admin_only(lookup)


async def trace_document(store: Store, row: int) -> dict[str, Any] | None:
    """The trace of one event row, redacted; None when neither the event nor its inbox
    record exists (never received, or erased by `forget`)."""
    stored = await store.stored_event(row)
    inbox = await store.inbox_record(row)
    if stored is None and inbox is None:
        return None
    body: dict[str, Any] | None = None
    if stored is not None and stored.body is not None:
        decoded = _json(stored.body)
        body = decoded if isinstance(decoded, dict) else None
    received_at = iso(inbox.received_at) if inbox is not None else None
    if received_at is None and body is not None:
        received_at = body.get("received_at")
    if stored is not None:
        source, event_id, status = stored.source, stored.event_id, stored.status
        reason, name = stored.reason, stored.name
        deliveries = await store.delivery_records(row)
    else:
        assert inbox is not None
        source, event_id, status = inbox.source, inbox.message_id, NOT_PROCESSED
        reason, name, deliveries = None, None, []
    return {
        "event": {
            "id": row,
            "source": source,
            "event_id": _text(event_id),
            "status": status,
            "reason": _text(reason),
            "received_at": received_at,
            "name": name,
        },
        "input": _input(inbox),
        "canonical": redact(body) if body is not None else None,
        "decisions": _decisions(status, reason, body),
        "deliveries": [_delivery(record) for record in deliveries],
    }


def _input(inbox: InboxRecord | None) -> dict[str, Any] | None:
    if inbox is None:
        return None  # erased, or pruned by retention
    payload = _json(inbox.payload)
    return {
        "kind": inbox.kind,
        "message_id": _text(inbox.message_id),
        "received_at": iso(inbox.received_at),
        "request_ip": None if inbox.request_ip is None else marker(IP),
        "payload": redact(payload) if payload is not _NOT_JSON
        else redact_text(inbox.payload.decode("utf-8", "replace")),
    }


def _decisions(status: str, reason: str | None, body: dict[str, Any] | None) -> dict[str, Any]:
    outcome = {"status": status, "reason": _text(reason)}
    if body is None:
        return {"outcome": outcome}
    name = body.get("event")
    original = body.get("original_name")
    explicit = bool(body.get("explicit_event_id"))
    event_id = body.get("event_id")
    if explicit:
        origin = "explicit"  # the sender set it, e.g. to match a browser pixel's eventID
    elif isinstance(event_id, str) and event_id.startswith("h-"):
        origin = "derived"  # hashed from the event's bytes: the sender gave none
    else:
        origin = "message_id"  # the transport id (Segment messageId)
    user = body.get("user")
    return {
        "outcome": outcome,
        "mapping": {"original_name": original, "event": name,
                    "renamed": original is not None and original != name},
        "contract": {"violations": _list(body.get("violations")),
                     "warnings": redact(_list(body.get("warnings")))},
        "event_id": {"event_id": _text(event_id), "origin": origin,
                     "message_id": _text(body.get("message_id"))},
        "identity": {
            # Which identifiers the event carried (values are redacted in `canonical`).
            "present": sorted(user) if isinstance(user, dict) else [],
            "enriched": [
                {"field": e.get("field"), "from_event": e.get("from_event"),
                 "seen_at": e.get("seen_at")}
                for e in _list(body.get("enriched")) if isinstance(e, dict)
            ],
        },
    }


def _delivery(record: DeliveryRecord) -> dict[str, Any]:
    payload: Any = None
    if record.payload is not None:
        decoded = _json(record.payload)
        payload = (redact(decoded) if decoded is not _NOT_JSON
                   else redact_text(record.payload.decode("utf-8", "replace")))
    return {
        "destination": record.destination,
        "status": record.status,
        "attempt_count": record.attempts,
        "next_attempt_at": iso(record.next_attempt_at) if record.status in QUEUED else None,
        "reason": _text(record.reason),
        "created_at": iso(record.created_at),
        "finished_at": iso(record.finished_at),
        "match_quality": record.match_quality,
        "match_missing": record.match_missing,
        "warnings": [redact_text(w) for w in record.warnings],
        # Outcome, rule, reason and region of the consent decision (no personal data).
        "consent": _consent(record.consent),
        "payload": payload,
        "attempts": [_attempt(a) for a in record.history],
    }


def _attempt(attempt: AttemptRecord) -> dict[str, Any]:
    response: Any = attempt.response
    if response is not None:
        # The platform's answer as it came, parsed when it is JSON; a receiver that echoes
        # the event back must not put personal data on this page either.
        decoded = _json(response.encode("utf-8", "surrogateescape"))
        response = redact(decoded) if decoded is not _NOT_JSON else redact_text(response)
    return {
        "at": iso(attempt.at),
        "outcome": attempt.outcome,
        "reason": _text(attempt.reason),
        "request": attempt.request,
        "http_status": attempt.http_status,
        "duration_ms": attempt.duration_ms,
        "response": response,
        "error": _text(attempt.error),
    }


_NOT_JSON = object()


def _consent(raw: bytes | None) -> Any:
    decoded = None if raw is None else _json(raw)
    return None if decoded is _NOT_JSON else decoded


def _json(data: bytes) -> Any:
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return _NOT_JSON


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    """Ids and reasons as shown: a sender may have used an email address as an event id."""
    return None if value is None else redact_text(str(value))


def iso(seconds: float | None) -> str | None:
    """Unix seconds as the introspection pages show them: UTC, milliseconds, "Z"."""
    if seconds is None:
        return None
    try:
        moment = datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- answers ----------------------------------------------------------------------------------


def _format(request: web.Request) -> str | web.Response:
    """"json" or "html": `?format=` wins; else HTML only for a client that asks for it first
    (a browser), so curl and scripts get JSON without asking."""
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt in ("json", "html"):
            return fmt
        return error_response(400, "invalid_request", "format is json or html")
    first = request.headers.get("Accept", "").split(",", 1)[0].split(";", 1)[0]
    return "html" if first.strip().lower() == "text/html" else "json"


def _answer(fmt: str, document: dict[str, Any] | list[dict[str, Any]]) -> web.Response:
    if fmt == "json":
        return json_response(200, document, headers=_HEADERS)
    return web.Response(text=render_html(document), content_type="text/html",
                        charset="utf-8", headers=_HTML_HEADERS)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.2em 0}th,td{border:1px solid #ddd;padding:.2em .5em;
vertical-align:top;text-align:left}th{background:#f6f6f6;font-weight:600;white-space:nowrap}
td{font-family:ui-monospace,monospace;word-break:break-all}ol{margin:0;padding-left:1.5em}
.none{color:#999}
""".strip()


def render_html(document: dict[str, Any] | list[dict[str, Any]]) -> str:
    """A self-contained page of the same data: inline CSS, no scripts, everything escaped."""
    documents = document if isinstance(document, list) else [document]
    parts: list[str] = []
    for doc in documents:
        event = doc.get("event") or {}
        parts.append(f"<h1>Event {_esc(event.get('id'))}: {_esc(event.get('name') or '')}"
                     f" ({_esc(event.get('status'))})</h1>")
        for key, value in doc.items():
            parts.append(f"<section><h2>{_esc(key)}</h2>{_html(value)}</section>")
    title = "tracklayerd: event trace"
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"robots\" content=\"noindex\">"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        + "".join(parts) + "</body></html>\n"
    )


def _html(value: Any) -> str:
    if isinstance(value, dict):
        if not value:
            return '<span class="none">(none)</span>'
        rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_html(v)}</td></tr>"
                       for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if not value:
            return '<span class="none">(none)</span>'
        return "<ol>" + "".join(f"<li>{_html(v)}</li>" for v in value) + "</ol>"
    if value is None:
        return '<span class="none">-</span>'
    if isinstance(value, bool):
        return "true" if value else "false"
    return _esc(value)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
