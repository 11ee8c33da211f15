"""The destination contract (docs/specs/destination.md), checked on every registered type
that can send: the built-ins, whatever registers through the entry point, and the example
plugin printed in the spec (so the example keeps working).

Each type needs one row in CASES: the options of a minimal valid config and the fake that
plays its platform. A registered type without a row fails here, so a new destination cannot
arrive without passing the contract.
"""

from __future__ import annotations

import copy
import functools
import inspect
import sys
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings

from tests.destinations.contract_support import (
    GenericPlatform,
    PlatformFake,
    generated_events,
    header,
    holds_list,
    holds_value,
    purchase_full,
    secret_values,
    varied_events,
)
from tests.fakes.meta import FakeMeta
from tests.fakes.webhook import FakeReceiver
from tracklayerd.config import DestinationConfig, parse_config
from tracklayerd.destinations import registry as registry_module
from tracklayerd.destinations.base import (
    Delivered,
    Destination,
    Encoded,
    Environment,
    Limits,
    Outcome,
    Request,
    RetryLater,
    TransportError,
)
from tracklayerd.destinations.registry import registry
from tracklayerd.errors import ConfigError
from tracklayerd.events import Event, event_decoder, event_encoder
from tracklayerd.pipeline.normalize import PLATFORMS

META_TOKEN = "EAAB-contract-token-5f1d"
META_APP_SECRET = "contract-app-secret-93ab"
WEBHOOK_SECRET = "whsec-contract-77c2"
WEBHOOK_BEARER = "Bearer contract-bearer-1e0f"
ACME_KEY = "acme-contract-key-0c4e"
SPEC = Path(__file__).resolve().parents[2] / "docs" / "specs" / "destination.md"
SPEC_EXAMPLE = "acme"  # the type the spec's example plugin registers


@dataclass(frozen=True)
class Case:
    """One destination type as the suite runs it."""

    # The type's own options, endpoint excluded. Every secret option is set, so that the
    # checks that no secret reaches a body, a header or a reason cover them all.
    options: dict[str, Any]
    # Its platform's fake, configured to accept requests made with `options`.
    fake: Callable[[], PlatformFake]
    # Where the fake takes requests (a path on the fake's server).
    path: str = "/"
    # Payloads carry the canonical event id verbatim: platforms deduplicate on it.
    carries_event_id: bool = True


CASES: dict[str, Case] = {
    "meta_capi": Case(
        options={"pixel_id": "1234567890", "access_token": META_TOKEN,
                 "app_secret": META_APP_SECRET},
        fake=lambda: FakeMeta(access_token=META_TOKEN, app_secret=META_APP_SECRET),
        path="/v24.0/1234567890/events",
    ),
    "webhook": Case(
        options={"secret": WEBHOOK_SECRET,
                 "secret_headers": {"Authorization": WEBHOOK_BEARER}},
        fake=lambda: FakeReceiver(secret=WEBHOOK_SECRET,
                                  required_headers={"Authorization": WEBHOOK_BEARER}),
        path="/hook",
    ),
    SPEC_EXAMPLE: Case(
        options={"account": "acct-1", "api_key": ACME_KEY},
        fake=lambda: GenericPlatform(
            event_ids=lambda body: [event["id"] for event in body["events"]],
            required_headers={"Authorization": f"Bearer {ACME_KEY}"}),
        path="/v2/acct-1/events",
    ),
}

SENDING_TYPES = [t for t in registry().types() if registry().factory(t) is not None]
# Never contacted: the pure checks need an endpoint, not a server (port 9 is "discard").
NOWHERE = "http://127.0.0.1:9/contract"
ENVIRONMENT = Environment(user_agent="tracklayerd-contract/0.0 (+tests)")
DESTINATION_ID = "contract"
OK = range(200, 300)


def case_for(type_name: str) -> Case:
    case = CASES.get(type_name)
    if case is None:
        pytest.fail(
            f"destination type {type_name!r} is registered but has no row in CASES in "
            f"{Path(__file__).name}: add its minimal options and its platform fake "
            "(docs/specs/destination.md, 'The contract test suite')", pytrace=False)
    return case


