"""Pieces of the destination contract suite (test_contract.py) that do not depend on a type:
canonical events to encode, the face every platform fake shows, and checks on JSON and secrets.

Kept apart from the suite so a plugin's own tests can import them (docs/specs/destination.md,
"The contract test suite").
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec
from aiohttp import web
from hypothesis import strategies as st

from tracklayerd.events import Consent, Context, Event, Identity, Item
from tracklayerd.secrets import Secret

# Real time, a minute ago: the fakes check event ages and request timestamps with their own
# clocks, as the platforms do, so the events must be recent when the suite runs.
WHEN = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


# --- the fakes -----------------------------------------------------------------------------


class RecordedRequest(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def body(self) -> bytes: ...


class PlatformFake(Protocol):
    """What the suite needs of a platform fake (tests/fakes/meta.py and webhook.py have it).

    Unscripted, it accepts every valid request with a 2xx the destination reads as delivered.
    """

    app: web.Application

    @property
    def requests(self) -> Sequence[RecordedRequest]:
        """Every request received, answered or not."""

    @property
    def event_ids(self) -> list[str]:
        """The event ids of the events it accepted, in order."""

    def respond_next(self, status: int, body: bytes | str | dict[str, Any] = b"",
                     headers: dict[str, str] | None = None) -> None:
        """Answer the next request with this, whatever it holds."""

    def reset_next(self) -> None:
        """Drop the next request's connection without an answer."""


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class GenericPlatform:
    """A plain JSON API, for a platform without a fake of its own: any POST whose body is
    JSON and which carries ``required_headers`` is answered 200 ``{"ok": true}``; otherwise
    400 or 401. ``event_ids(body)`` reads the event ids out of an accepted body."""

    def __init__(self, *, event_ids: Callable[[Any], list[str]],
                 required_headers: Mapping[str, str] | None = None) -> None:
        self._ids_of = event_ids
        self.required_headers = dict(required_headers or {})
        self.requests: list[Received] = []
        self.accepted: list[Any] = []
        self._script: deque[tuple[int, bytes, dict[str, str]] | None] = deque()
        self.app = web.Application()
        self.app.router.add_post("/{path:.*}", self._handle)

    @property
    def event_ids(self) -> list[str]:
        return [event_id for body in self.accepted for event_id in self._ids_of(body)]

    def respond_next(self, status: int, body: bytes | str | dict[str, Any] = b"",
                     headers: dict[str, str] | None = None) -> None:
        raw = msgspec.json.encode(body) if isinstance(body, dict) else (
            body.encode() if isinstance(body, str) else body)
        self._script.append((status, raw, dict(headers or {})))

    def reset_next(self) -> None:
        self._script.append(None)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Received(request.path, dict(request.headers), body))
        for name, value in self.required_headers.items():
            if request.headers.get(name) != value:
                return web.json_response({"error": f"{name} missing or wrong"}, status=401)
        try:
            decoded = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if self._script:
            scripted = self._script.popleft()
            if scripted is None:
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("generic platform dropped the connection")
            status, raw, headers = scripted
            return web.Response(status=status, body=raw, headers=headers)
        self.accepted.append(decoded)
        return web.json_response({"ok": True})


def header(request: RecordedRequest, name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in request.headers.items() if key.lower() == wanted),
                None)


# --- canonical events ----------------------------------------------------------------------


def purchase_full(event_id: str = "contract-purchase-full") -> Event:
    """What every platform must take as is: the event a shop's thank-you page sends."""
    return Event(
        event="purchase", event_id=event_id, timestamp=WHEN, received_at=WHEN, source="web",
        user=Identity(
            email="Ada.Lovelace@Example.com", phone="+1 415 555 0100", first_name="Ada",
            last_name="Lovelace", city="San Francisco", state="CA", zip="94105",
            country="US", external_id="cust-42", fbc="fb.1.1700000000000.AbCdEf",
            fbp="fb.1.1700000000000.123456789", gclid="Cj0KCQ-test", ttclid="tt-test",
        ),
        order_id="1001", value=129.9, currency="USD",
        items=[Item(id="sku-1", name="Kettle", price=64.95, quantity=2.0, category="kitchen"),
               Item(id="sku-2", price=0.0, quantity=1.0)],
        consent=Consent(categories={"marketing": True}, region="US-NY"),
        context=Context(ip="203.0.113.7", user_agent="Mozilla/5.0 (X11; Linux x86_64)",
                        page_url="https://shop.example.com/thank-you",
                        referrer="https://www.example.org/", locale="en-US"),
        properties={"coupon": "WINTER"}, message_id=event_id, explicit_event_id=True,
    )


def _event(event_id: str, event: str = "purchase", **fields: Any) -> Event:
    fields.setdefault("timestamp", WHEN)
    return Event(event=event, event_id=event_id, received_at=WHEN, source="web", **fields)


