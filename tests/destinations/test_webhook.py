"""The signed webhook destination against a fake receiver (tests/fakes/webhook.py) on a real
server, alone and through the real processor and scheduler."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient

from tests.conftest import auth, make_config, processor_of, purchase, store_of
from tests.fakes.webhook import FakeReceiver, verify_signature
from tracklayerd.app import SCHEDULER, create_app
from tracklayerd.config import parse_config
from tracklayerd.destinations.base import (
    CONFIG_PAUSE_SECS,
    Delivered,
    Environment,
    Rejected,
    RetryLater,
    TransportError,
    build_payload,
)
from tracklayerd.destinations.registry import create_destinations
from tracklayerd.destinations.webhook import Webhook, WebhookConfig
from tracklayerd.errors import ConfigError, DestinationError
from tracklayerd.events import Event, Identity, event_decoder, event_encoder

SECRET = "whsec-test-1"
WHEN = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def event(event_id: str = "e1", **fields: Any) -> Event:
    return Event(event="purchase", event_id=event_id, timestamp=WHEN, received_at=WHEN,
                 source="web", user=Identity(email="ada@example.com"), order_id="1001",
                 value=129.9, currency="USD", **fields)


WebhookFactory = Callable[..., Webhook]


@pytest.fixture
async def webhook(tmp_path: Path) -> AsyncIterator[WebhookFactory]:
    made: list[Webhook] = []

    def factory(endpoint: str = "https://hooks.example.com/t", **options: Any) -> Webhook:
        config = parse_config({"destinations": {"hook": {
            "type": "webhook", "endpoint": endpoint, **options}}}, tmp_path)
        destination = create_destinations(config)["hook"]
        assert isinstance(destination, Webhook)
        made.append(destination)
        return destination

    yield factory
    for destination in made:
        await destination.close()


async def start(aiohttp_server: Any, fake: FakeReceiver, path: str = "/hook") -> str:
    server = await aiohttp_server(fake.app)
    return str(server.make_url(path))


def payloads(destination: Webhook, *event_ids: str) -> list[bytes]:
    encoded = [destination.encode(event(event_id)).payload for event_id in event_ids]
    assert all(p is not None for p in encoded)
    return [p for p in encoded if p is not None]


# --- encode and build_request (pure) ---------------------------------------------------------


def test_encode_is_the_canonical_event_as_stored_personal_data_included(
    webhook: WebhookFactory,
) -> None:
    original = event(properties={"coupon": "WINTER"})
    encoded = webhook().encode(original)
    assert encoded.rejected is None and encoded.warnings == []
    assert encoded.payload == event_encoder.encode(original)
    assert event_decoder.decode(encoded.payload) == original
    assert msgspec.json.decode(encoded.payload)["user"] == {"email": "ada@example.com"}


def test_encode_rejects_nothing_not_even_contract_violations(webhook: WebhookFactory) -> None:
    odd = event(violations=["purchase requires currency"], message_type="identify")
    assert webhook().encode(odd).payload is not None


def test_build_request_is_the_events_envelope_and_the_same_for_the_same_payloads(
    webhook: WebhookFactory,
) -> None:
    destination = webhook(headers={"X-Env": "prod"}, secret=SECRET,
                          secret_headers={"Authorization": "Bearer hidden"})
    body_parts = payloads(destination, "e1", "e2")
    request = destination.build_request(body_parts)
    assert request.body == b'{"events":[' + body_parts[0] + b"," + body_parts[1] + b"]}"
    assert msgspec.json.decode(request.body)["events"][1]["event_id"] == "e2"
    assert request.method == "POST" and request.url == "https://hooks.example.com/t"
    assert request.headers == {
        "X-Env": "prod", "Content-Type": "application/json",
        "Idempotency-Key": hashlib.sha256(request.body).hexdigest()[:32],
    }
    # Pure: what a preview shows is byte for byte what is sent (bar the send-time signature),
    # and it never holds a secret.
    assert destination.build_request(body_parts) == request
    preview, problems = build_payload(destination, [event("e1"), event("e2")])
    assert preview == request and problems == []


def test_limits_default_to_100_events_and_follow_max_batch_events(
    webhook: WebhookFactory,
) -> None:
    assert webhook().limits.max_events == 100
    assert webhook().limits.max_age_secs is None
    assert webhook(max_batch_events=1000).limits.max_events == 1000


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["ftp://hooks.example.com/t", "hooks.example.com/t",
                                      "https://", "https://hooks example.com/t"])
def test_config_refuses_an_endpoint_that_is_not_http(tmp_path: Path, endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"^destinations\.hook\.endpoint: "):
        parse_config({"destinations": {"hook": {"type": "webhook", "endpoint": endpoint}}},
                     tmp_path)


def test_config_requires_an_endpoint_with_a_host(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^destinations\.hook: endpoint has no host"):
        parse_config({"destinations": {"hook": {"type": "webhook",
                                                "endpoint": "https:///path"}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"^destinations\.hook\.endpoint: required key"):
        parse_config({"destinations": {"hook": {"type": "webhook"}}}, tmp_path)


@pytest.mark.parametrize(("options", "message"), [
    ({"headers": {"Idempotency-Key": "x"}}, "headers: Idempotency-Key is set by tracklayerd"),
    ({"headers": {"x-tracklayerd-signature": "x"}}, "is set by tracklayerd"),
    ({"headers": {"Content-Type": "text/plain"}}, "is set by tracklayerd"),
    ({"secret_headers": {"Bad Name": "x"}}, "'Bad Name' is not a valid header name"),
    ({"headers": {"X-A": "1"}, "secret_headers": {"x-a": "2"}}, "x-a is set twice"),
    ({"headers": {"X-A": "1\r\nX-Smuggled: 1"}}, "cannot contain line breaks"),
])
def test_config_refuses_headers_tracklayerd_sets_or_that_are_malformed(
    tmp_path: Path, options: dict[str, Any], message: str,
) -> None:
    with pytest.raises(ConfigError, match=r"^destinations\.hook: ") as info:
        parse_config({"destinations": {"hook": {
            "type": "webhook", "endpoint": "https://h.example/t", **options}}}, tmp_path)
    assert message in str(info.value)


def test_config_caps_max_batch_events_at_1000(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^destinations\.hook\.max_batch_events: "):
        parse_config({"destinations": {"hook": {
            "type": "webhook", "endpoint": "https://h.example/t", "max_batch_events": 1001}}},
            tmp_path)


async def test_healthcheck_refuses_an_endpoint_that_is_not_http() -> None:
    config = WebhookConfig(type="webhook", endpoint="ftp://user:pw@files.example/drop")
    destination = Webhook("hook", config, Environment())
    with pytest.raises(DestinationError, match="http:// or https://") as info:
        await destination.healthcheck()
    assert "pw" not in str(info.value) and "files.example" not in str(info.value)
    await destination.close()
    await Webhook("ok", WebhookConfig(type="webhook", endpoint="https://h.example/t"),
                  Environment()).healthcheck()


# --- signing ---------------------------------------------------------------------------------


async def test_request_is_signed_over_timestamp_and_body(
    aiohttp_server: Any, webhook: WebhookFactory,
) -> None:
    fake = FakeReceiver(secret=SECRET)
    destination = webhook(await start(aiohttp_server, fake), secret=SECRET)
    before = int(time.time())
    outcomes = await destination.send(payloads(destination, "e1", "e2"))
    assert outcomes == [Delivered(reply=outcomes[0].reply)] * 2
    assert fake.errors == [] and fake.event_ids == ["e1", "e2"]
    received = fake.requests[0]
    timestamp = received.headers["X-Tracklayerd-Timestamp"]
    assert before <= int(timestamp) <= time.time()
    digest = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + received.body,
                      hashlib.sha256).hexdigest()
    assert received.headers["X-Tracklayerd-Signature"] == f"t={timestamp},v1={digest}"


async def test_a_tampered_body_or_a_wrong_secret_does_not_verify(
    aiohttp_server: Any, webhook: WebhookFactory,
) -> None:
    fake = FakeReceiver(secret=SECRET)
    url = await start(aiohttp_server, fake)
    destination = webhook(url, secret=SECRET)
    request = destination.signed(destination.build_request(payloads(destination, "e1")),
                                 time.time())
    signature = request.headers["X-Tracklayerd-Signature"]
    timestamp = request.headers["X-Tracklayerd-Timestamp"]
    assert verify_signature(SECRET, signature, timestamp, request.body)
    tampered = request.body.replace(b"129.9", b"1299.0")
    assert tampered != request.body
    assert not verify_signature(SECRET, signature, timestamp, tampered)
    assert not verify_signature("another-secret", signature, timestamp, request.body)
    assert not verify_signature(SECRET, signature, str(int(timestamp) + 1), request.body)

    headers = {**request.headers,
               "Idempotency-Key": hashlib.sha256(tampered).hexdigest()[:32]}
    async with ClientSession() as session, session.post(url, data=tampered,
                                                        headers=headers) as response:
        assert response.status == 401
    assert fake.errors == ["X-Tracklayerd-Signature does not verify"]
    assert fake.events == []


def test_the_receiver_snippet_in_the_docs_verifies_our_signature(
    webhook: WebhookFactory,
) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "destinations" / "webhook.md")
    text = page.read_text()
    start = text.index("```python\n", text.index("## Verifying the signature"))
    snippet = text[start + len("```python\n"):text.index("```", start + 3)]
    namespace: dict[str, Any] = {}
    exec(compile(snippet, str(page), "exec"), namespace)
    verify = namespace["verify"]

    destination = webhook(secret=SECRET)
    request = destination.signed(destination.build_request(payloads(destination, "e1")),
                                 time.time())
    assert verify(SECRET.encode(), request.headers, request.body)
    assert not verify(SECRET.encode(), request.headers, request.body + b" ")
    assert not verify(b"another", request.headers, request.body)
    stale = destination.signed(destination.build_request(payloads(destination, "e1")),
                               time.time() - 301)
    assert not verify(SECRET.encode(), stale.headers, stale.body)


async def test_a_stale_timestamp_is_refused_by_a_receiver_that_checks_it(
    aiohttp_server: Any, webhook: WebhookFactory,
) -> None:
    fake = FakeReceiver(secret=SECRET, now=lambda: time.time() + 600)
    destination = webhook(await start(aiohttp_server, fake), secret=SECRET)
    [outcome] = await destination.send(payloads(destination, "e1"))
    assert isinstance(outcome, RetryLater) and outcome.after_secs == CONFIG_PAUSE_SECS
    assert outcome.reason.startswith("credentials refused: ") and "HTTP 401" in outcome.reason
    assert fake.errors == ["X-Tracklayerd-Timestamp is too old or in the future"]


async def test_without_a_secret_requests_are_timestamped_but_unsigned(
    aiohttp_server: Any, webhook: WebhookFactory,
) -> None:
    fake = FakeReceiver()
    destination = webhook(await start(aiohttp_server, fake))
    await destination.send(payloads(destination, "e1"))
    headers = fake.requests[0].headers
    assert "X-Tracklayerd-Signature" not in headers and "X-Tracklayerd-Timestamp" in headers
    assert fake.errors == []


async def test_static_and_secret_headers_are_sent(
    aiohttp_server: Any, webhook: WebhookFactory,
) -> None:
    fake = FakeReceiver(required_headers={"X-Env": "prod", "Authorization": "Bearer hidden"})
    destination = webhook(await start(aiohttp_server, fake), headers={"X-Env": "prod"},
                          secret_headers={"Authorization": "Bearer hidden"})
    assert "Authorization" not in destination.build_request(payloads(destination, "e1")).headers
    assert isinstance((await destination.send(payloads(destination, "e1")))[0], Delivered)
    assert fake.errors == []
    assert fake.requests[0].headers["User-Agent"].startswith("tracklayerd/")


async def test_a_retried_batch_carries_the_same_idempotency_key(
    aiohttp_server: Any, webhook: WebhookFactory,
) -> None:
    fake = FakeReceiver(secret=SECRET)
    destination = webhook(await start(aiohttp_server, fake), secret=SECRET)
    fake.respond_next(503)
    batch = payloads(destination, "e1", "e2")
    assert all(isinstance(o, RetryLater) for o in await destination.send(batch))
    assert all(isinstance(o, Delivered) for o in await destination.send(batch))
    first, second = fake.requests
    assert first.body == second.body
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    other = payloads(destination, "e1")
    await destination.send(other)
    assert fake.requests[2].headers["Idempotency-Key"] != first.headers["Idempotency-Key"]


# --- outcomes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kind"), [
    (200, Delivered), (202, Delivered), (204, Delivered),
    (408, RetryLater), (425, RetryLater), (429, RetryLater), (500, RetryLater),
    (502, RetryLater), (503, RetryLater),
    (400, Rejected), (413, Rejected), (422, Rejected),
    # The destination's config is wrong, not the events: they wait, the destination pauses.
    (401, "paused"), (403, "paused"), (404, "paused"),
])
async def test_the_status_code_decides_for_the_whole_batch(
    aiohttp_server: Any, webhook: WebhookFactory, status: int, kind: type,
) -> None:
    fake = FakeReceiver()
    destination = webhook(await start(aiohttp_server, fake))
    fake.respond_next(status, b"" if status == 204 else {"error": "scripted"})
    outcomes = await destination.send(payloads(destination, "e1", "e2"))
    if kind == "paused":
        assert all(isinstance(o, RetryLater) and o.after_secs == CONFIG_PAUSE_SECS
                   and o.reason.endswith(f'HTTP {status}: {{"error":"scripted"}}')
                   for o in outcomes)
        return
    assert [type(o) for o in outcomes] == [kind, kind]
    first = outcomes[0]
    assert first.reply is not None and first.reply.status == status
    if isinstance(first, Rejected):
        assert first.whole_batch  # the scheduler splits it to find the bad event
        assert first.reason == f'HTTP {status}: {{"error":"scripted"}}'
    if isinstance(first, RetryLater):
        assert first.after_secs is None


async def test_retry_after_is_honoured(aiohttp_server: Any, webhook: WebhookFactory) -> None:
    fake = FakeReceiver()
    destination = webhook(await start(aiohttp_server, fake))
    fake.respond_next(429, {"error": "slow down"}, headers={"Retry-After": "30"})
    outcomes = await destination.send(payloads(destination, "e1", "e2"))
    assert all(isinstance(o, RetryLater) and o.after_secs == 30.0 for o in outcomes)


@pytest.mark.parametrize("status", [200, 207, 400, 422])
async def test_per_event_results_give_one_outcome_per_event(
    aiohttp_server: Any, webhook: WebhookFactory, status: int,
) -> None:
    fake = FakeReceiver()
    destination = webhook(await start(aiohttp_server, fake))
    fake.results_next(["ok", ("retry", "warehouse busy"), ("rejected", "unknown currency"),
                       "rejected", "retry"], status=status)
    ok, busy, bad, bare_bad, bare_retry = await destination.send(
        payloads(destination, "e1", "e2", "e3", "e4", "e5"))
    assert isinstance(ok, Delivered)
    assert isinstance(busy, RetryLater) and busy.reason == "warehouse busy"
    assert isinstance(bad, Rejected) and bad.reason == "unknown currency"
    assert not bad.whole_batch
    assert isinstance(bare_bad, Rejected) and bare_bad.reason == "rejected by the receiver"
    assert isinstance(bare_retry, RetryLater)
    assert bare_retry.reason == "the receiver asked to retry this event"
    assert fake.event_ids == ["e1"]


@pytest.mark.parametrize(("status", "body", "kind"), [
    (200, {"results": [{"status": "ok"}]}, Delivered),  # one entry for two events
    (200, {"results": [{"status": "maybe"}, {"status": "ok"}]}, Delivered),
    (200, "not json", Delivered),
    (400, {"results": [{"status": "ok"}]}, Rejected),
    (500, {"results": [{"status": "ok"}, {"status": "ok"}]}, RetryLater),  # 5xx: status wins
])
async def test_results_that_do_not_fit_the_batch_leave_it_to_the_status_code(
    aiohttp_server: Any, webhook: WebhookFactory, status: int, body: Any, kind: type,
) -> None:
    fake = FakeReceiver()
    destination = webhook(await start(aiohttp_server, fake))
    fake.respond_next(status, body)
    outcomes = await destination.send(payloads(destination, "e1", "e2"))
    assert [type(o) for o in outcomes] == [kind, kind]
    if isinstance(outcomes[0], Rejected):
        assert outcomes[0].whole_batch


async def test_a_dropped_connection_is_a_transport_error(
    aiohttp_server: Any, webhook: WebhookFactory,
) -> None:
    fake = FakeReceiver()
    destination = webhook(await start(aiohttp_server, fake))
    fake.reset_next()
    with pytest.raises(TransportError, match="connection failed"):
        await destination.send(payloads(destination, "e1"))


async def test_no_answer_within_the_timeout_is_a_transport_error(
    aiohttp_server: Any, webhook: WebhookFactory,
) -> None:
    fake = FakeReceiver()
    destination = webhook(await start(aiohttp_server, fake), timeout_secs=0.2)
    fake.hang_next()
    with pytest.raises(TransportError, match="no answer within the timeout"):
        await destination.send(payloads(destination, "e1"))
    fake.release()


async def test_reasons_never_show_the_endpoint_or_its_credentials(
    aiohttp_server: Any, webhook: WebhookFactory,
) -> None:
    fake = FakeReceiver()
    url = await start(aiohttp_server, fake, "/hook/path-token-xyz?key=query-token-xyz")
    destination = webhook(url.replace("http://", "http://user:pass-token-xyz@"))
    fake.respond_next(400)
    fake.reset_next()
    [rejected] = await destination.send(payloads(destination, "e1"))
    assert isinstance(rejected, Rejected) and rejected.reason == "HTTP 400"
    with pytest.raises(TransportError) as info:
        await destination.send(payloads(destination, "e1"))
    assert "token-xyz" not in str(info.value)
    assert fake.requests[0].path == "/hook/path-token-xyz"


# --- through the processor and the scheduler -------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        # The processor stamps deliveries with the real time; the scheduler's clock starts there.
        self.t = time.time()

    def now(self) -> float:
        return self.t

    def advance(self, secs: float) -> None:
        self.t += secs


async def tracklayerd(aiohttp_client: Any, tmp_path: Path, endpoint: str,
                      clock: FakeClock | None = None, **options: Any) -> TestClient[Any, Any]:
    config = make_config(tmp_path, destinations={"hook": {
        "type": "webhook", "endpoint": endpoint, "secret": SECRET, **options}})
    app = create_app(config, tmp_path, start_processor=False, clock=clock)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


async def post_and_process(client: TestClient[Any, Any], *event_ids: str) -> None:
    # Distinct orders: one order id would make them duplicates of one purchase.
    batch = {"events": [purchase(event_id, order_id=event_id) for event_id in event_ids]}
    assert (await client.post("/v1/events", json=batch, headers=auth())).status == 200
    assert await processor_of(client).run_until_idle() == len(event_ids)


async def test_posted_events_reach_the_receiver_once_each_and_are_delivered(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
) -> None:
    fake = FakeReceiver(secret=SECRET)
    client = await tracklayerd(aiohttp_client, tmp_path, await start(aiohttp_server, fake),
                               max_batch_events=2)
    await post_and_process(client, "p1", "p2", "p3")
    assert await client.app[SCHEDULER].run_until_idle() == 3
    assert fake.errors == []
    assert sorted(fake.event_ids) == ["p1", "p2", "p3"]
    assert [len(batch.events) for batch in fake.batches] == [2, 1]
    assert fake.events[0]["user"]["email"] == "ada@example.com"
    assert fake.events[0]["source"] == "web"
    store = store_of(client)
    for stored in await store.events_for("web", ["p1", "p2", "p3"]):
        assert await store.deliveries_for(stored.id) == [("hook", "delivered")]
        [record] = await store.delivery_records(stored.id)
        # The stored payload is what was sent, byte for byte.
        assert record.payload is not None and record.payload in fake.requests[0].body + \
            fake.requests[1].body
    assert await client.app[SCHEDULER].run_until_idle() == 0
    assert len(fake.requests) == 2


async def test_a_failed_request_is_sent_again_when_due_with_the_same_event_ids(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
) -> None:
    fake = FakeReceiver(secret=SECRET)
    clock = FakeClock()
    client = await tracklayerd(aiohttp_client, tmp_path, await start(aiohttp_server, fake),
                               clock=clock)
    await post_and_process(client, "p1")
    scheduler = client.app[SCHEDULER]
    store = store_of(client)
    [stored] = await store.events_for("web", ["p1"])

    fake.respond_next(500, {"error": "database is down"})
    assert await scheduler.run_until_idle() == 1
    [record] = await store.delivery_records(stored.id)
    assert record.status == "retrying" and record.next_attempt_at > clock.now()
    assert record.reason == 'HTTP 500: {"error":"database is down"}'
    assert await scheduler.run_until_idle() == 0  # not due yet
    assert fake.events == []

    clock.advance(record.next_attempt_at - clock.now())
    assert await scheduler.run_until_idle() == 1
    assert fake.event_ids == ["p1"]
    assert await store.deliveries_for(stored.id) == [("hook", "delivered")]
    first, second = fake.requests
    assert first.body == second.body
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    [record] = await store.delivery_records(stored.id)
    assert [(a.outcome, a.http_status) for a in record.history] == [
        ("retry", 500), ("delivered", 200)]
    assert fake.errors == []


async def test_an_event_the_receiver_rejects_is_dead_and_the_others_are_delivered(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
) -> None:
    fake = FakeReceiver(secret=SECRET)
    fake.reject_event("p2", "order 1001 is a test order")
    client = await tracklayerd(aiohttp_client, tmp_path, await start(aiohttp_server, fake))
    await post_and_process(client, "p1", "p2", "p3")
    assert await client.app[SCHEDULER].run_until_idle() == 3
    assert fake.event_ids == ["p1", "p3"] and len(fake.requests) == 1
    store = store_of(client)
    statuses = {}
    for stored in await store.events_for("web", ["p1", "p2", "p3"]):
        [record] = await store.delivery_records(stored.id)
        statuses[stored.event_id] = (record.status, record.reason)
    assert statuses == {"p1": ("delivered", None), "p3": ("delivered", None),
                        "p2": ("dead", "order 1001 is a test order")}


async def test_a_receiver_refusing_the_whole_batch_isolates_the_bad_event(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
) -> None:
    fake = FakeReceiver(secret=SECRET)
    client = await tracklayerd(aiohttp_client, tmp_path, await start(aiohttp_server, fake))
    await post_and_process(client, "p1", "p2")
    # A receiver without the per-event protocol answers 400 to the pair, then (split) 200
    # to p1 and 400 to p2.
    fake.respond_next(400, {"error": "bad event"})
    fake.respond_next(200)
    fake.respond_next(400, {"error": "bad event"})
    assert await client.app[SCHEDULER].run_until_idle() == 2
    store = store_of(client)
    p1, p2 = await store.events_for("web", ["p1", "p2"])
    assert await store.deliveries_for(p1.id) == [("hook", "delivered")]
    assert await store.deliveries_for(p2.id) == [("hook", "dead")]
    assert len(fake.requests) == 3