def build(type_name: str, endpoint: str, tmp_path: Path, **overrides: Any) -> Destination:
    """The destination as a deployment gets it: the TOML table through parse_config, then
    the registered factory with an Environment."""
    case = case_for(type_name)
    table = {"type": type_name, **case.options, "endpoint": endpoint, **overrides}
    config = parse_config({"destinations": {DESTINATION_ID: table}}, tmp_path)
    factory = registry().factory(type_name)
    assert factory is not None
    return factory(DESTINATION_ID, config.destinations[DESTINATION_ID], ENVIRONMENT)


Made = Callable[..., Destination]


@functools.cache
def spec_example() -> types.ModuleType:
    """The module printed under "A complete example" in the spec, loaded as a plugin."""
    section = SPEC.read_text().split("\n## A complete example\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("\n```", 1)[0]
    module = types.ModuleType("tracklayerd_spec_example")
    # msgspec resolves the config's annotations through sys.modules.
    sys.modules[module.__name__] = module
    exec(compile(code, str(SPEC), "exec"), module.__dict__)
    return module


@pytest.fixture(params=[*SENDING_TYPES, SPEC_EXAMPLE])
def type_name(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    if name == SPEC_EXAMPLE:
        # Registered for this test only, in a copy: other suites iterate over the registry.
        with_example = copy.deepcopy(registry())
        spec_example().register(with_example)
        monkeypatch.setattr(registry_module, "_registry", with_example)
    case_for(name)
    return name


@pytest.fixture
async def make(type_name: str, tmp_path: Path) -> AsyncIterator[Made]:
    made: list[Destination] = []

    def factory(endpoint: str = NOWHERE, **overrides: Any) -> Destination:
        destination = build(type_name, endpoint, tmp_path, **overrides)
        made.append(destination)
        return destination

    yield factory
    for destination in made:
        await destination.close()


@pytest.fixture
def destination(make: Made) -> Destination:
    return make()


@dataclass
class Live:
    fake: PlatformFake
    destination: Destination
    endpoint: str


@pytest.fixture
async def live(type_name: str, make: Made,
               aiohttp_server: Callable[..., Awaitable[Any]]) -> Live:
    case = case_for(type_name)
    fake = case.fake()
    server = await aiohttp_server(fake.app)
    endpoint = str(server.make_url(case.path))
    return Live(fake, make(endpoint), endpoint)


def sendable(destination: Destination, count: int) -> tuple[list[str], list[bytes]]:
    ids = [f"contract-{n}" for n in range(count)]
    payloads = []
    for event_id in ids:
        encoded = destination.encode(purchase_full(event_id))
        assert encoded.payload is not None, (
            f"a complete purchase must be sendable, but encode refused it: {encoded.rejected}")
        payloads.append(encoded.payload)
    return ids, payloads


def secrets_of(destination: Destination) -> list[str]:
    return [value for value in secret_values(destination.config) if value]


def assert_well_formed(encoded: Encoded, what: str) -> None:
    """Exactly one of payload (JSON), rejected (a reason) and skipped (a reason) is set."""
    assert isinstance(encoded, Encoded), f"{what}: encode returned {type(encoded).__name__}"
    if encoded.payload is None:
        reasons = [r for r in (encoded.rejected, encoded.skipped) if r is not None]
        assert len(reasons) == 1 and reasons[0].strip(), (
            f"{what}: not exactly one reason for not sending it: {encoded}")
    else:
        assert encoded.rejected is None and encoded.skipped is None, (
            f"{what}: both a payload and a rejection ({encoded.rejected!r}); the processor "
            "would send it")
        msgspec.json.decode(encoded.payload)
    assert all(isinstance(w, str) and w for w in encoded.warnings), what


def assert_pure_encode(destination: Destination, event: Event, what: str) -> Encoded:
    before = event_encoder.encode(event)
    first = destination.encode(event)
    assert event_encoder.encode(event) == before, f"{what}: encode changed the event"
    assert_well_formed(first, what)
    assert destination.encode(event) == first, f"{what}: encode is not deterministic"
    # The scheduler encodes the stored event again on `replay --rebuild`: the stored form
    # must encode exactly as the live one.
    stored = event_decoder.decode(before)
    assert destination.encode(stored) == first, f"{what}: the stored event encodes differently"
    return first


def assert_answered(
    outcomes: Any, count: int, status: int | range, kind: type[Any]
) -> list[Outcome]:
    statuses = status if isinstance(status, range) else range(status, status + 1)
    assert not isinstance(outcomes, str | bytes)
    listed = list(outcomes)
    assert len(listed) == count, f"{len(listed)} outcomes for {count} payloads"
    for outcome in listed:
        assert isinstance(outcome, kind), outcome
        # The scheduler logs the first reply it finds as the request's answer (trace, status
        # page): an answered request must hand it back.
        assert outcome.reply is not None, outcome
        assert outcome.reply.status in statuses, outcome.reply
        assert isinstance(outcome.reply.body, str)
    return listed


def assert_no_secret(text: str, secrets: list[str], what: str) -> None:
    for value in secrets:
        assert value not in text, f"{what} contains a configured secret"


# --- the registry and the config -----------------------------------------------------------


def test_every_sending_type_has_a_case() -> None:
    missing = sorted(set(SENDING_TYPES) - set(CASES))
    assert not missing, f"registered types without a row in CASES: {missing}"


def test_cases_name_only_registered_types() -> None:
    stale = sorted(set(CASES) - set(SENDING_TYPES) - {SPEC_EXAMPLE})
    assert not stale, f"CASES has rows for types that are not registered or cannot send: {stale}"


def test_config_subclasses_destination_config_and_refuses_unknown_options(
    type_name: str, tmp_path: Path,
) -> None:
    config_type = registry().config_type(type_name)
    assert config_type is not None and issubclass(config_type, DestinationConfig)
    with pytest.raises(ConfigError, match=r"destinations\.contract\.no_such_option"):
        build(type_name, NOWHERE, tmp_path, no_such_option=1)


def test_platform_names_identity_rules_that_exist(type_name: str) -> None:
    platform = registry().platform(type_name)
    assert platform is None or platform in PLATFORMS, (
        f"{type_name} registers platform {platform!r}, which prepare_identity does not know")


async def test_factory_makes_a_destination_with_the_protocols_members(
    destination: Destination,
) -> None:
    assert destination.id == DESTINATION_ID
    assert isinstance(destination.config, DestinationConfig)
    assert isinstance(destination.limits, Limits)
    for name in ("encode", "build_request"):
        assert callable(getattr(destination, name))
        assert not inspect.iscoroutinefunction(getattr(destination, name)), (
            f"{name} must be a plain function: the processor calls it without awaiting")
    for name in ("send", "healthcheck", "close"):
        assert inspect.iscoroutinefunction(getattr(destination, name)), f"{name} is async"


async def test_healthcheck_passes_with_a_valid_config(destination: Destination) -> None:
    await destination.healthcheck()


def test_limits_are_usable(destination: Destination) -> None:
    limits = destination.limits
    assert isinstance(limits.max_events, int) and limits.max_events >= 1
    for name in ("max_bytes", "max_age_secs", "max_future_secs"):
        value = getattr(limits, name)
        assert value is None or value > 0, f"limits.{name} is {value!r}: None or > 0"


def test_limits_honour_a_lower_max_batch_events(make: Made) -> None:
    assert make(max_batch_events=1).limits.max_events == 1


# --- encode --------------------------------------------------------------------------------


@pytest.mark.parametrize("example", sorted(varied_events()))
def test_encode_is_pure_and_never_raises(destination: Destination, example: str) -> None:
    assert_pure_encode(destination, varied_events()[example], example)


def test_encode_sends_a_complete_purchase_with_its_event_id(
    destination: Destination, type_name: str,
) -> None:
    event = purchase_full("contract-dedup-key-1")
    encoded = assert_pure_encode(destination, event, "purchase_full")
    assert encoded.payload is not None, encoded.rejected
    if case_for(type_name).carries_event_id:
        assert holds_value(msgspec.json.decode(encoded.payload), event.event_id), (
            "the payload does not carry the event id: retries and replays could not be "
            "deduplicated by the platform")


async def test_encode_is_pure_on_generated_events(destination: Destination) -> None:
    @settings(max_examples=50, deadline=None)
    @given(generated_events)
    def check(event: Event) -> None:
        assert_pure_encode(destination, event, repr(event))

    check()


# --- build_request -------------------------------------------------------------------------


@pytest.mark.parametrize("count", ["one", "max_events"])
def test_build_request_carries_the_payloads_in_order_and_no_secret(
    destination: Destination, count: str,
) -> None:
    n = 1 if count == "one" else destination.limits.max_events
    _, payloads = sendable(destination, n)
    request = destination.build_request(payloads)
    assert isinstance(request, Request)
    assert destination.build_request(payloads) == request, "build_request is not deterministic"
    body = msgspec.json.decode(request.body)
    assert holds_list(body, [msgspec.json.decode(p) for p in payloads]), (
        "the body does not hold the stored payloads as one array, in order")
    if destination.limits.max_bytes is not None:
        assert len(request.body) <= destination.limits.max_bytes
    # Previews, observe mode and the trace show the body and headers (never the URL).
    secrets = secrets_of(destination)
    assert_no_secret(request.body.decode("utf-8", "replace"), secrets, "the body")
    assert_no_secret(repr(request.headers), secrets, "the headers")


# --- send ----------------------------------------------------------------------------------


async def test_send_delivers_one_request_with_one_outcome_per_payload(
    live: Live, type_name: str,
) -> None:
    ids, payloads = sendable(live.destination, 3)
    assert_answered(await live.destination.send(payloads), 3, OK, Delivered)
    assert len(live.fake.requests) == 1
    if case_for(type_name).carries_event_id:
        assert live.fake.event_ids == ids


async def test_send_sends_the_environments_user_agent(live: Live) -> None:
    _, payloads = sendable(live.destination, 1)
    await live.destination.send(payloads)
    assert [header(r, "User-Agent") for r in live.fake.requests] == [ENVIRONMENT.user_agent]


async def test_server_error_is_retry_later_for_each_payload_without_retrying_inside(
    live: Live,
) -> None:
    _, payloads = sendable(live.destination, 3)
    live.fake.respond_next(500, "scripted failure")
    outcomes = assert_answered(await live.destination.send(payloads), 3, 500, RetryLater)
    assert len(live.fake.requests) == 1, "the destination retried by itself"
    for outcome in outcomes:
        assert isinstance(outcome, RetryLater) and outcome.reason.strip()
        assert_no_secret(outcome.reason, secrets_of(live.destination), "the reason")
        assert live.endpoint not in outcome.reason


async def test_retry_after_is_passed_on_as_after_secs(live: Live) -> None:
    _, payloads = sendable(live.destination, 2)
    live.fake.respond_next(429, "slow down", {"Retry-After": "7"})
    outcomes = assert_answered(await live.destination.send(payloads), 2, 429, RetryLater)
    assert all(isinstance(o, RetryLater) and o.after_secs == 7.0 for o in outcomes)


async def test_connection_reset_raises_transport_error_and_the_next_send_works(
    live: Live,
) -> None:
    _, payloads = sendable(live.destination, 3)
    live.fake.reset_next()
    with pytest.raises(TransportError) as raised:
        await live.destination.send(payloads)
    assert_no_secret(str(raised.value), secrets_of(live.destination), "the transport error")
    assert live.endpoint not in str(raised.value)
    assert len(live.fake.requests) == 1, "the destination retried by itself"
    # A broken connection must not stay in the pool.
    assert_answered(await live.destination.send(payloads), 3, OK, Delivered)


async def test_close_can_be_called_twice(live: Live, make: Made) -> None:
    _, payloads = sendable(live.destination, 1)
    await live.destination.send(payloads)
    await live.destination.close()
    await live.destination.close()
    unused = make()
    await unused.close()
    await unused.close()