def varied_events() -> dict[str, Event]:
    """Events a destination meets in real traffic; encode may refuse any, never raise on one."""
    hashed_email = hashlib.sha256(b"ada@example.com").hexdigest()
    browser = Context(ip="2001:db8::1", user_agent="Mozilla/5.0",
                      page_url="https://shop.example.com/")
    return {
        "purchase_full": purchase_full(),
        "purchase_minimal": _event("c-min", user=Identity(anonymous_id="anon-1")),
        "lead_phone_only": _event("c-lead", "lead", user=Identity(phone="(415) 555-0100")),
        "page_view": _event("c-page", "page_view", message_type="page",
                            user=Identity(anonymous_id="anon-2", fbp="fb.1.1.2"),
                            context=browser),
        "identify": _event("c-identify", "identify", message_type="identify",
                           user=Identity(user_id="u-1", email="ada@example.com",
                                         first_name="Ada"), context=browser),
        "non_ascii": _event(
            "c-ünï-💳", "Bestellung abgeschlossen ✓ 購入",
            user=Identity(email="zoë@exämple.de", first_name="Zoë", last_name="Ørsted",
                          street="Straße 1", city="Zürich", state="Zürich", country="Schweiz",
                          phone="044 668 18 00", gender="weiblich"),
            value=12.5, currency="CHF", context=browser, properties={"basket": "🛒"}),
        "items_odd": _event(
            "c-items", value=-3.0, currency="EUR", user=Identity(email="ada@example.com"),
            items=[Item(), Item(id="a", quantity=1.5, price=-1.0), Item(name="no id")],
            context=browser),
        "items_none": _event("c-noitems", "add_to_cart", user=Identity(email="a@b.example"),
                             value=0.0, currency="JPY", context=browser),
        "currency_weird": _event("c-cur", value=1e12, currency=" €uro ",
                                 user=Identity(email="ada@example.com"), context=browser),
        "currency_lowercase": _event("c-cur2", value=5.0, currency="usd ",
                                     user=Identity(email="ada@example.com"), context=browser),
        "prehashed": _event("c-hash", user=Identity(email=hashed_email, phone=hashed_email),
                            value=1.0, currency="USD", context=browser),
        "junk_identity": _event(
            "c-junk", "sign_up",
            user=Identity(email="not an email", phone="call me", date_of_birth="yesterday",
                          zip="?", country="Atlantis", gender="?"),
            context=Context(ip="not-an-ip", user_agent="", page_url="javascript:alert(1)")),
        "ancient": _event("c-old", timestamp=datetime(2001, 1, 1, tzinfo=UTC), value=1.0,
                          currency="USD", user=Identity(email="ada@example.com"),
                          context=browser),
        "refund": _event("c-refund", "refund", order_id="1001", value=-129.9, currency="USD",
                         user=Identity(email="ada@example.com"), context=browser),
    }


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


_short = st.text(min_size=1, max_size=40)

generated_events: st.SearchStrategy[Event] = st.builds(
    Event,
    event=st.sampled_from(["purchase", "lead", "page_view", "sign_up", "refund"]) | _short,
    event_id=st.text(min_size=1, max_size=64),
    timestamp=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1),
                           timezones=st.just(UTC)),
    received_at=st.just(WHEN),
    source=st.just("web"),
    message_type=st.sampled_from(["track", "identify", "page", "screen", "group", "alias"]),
    user=st.builds(
        Identity, email=_optional(_short), phone=_optional(_short),
        first_name=_optional(_short), country=_optional(_short), state=_optional(_short),
        date_of_birth=_optional(_short), external_id=_optional(_short), fbc=_optional(_short),
    ),
    order_id=_optional(_short),
    value=_optional(st.floats(allow_nan=False, allow_infinity=False)),
    currency=_optional(st.text(max_size=16)),
    items=st.lists(st.builds(Item, id=_optional(_short),
                             price=_optional(st.floats(allow_nan=False, allow_infinity=False)),
                             quantity=_optional(st.floats(allow_nan=False,
                                                          allow_infinity=False))),
                   max_size=3),
    context=st.builds(Context, ip=_optional(_short), user_agent=_optional(_short),
                      page_url=_optional(_short)),
)


# --- checks --------------------------------------------------------------------------------


def secret_values(value: Any) -> Iterator[str]:
    """Every secret's value in a config, however deeply nested (lists, tables of secrets)."""
    if isinstance(value, Secret):
        yield value.reveal()
    elif isinstance(value, msgspec.Struct):
        for field in msgspec.structs.fields(value):
            yield from secret_values(getattr(value, field.name))
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from secret_values(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from secret_values(item)


def holds_list(document: Any, elements: Sequence[Any]) -> bool:
    """True when some JSON array in the document is exactly these elements, in order."""
    if isinstance(document, list):
        if document == list(elements):
            return True
        return any(holds_list(item, elements) for item in document)
    if isinstance(document, dict):
        return any(holds_list(item, elements) for item in document.values())
    return False


def holds_value(document: Any, wanted: str) -> bool:
    """True when the string appears as a value (not a key) anywhere in the document."""
    if isinstance(document, str):
        return document == wanted
    if isinstance(document, list):
        return any(holds_value(item, wanted) for item in document)
    if isinstance(document, dict):
        return any(holds_value(item, wanted) for item in document.values())
    return False
