"""Meta Conversions API destination (``type = "meta_capi"``); docs/destinations/meta_capi.md.

Facts (endpoint, fields, limits, errors) are in reference/destinations.md §1. Identity fields
are normalized and hashed by :func:`tracklayerd.pipeline.normalize.prepare_identity`; this
module only places them. Errors are classified by the table in :mod:`.meta_errors`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlencode

import msgspec
from msgspec import Meta

from tracklayerd.config import DestinationConfig
from tracklayerd.destinations.base import (
    Delivered,
    Encoded,
    Environment,
    HttpClient,
    Limits,
    Outcome,
    Request,
    RetryLater,
    outcome_for_status,
    same_outcome,
)
from tracklayerd.destinations.meta_errors import outcome_for_error, parse_error
from tracklayerd.errors import DestinationError
from tracklayerd.events import Event
from tracklayerd.pipeline.click_ids import canonical_ip
from tracklayerd.pipeline.consent import ConsentDecision
from tracklayerd.pipeline.contracts import ISO_4217
from tracklayerd.pipeline.normalize import (
    Hints,
    State,
    normalize_state,
    prepare_identity,
    region_of,
)
from tracklayerd.secrets import Secret

if TYPE_CHECKING:
    from tracklayerd.destinations.registry import Registry

ActionSource = Literal[
    "email", "website", "app", "phone_call", "chat", "physical_store", "system_generated",
    "business_messaging", "other",
]

# Canonical event → Meta event name (reference §11). Meta has no refund event: "Refund" is custom.
EVENT_NAMES: dict[str, str] = {
    "purchase": "Purchase", "add_to_cart": "AddToCart", "begin_checkout": "InitiateCheckout",
    "view_item": "ViewContent", "add_payment_info": "AddPaymentInfo", "lead": "Lead",
    "sign_up": "CompleteRegistration", "subscribe": "Subscribe", "start_trial": "StartTrial",
    "search": "Search", "page_view": "PageView", "contact": "Contact",
    "add_to_wishlist": "AddToWishlist", "refund": "Refund",
}

# Meta's standard events (reference §1.5); any other name is a custom event to Meta.
STANDARD_EVENTS = frozenset({
    "AddPaymentInfo", "AddToCart", "AddToWishlist", "CompleteRegistration", "Contact",
    "CustomizeProduct", "Donate", "FindLocation", "InitiateCheckout", "Lead", "Purchase",
    "Schedule", "Search", "StartTrial", "SubmitApplication", "Subscribe", "ViewContent",
    "PageView",
})

# data_processing_options_state codes (reference §1.8, Data Processing Options page).
LDU_STATE_CODES: dict[str, int] = {
    "CA": 1000, "CO": 1001, "CT": 1002, "FL": 1003, "OR": 1004, "TX": 1005, "MT": 1006,
    "DE": 1007, "NE": 1008, "NH": 1009, "NJ": 1010, "MN": 1011, "MD": 1012, "RI": 1013,
}

# Customer information that Meta rejects when it is all an event carries, or any subset of one
# of these (reference §1.3, "baseline matching rule", Graph API v13+).
BASELINE_INVALID: tuple[frozenset[str], ...] = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)

# Messages that are not conversions; Meta has nothing to take them as.
NOT_CONVERSIONS = frozenset({"identify", "group", "alias"})

DEFAULT_URL = "https://graph.facebook.com/{api_version}/{pixel_id}/events"
MAX_EVENTS = 1000
DAY = 86400.0
# The scheduler checks an event's age before the request leaves and Meta checks it when the
# request arrives (with its own clock): a margin keeps an event at the edge of the window from
# failing a whole batch of 1,000.
AGE_MARGIN_SECS = 600.0
# Meta refuses future event times but publishes no tolerance; users report failures from small
# clock skews (§1.6). Five minutes is what other integrations allow (Reddit's, §0).
MAX_FUTURE_SECS = 300.0

_US_STATE = State()
_US_HINTS = Hints(region="US")


class MetaCapiConfig(DestinationConfig, kw_only=True):
    # The dataset (pixel) id from Events Manager: digits only.
    pixel_id: Annotated[str, Meta(pattern=r"^[0-9]{1,32}$")]
    access_token: Secret
    # Adds appsecret_proof (HMAC-SHA256 of the token) when the app requires it.
    app_secret: Secret | None = None
    api_version: Annotated[str, Meta(pattern=r"^v[0-9]+\.[0-9]+$")] = "v24.0"
    # From Events Manager → Test Events; remove it in production.
    test_event_code: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    action_source: ActionSource = "website"
    # Canonical event → Meta event name, over the built-in EVENT_NAMES.
    event_names: dict[str, Annotated[str, Meta(min_length=1, max_length=128)]] = {}
    # Events without a Meta name go as custom events under their canonical name; false: skip.
    send_unmapped: bool = True
    # US states (2-letter codes) where events get Limited Data Use.
    ldu_states: list[Annotated[str, Meta(pattern=r"^[A-Za-z]{2}$")]] = []


class MetaCapi:
    """The Meta Conversions API: one request carries up to 1,000 server events."""

    def __init__(self, destination_id: str, config: MetaCapiConfig, environment: Environment):
        self.id = destination_id
        # The protocol's attribute is the base type; _config keeps the precise one.
        self.config: DestinationConfig = config
        self._config = config
        self._environment = environment
        self._names = {**EVENT_NAMES, **config.event_names}
        self._ldu_states = frozenset(state.upper() for state in config.ldu_states)
        max_age = (62 if config.action_source == "physical_store" else 7) * DAY - AGE_MARGIN_SECS
        self.limits = Limits(
            max_events=max(1, min(MAX_EVENTS, config.max_batch_events or MAX_EVENTS)),
            # Meta publishes no body size limit for this endpoint (reference §14).
            max_bytes=None,
            max_age_secs=max_age,
            max_future_secs=MAX_FUTURE_SECS,
        )
        self._url = self._build_url()
        self._http = HttpClient(concurrency=config.concurrency, timeout_secs=config.timeout_secs,
                                user_agent=environment.user_agent)

    # --- encode (pure) ---------------------------------------------------------------------

    def encode(self, event: Event, consent: ConsentDecision | None = None) -> Encoded:
        if event.message_type in NOT_CONVERSIONS:
            return Encoded(skipped=f"{event.message_type} messages are not conversions: "
                                   "Meta has no event for them")
        warnings: list[str] = []
        name = self._names.get(event.event)
        if name is None:
            if not self._config.send_unmapped:
                return Encoded(skipped=f"no Meta event name for {event.event!r} "
                                       "(add it to event_names, or set send_unmapped = true)")
            name = event.event
        if name not in STANDARD_EVENTS:
            warnings.append(f"{name!r} is a custom event to Meta (not a standard event)")

        user_data = self._user_data(event, warnings)
        present = frozenset(user_data)
        if not present:
            return Encoded(rejected="no customer information Meta can match on",
                           warnings=warnings)
        for combination in BASELINE_INVALID:
            if present <= combination:
                return Encoded(warnings=warnings, rejected=(
                    f"customer information is only {', '.join(sorted(present))}: Meta rejects "
                    f"events that carry only {' + '.join(sorted(combination))} or part of it"))

        action_source = self._config.action_source
        page_url = event.context.page_url
        if action_source == "website":
            missing = []
            if "client_user_agent" not in user_data:
                missing.append("client_user_agent (context.user_agent)")
            if not page_url:
                missing.append("event_source_url (context.page_url)")
            if missing:
                return Encoded(warnings=warnings,
                               rejected=f"website events need {' and '.join(missing)}")

        custom_data = self._custom_data(event, warnings)
        if name == "Purchase":
            missing = [key for key in ("value", "currency") if key not in custom_data]
            if missing:
                return Encoded(warnings=warnings, rejected=(
                    f"Purchase without {' or '.join(missing)}: Meta refuses it (subcode "
                    "2804009) and with it the whole batch"))

        server_event: dict[str, Any] = {
            "event_name": name,
            "event_time": int(event.timestamp.timestamp()),
            "event_id": event.event_id,
            "action_source": action_source,
        }
        if page_url:
            server_event["event_source_url"] = page_url
        server_event["user_data"] = user_data
        if custom_data:
            server_event["custom_data"] = custom_data
        server_event.update(self._data_processing_options(event, consent))
        return Encoded(payload=msgspec.json.encode(server_event), warnings=warnings)

    def _user_data(self, event: Event, warnings: list[str]) -> dict[str, Any]:
        user = event.user
        if user.external_id is None and (own_id := user.customer_id or user.user_id):
            # The advertiser's own id for the person, as the Pixel's external_id should be
            # (and as match quality counts it).
            user = msgspec.structs.replace(user, external_id=own_id)
        prepared = prepare_identity(
            user, "meta", default_region=self._environment.default_region,
            country_hint=_region_country(event), today=event.timestamp.date(),
        )
        warnings.extend(prepared.dropped.values())
        user_data: dict[str, Any] = dict(prepared.fields)
        ip = event.context.ip
        if ip:
            if (address := canonical_ip(ip.strip())) is not None:
                user_data["client_ip_address"] = address
            else:
                warnings.append("context.ip is not an IPv4 or IPv6 address: not sent")
        if event.context.user_agent:
            user_data["client_user_agent"] = event.context.user_agent
        return user_data

    @staticmethod
    def _custom_data(event: Event, warnings: list[str]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if event.value is not None:
            data["value"] = event.value
        if event.currency is not None:
            currency = event.currency.strip().upper()
            if currency in ISO_4217:
                data["currency"] = currency
            else:
                warnings.append("currency is not an ISO 4217 code: not sent")
        if event.order_id is not None:
            data["order_id"] = event.order_id
        if event.items:
            contents: list[dict[str, Any]] = []
            num_items = 0
            for item in event.items:
                quantity = 1 if item.quantity is None else item.quantity
                if float(quantity).is_integer():
                    num_items += int(quantity)
                else:
                    warnings.append("an item quantity is not a whole number: not sent")
                if item.id is None:
                    continue
                content: dict[str, Any] = {"id": item.id}
                if item.quantity is not None and float(item.quantity).is_integer():
                    content["quantity"] = int(item.quantity)
                if item.price is not None:
                    content["item_price"] = item.price
                for key, value in (("title", item.name), ("brand", item.brand),
                                   ("category", item.category)):
                    if value is not None:
                        content[key] = value
                contents.append(content)
            if contents:
                data["content_ids"] = [content["id"] for content in contents]
                data["contents"] = contents
                data["content_type"] = "product"
            data["num_items"] = num_items
        return data

    def _data_processing_options(
        self, event: Event, consent: ConsentDecision | None
    ) -> dict[str, Any]:
        if consent is not None and consent.ldu:
            # [consent] ldu_states decided; no state known: Meta geolocates (0, 0).
            state = consent.ldu_state
        else:
            state = _us_state(event)
            if state is None or state not in self._ldu_states:
                return {}
        code = None if state is None else LDU_STATE_CODES.get(state)
        # A country without a state is not allowed; with no code for the state, both 0 lets
        # Meta geolocate the user and apply LDU where the law does.
        return {"data_processing_options": ["LDU"],
                "data_processing_options_country": 0 if code is None else 1,
                "data_processing_options_state": 0 if code is None else code}

    # --- request ---------------------------------------------------------------------------

    def _build_url(self) -> str:
        config = self._config
        url = config.endpoint or DEFAULT_URL.format(
            api_version=config.api_version, pixel_id=config.pixel_id)
        token = config.access_token.reveal()
        # In the query, not the body: `tracklayerd preview` and the trace show bodies.
        query = {"access_token": token}
        if config.app_secret is not None:
            query["appsecret_proof"] = hmac.new(
                config.app_secret.reveal().encode(), token.encode(), hashlib.sha256).hexdigest()
        return url + ("&" if "?" in url else "?") + urlencode(query)

    def build_request(self, payloads: Sequence[bytes]) -> Request:
        # Joined, not decoded and re-encoded: up to 1,000 stored encodings per request.
        body = b'{"data":[' + b",".join(payloads) + b"]"
        if self._config.test_event_code is not None:
            body += b',"test_event_code":' + msgspec.json.encode(self._config.test_event_code)
        return Request(url=self._url, body=body + b"}",
                       headers={"Content-Type": "application/json"})

    async def send(self, payloads: Sequence[bytes]) -> Sequence[Outcome]:
        if not payloads:
            return []
        reply = await self._http.send(self.build_request(payloads))
        count = len(payloads)
        if 200 <= reply.status < 300:
            received = _events_received(reply.body)
            # Meta's batches are all-or-nothing, so a short count is not a partial success we
            # could attribute. Sending again is safe: Meta dedupes on event_name + event_id.
            if received is not None and received != count:
                return same_outcome(RetryLater(
                    reason=f"Meta acknowledged {received} of {count} events", reply=reply), count)
            return same_outcome(Delivered(reply=reply), count)
        error = parse_error(reply.body)
        if error is None:
            return same_outcome(outcome_for_status(
                reply, f"HTTP {reply.status} from Meta without a Graph error body"), count)
        return same_outcome(
            outcome_for_error(reply, error, scrub=self._config.access_token.reveal()), count)

    async def healthcheck(self) -> None:
        config = self._config
        if not re.fullmatch(r"[0-9]+", config.pixel_id):
            raise DestinationError(f"{self.id}: pixel_id must be the dataset id from Events "
                                   "Manager (digits only)")
        if not config.access_token.reveal().strip():
            raise DestinationError(f"{self.id}: access_token is empty: generate a system-user "
                                   "token in Events Manager → Settings → Conversions API")

    async def close(self) -> None:
        await self._http.close()


def _region_country(event: Event) -> str | None:
    """The country of the consent region ("US-CA" → "US"), a hint for national numbers."""
    region = event.consent.region if event.consent else None
    return region_of(region.split("-", 1)[0]) if region else None


def _us_state(event: Event) -> str | None:
    """The US state the event happened in (2-letter code), from the consent region first."""
    region = (event.consent.region or "") if event.consent else ""
    country, _, subdivision = region.upper().partition("-")
    if country == "US" and subdivision:
        return subdivision
    if (country or region_of(event.user.country) or "") != "US" or not event.user.state:
        return None
    code = normalize_state(event.user.state, _US_STATE, _US_HINTS).value
    return code.upper() if code and len(code) == 2 else None


class _Received(msgspec.Struct):
    events_received: int | None = None


def _events_received(body: str) -> int | None:
    try:
        return msgspec.json.decode(body, type=_Received).events_received
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def register(registry: Registry) -> None:
    registry.register("meta_capi", MetaCapiConfig, platform="meta", factory=MetaCapi)
