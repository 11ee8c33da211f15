"""`tracklayerd preview`, `replay` and `send-test`, run through click against real files,
real SQLite stores and real HTTP receivers on port 0."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from tests.conftest import ClientFactory, auth, processor_of, purchase, store_of
from tests.fakes.meta import FakeMeta
from tracklayerd.app import SCHEDULER
from tracklayerd.cli import cli
from tracklayerd.config import Config, load_config
from tracklayerd.delivery_tools import parse_since
from tracklayerd.destinations.registry import create_destinations
from tracklayerd.processor import Pipeline, Processor
from tracklayerd.scheduler import Scheduler
from tracklayerd.store.base import DeliveryRecord, InboxRow
from tracklayerd.store.sqlite import SQLiteStore

META_TOKEN = "meta-token-never-printed"
PIXEL = "1234567890"
WRITE_KEY = "wk-cli-1"
WEB_TOKEN = "web-token-1"


# The CLI runs in these tests and takes over logging (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("restore_logging")


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tracklayerd.toml"
    path.write_text(f'[storage]\npath = "{tmp_path / "tl.sqlite3"}"\n\n'
                    f'[sources.web]\ntype = "http_api"\ntoken = "{WEB_TOKEN}"\n\n'
                    f'[sources.seg]\ntype = "segment"\nwrite_key = "{WRITE_KEY}"\n\n' + body)
    return path


def meta_table(name: str = "meta", endpoint: str = "https://graph.example/v24.0/x/events",
               **options: str) -> str:
    extra = "".join(f'{key} = "{value}"\n' for key, value in options.items())
    return (f'[destinations.{name}]\ntype = "meta_capi"\npixel_id = "{PIXEL}"\n'
            f'access_token = "{META_TOKEN}"\nendpoint = "{endpoint}"\n{extra}\n')


def hook_table(endpoint: str, name: str = "hook", **options: str) -> str:
    extra = "".join(f'{key} = "{value}"\n' for key, value in options.items())
    return f'[destinations.{name}]\ntype = "webhook"\nendpoint = "{endpoint}"\n{extra}\n'


def invoke(*args: str, input: bytes | str | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), input=input)
    # Exits are expected; anything else escaping the command is a bug (a traceback).
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


async def invoke_in_thread(*args: str, input: bytes | str | None = None) -> Result:
    """For commands that run their own event loop, from a test that has one running."""
    return await asyncio.to_thread(invoke, *args, input=input)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def order_completed(message_id: str = "msg-order-1", **properties: Any) -> dict[str, Any]:
    """A Segment track call as a server library sends it (no request IP or UA involved)."""
    props: dict[str, Any] = {"order_id": "1001", "revenue": 59.9, "currency": "EUR",
                             "products": [{"product_id": "sku-1", "price": 59.9,
                                           "quantity": 1}]}
    props.update(properties)
    return {
        "type": "track", "event": "Order Completed", "userId": "user-1",
        "messageId": message_id,
        "timestamp": iso(datetime.now(UTC) - timedelta(minutes=5)),
        "properties": {k: v for k, v in props.items() if v is not None},
        "context": {"traits": {"email": "Ada@Example.com", "phone": "+1 415 555 0100"},
                    "ip": "203.0.113.9", "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
                    "page": {"url": "https://shop.example/thanks"},
                    "library": {"name": "analytics-python", "version": "2.3.0"}},
    }


# --- preview -------------------------------------------------------------------------------


def test_preview_native_event_for_a_webhook_prints_exactly_the_body(tmp_path: Path) -> None:
    config = write_config(tmp_path, hook_table("https://hooks.example/in?key=url-secret"))
    event = purchase("ord-7-purchase")
    result = invoke("preview", "--config", str(config), "--source", "web",
                    "--destination", "hook", input=json.dumps(event))
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes.endswith(b"]}\n")
    body = json.loads(result.stdout)
    (sent,) = body["events"]
    assert (sent["event"], sent["event_id"], sent["value"]) == ("purchase", "ord-7-purchase",
                                                                129.9)
    assert "Content-Type: application/json" in result.stderr
    # The URL can hold a token: never shown.
    assert "url-secret" not in result.output and "hooks.example" not in result.output


def test_preview_segment_track_for_meta_with_match_quality(tmp_path: Path) -> None:
    config = write_config(tmp_path, meta_table(mode="observe"))
    message = tmp_path / "order.json"
    message.write_text(json.dumps(order_completed()))
    result = invoke("preview", "--config", str(config), "--source", "seg",
                    "--destination", "meta", str(message))
    assert result.exit_code == 0, result.stderr
    (event,) = json.loads(result.stdout)["data"]
    assert event["event_name"] == "Purchase" and event["event_id"] == "msg-order-1"
    assert event["custom_data"]["value"] == 59.9
    assert "identity stitching not applied in preview" in result.stderr
    assert "destination meta is in mode observe" in result.stderr
    assert "match quality (meta" in result.stderr
    assert "present: email +3" in result.stderr
    assert "missing: fbc +3" in result.stderr
    assert META_TOKEN not in result.output and "graph.example" not in result.output


def test_preview_takes_one_message_of_a_segment_batch_and_mode_off(tmp_path: Path) -> None:
    config = write_config(tmp_path, meta_table(mode="off"))
    message = order_completed()
    context = message.pop("context")
    batch = {"batch": [message], "context": context, "writeKey": WRITE_KEY}
    result = invoke("preview", "--config", str(config), "--source", "seg",
                    "--destination", "meta", "-", input=json.dumps(batch))
    assert result.exit_code == 0, result.stderr
    (event,) = json.loads(result.stdout)["data"]
    # The batch's context was merged in, as the Tracking API does.
    assert event["user_data"]["client_ip_address"] == "203.0.113.9"
    assert WRITE_KEY not in result.output


def test_preview_takes_what_a_webhook_source_receives(tmp_path: Path) -> None:
    sources = ('[sources.forwarded]\ntype = "segment_webhook"\nshared_secret = "s3cret"\n\n'
               '[sources.rudder]\ntype = "rudderstack_webhook"\nsecret = "s3cret"\n\n')
    config = write_config(tmp_path, sources + meta_table())
    for source, body in (("forwarded", [order_completed()]),
                         ("rudder", {"batch": [order_completed()]})):
        result = invoke("preview", "--config", str(config), "--source", source,
                        "--destination", "meta", input=json.dumps(body))
        assert result.exit_code == 0, result.stderr
        (event,) = json.loads(result.stdout)["data"]
        assert event["event_id"] == "msg-order-1"


def test_preview_exits_1_with_the_reason_when_the_destination_would_refuse(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, meta_table())
    result = invoke("preview", "--config", str(config), "--source", "seg",
                    "--destination", "meta",
                    input=json.dumps(order_completed(revenue=None)))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "Purchase without value" in result.stderr
    assert "contract violation: purchase requires value" in result.stderr


def test_preview_exits_1_for_an_event_too_old_for_the_platform(tmp_path: Path) -> None:
    config = write_config(tmp_path, meta_table())
    message = order_completed()
    message["timestamp"] = iso(datetime.now(UTC) - timedelta(days=30))
    result = invoke("preview", "--config", str(config), "--source", "seg",
                    "--destination", "meta", input=json.dumps(message))
    assert result.exit_code == 1
    assert "days ago; the platform accepts at most" in result.stderr


@pytest.mark.parametrize(("source", "body", "reason"), [
    ("web", '{"event": "purchase", "valu": 1}', "ingest would refuse it: invalid event: "
                                                "$.valu: unknown field"),
    ("web", '{"event": "purchase"', "ingest would refuse it: malformed JSON"),
    ("seg", '{"type": "track", "userId": "u"}', "a track call needs a non-empty event name"),
    ("seg", '{"type": "track", "event": "x"}', "userId or anonymousId is required"),
])
def test_preview_exits_1_for_what_ingest_would_refuse(
    tmp_path: Path, source: str, body: str, reason: str
) -> None:
    config = write_config(tmp_path, hook_table("https://hooks.example/in"))
    result = invoke("preview", "--config", str(config), "--source", source,
                    "--destination", "hook", input=body)
    assert result.exit_code == 1
    assert reason in result.stderr and result.stdout == ""


def test_preview_exits_1_for_a_dropped_event(tmp_path: Path) -> None:
    config = write_config(tmp_path, hook_table("https://hooks.example/in"))
    config.write_text(config.read_text().replace('token = "web-token-1"',
                                                 'token = "web-token-1"\nallow = ["lead"]'))
    result = invoke("preview", "--config", str(config), "--source", "web",
                    "--destination", "hook", input=json.dumps(purchase()))
    assert result.exit_code == 1
    assert "the event is dropped: not in the allowlist of source web" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "web", "--destination", "nope"], "no destination 'nope' in the config"),
    (["--source", "nope", "--destination", "hook"], "no source 'nope' in the config"),
    (["--destination", "hook"], "give --source: the config has 2 sources"),
])
def test_preview_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    config = write_config(tmp_path, hook_table("https://hooks.example/in"))
    result = invoke("preview", "--config", str(config), *args, input=json.dumps(purchase()))
    assert result.exit_code == 2
    assert message in result.stderr


def test_preview_config_errors_and_batches_of_several_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nlisen = 1\n")
    result = invoke("preview", "--config", str(bad), "--destination", "x", input="{}")
    assert result.exit_code == 2 and "server.lisen: unknown key" in result.stderr
    config = write_config(tmp_path, hook_table("https://hooks.example/in"))
    two = {"events": [purchase("a"), purchase("b")]}
    result = invoke("preview", "--config", str(config), "--source", "web",
                    "--destination", "hook", input=json.dumps(two))
    assert result.exit_code == 2 and "preview takes one event; the batch has 2" in result.stderr


def test_preview_reads_the_config_from_the_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path, hook_table("https://hooks.example/in"))
    result = CliRunner().invoke(cli, ["preview", "--source", "web", "--destination", "hook"],
                                input=json.dumps(purchase()),
                                env={"TRACKLAYERD_CONFIG": str(config)})
    assert result.exit_code == 0, result.stderr


async def test_preview_output_equals_what_the_fake_receives_for_the_same_input(
    tmp_path: Path, aiohttp_server: Any, make_client: ClientFactory,
) -> None:
    fake = FakeMeta(access_token=META_TOKEN)
    server = await aiohttp_server(fake.app)
    endpoint = str(server.make_url(f"/v24.0/{PIXEL}/events"))
    path = write_config(tmp_path, meta_table(endpoint=endpoint))
    message = order_completed("msg-acceptance-1")

    preview = await invoke_in_thread("preview", "--config", str(path), "--source", "seg",
                                     "--destination", "meta", input=json.dumps(message))
    assert preview.exit_code == 0, preview.stderr

    client = await make_client(load_config(path))
    response = await client.post("/v1/track", json=message,
                                 headers={"X-Write-Key": WRITE_KEY})
    assert response.status == 200
    await processor_of(client).run_until_idle()
    await client.app[SCHEDULER].run_until_idle()

    (received,) = fake.requests
    assert fake.accepted, received.body
    assert json.loads(received.body) == json.loads(preview.stdout)
    # Byte for byte; preview adds one newline.
    assert preview.stdout_bytes == received.body + b"\n"


# --- replay --------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook endpoint answering the scripted statuses (then 200), recording bodies."""

    statuses: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text='{"ok": true}' if status == 200 else "no")

    def event_ids(self, index: int) -> list[str]:
        return [e["event_id"] for e in json.loads(self.bodies[index])["events"]]


async def start_receiver(aiohttp_server: Any, receiver: Receiver) -> str:
    app = web.Application()
    app.router.add_post("/in", receiver.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/in"))


async def records(store: SQLiteStore, event_ids: list[str]) -> list[DeliveryRecord]:
    found = []
    for stored in await store.events_for("web", event_ids):
        found += await store.delivery_records(stored.id)
    return found


async def test_replay_requeues_dead_deliveries_with_the_same_payload(
    tmp_path: Path, aiohttp_server: Any, make_client: ClientFactory,
) -> None:
    receiver = Receiver(statuses=[400, 400, 400])  # the batch, then each half alone
    endpoint = await start_receiver(aiohttp_server, receiver)
    path = write_config(tmp_path, hook_table(endpoint))
    client = await make_client(load_config(path))
    ids = ["ord-1", "ord-2"]
    # Distinct orders: the same order twice is one purchase (deduplicated).
    events = [purchase(i, order_id=f"order-{i}") for i in ids]
    response = await client.post("/v1/events", json={"events": events},
                                 headers=auth(WEB_TOKEN))
    assert response.status == 200
    await processor_of(client).run_until_idle()
    scheduler = client.app[SCHEDULER]
    await scheduler.run_until_idle()
    store = store_of(client)
    dead = await records(store, ids)
    assert [r.status for r in dead] == ["dead", "dead"]

    result = await invoke_in_thread("replay", "--config", str(path), "--destination", "hook",
                                    "--yes")
    assert result.exit_code == 0, result.output
    assert "2 deliveries of hook in status dead" in result.stdout
    assert "re-queued 2 deliveries of hook" in result.stdout
    assert "within 30 s" in result.stdout
    again = await records(store, ids)
    assert [r.status for r in again] == ["pending", "pending"]
    assert [r.payload for r in again] == [r.payload for r in dead]

    await scheduler.run_until_idle()
    assert [r.status for r in await records(store, ids)] == ["delivered", "delivered"]
    # The same bytes as the first attempt: same event ids, and the receiver can dedup.
    assert receiver.bodies[-1] == receiver.bodies[0]
    assert receiver.event_ids(-1) == ids

    # Nothing left in status dead.
    result = await invoke_in_thread("replay", "--config", str(path), "--destination", "hook",
                                    "--yes")
    assert result.exit_code == 0 and "nothing to re-queue" in result.stdout

    # Delivered ones go again only with --force.
    result = await invoke_in_thread("replay", "--config", str(path), "--destination", "hook",
                                    "--status", "delivered", "--yes")
    assert result.exit_code == 2 and "needs --force" in result.stderr
    result = await invoke_in_thread("replay", "--config", str(path), "--destination", "hook",
                                    "--status", "delivered", "--force", "--yes")
    assert result.exit_code == 0 and "re-queued 2 deliveries" in result.stdout


async def fill_store(config: Config, rows: list[InboxRow]) -> SQLiteStore:
    """Inbox rows through the real processor (and scheduler, for live destinations)."""
    store = SQLiteStore(Path(config.storage.path))
    await store.open()
    await store.append_inbox(rows)
    destinations = create_destinations(config)
    await Processor(store, Pipeline(config, destinations)).run_until_idle()
    scheduler = Scheduler(store, list(destinations.values()))
    await scheduler.run_until_idle()
    await scheduler.stop(0)
    return store


def native_row(event_id: str, received_at: float, **fields: Any) -> InboxRow:
    return InboxRow(source="web", message_id=event_id, kind="native", received_at=received_at,
                    payload=json.dumps(purchase(event_id, order_id=event_id, **fields)).encode())


async def test_replay_since_rebuild_and_confirmation(tmp_path: Path) -> None:
    # Meta refuses a purchase without value before sending: dead, with no payload.
    path = write_config(tmp_path, meta_table())
    now = datetime.now(UTC).timestamp()
    store = await fill_store(load_config(path), [
        native_row("old", now - 3 * 86400, value=None),
        native_row("new", now - 3600, value=None),
    ])
    assert [r.status for r in await records(store, ["old", "new"])] == ["dead", "dead"]

    result = await invoke_in_thread("replay", "--config", str(path), "--destination", "meta",
                                    "--since", "1d")
    assert result.exit_code == 1 and "Aborted" in result.output  # no answer to the question
    assert [r.status for r in await records(store, ["old", "new"])] == ["dead", "dead"]

    result = await invoke_in_thread("replay", "--config", str(path), "--destination", "meta",
                                    "--since", "1d", "--rebuild", input="y\n")
    assert result.exit_code == 0, result.output
    assert "1 delivery of meta in status dead since 1d" in result.stdout
    assert "re-queued 1 delivery of meta" in result.stdout
    old, new = await records(store, ["old", "new"])
    assert (old.status, new.status) == ("dead", "pending")

    since = iso(datetime.now(UTC) - timedelta(days=5))
    result = await invoke_in_thread("replay", "--config", str(path), "--destination", "meta",
                                    "--since", since, "--yes")
    assert result.exit_code == 0 and "re-queued 1 delivery of meta" in result.stdout
    await store.close()


async def test_replay_of_observed_deliveries_warns_that_they_become_real_sends(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path, meta_table(mode="observe"))
    store = await fill_store(load_config(path),
                             [native_row("obs-1", datetime.now(UTC).timestamp())])
    (before,) = await records(store, ["obs-1"])
    assert before.status == "observed" and before.payload is not None
    result = await invoke_in_thread("replay", "--config", str(path), "--destination", "meta",
                                    "--status", "observed", "--yes")
    assert result.exit_code == 0, result.output
    assert "observed deliveries become real sends" in result.stderr
    assert "destination meta is in mode observe" in result.stderr
    (after,) = await records(store, ["obs-1"])
    assert (after.status, after.payload) == ("pending", before.payload)
    await store.close()


@pytest.mark.parametrize(("args", "message"), [
    (["--destination", "nope"], "no destination 'nope'"),
    (["--destination", "meta", "--since", "yesterday"], "neither an ISO 8601 time"),
    (["--destination", "meta", "--status", "pending"], "'pending' is not one of"),
    (["--destination", "meta", "--status", "suppressed"], "--status suppressed needs --force"),
    (["--destination", "meta"], "no store at"),
])
def test_replay_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    path = write_config(tmp_path, meta_table())
    result = invoke("replay", "--config", str(path), "--yes", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "tl.sqlite3").exists()  # a wrong path creates no empty store


def test_parse_since() -> None:
    assert parse_since("24h", 100_000.0) == 100_000.0 - 86400
    assert parse_since("90m", 10_000.0) == 10_000.0 - 5400
    assert parse_since("2026-01-31T12:00:00Z", 0.0) == datetime(
        2026, 1, 31, 12, tzinfo=UTC).timestamp()
    assert parse_since("2026-01-31", 0.0) == datetime(2026, 1, 31, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError, match="neither"):
        parse_since("last week", 0.0)


# --- send-test -----------------------------------------------------------------------------


async def test_send_test_to_a_webhook_prints_the_answer(
    tmp_path: Path, aiohttp_server: Any,
) -> None:
    receiver = Receiver()
    path = write_config(tmp_path, hook_table(await start_receiver(aiohttp_server, receiver)))
    result = await invoke_in_thread("send-test", "--config", str(path), "--destination", "hook")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == ["HTTP 200", '{"ok": true}']
    assert "purchase: delivered" in result.stdout
    (body,) = receiver.bodies
    identify, order = json.loads(body)["events"]
    assert identify["message_type"] == "identify"
    assert order["event"] == "purchase" and order["value"] == 1.0 and order["currency"] == "USD"
    assert order["order_id"].startswith("tracklayerd-test-")
    assert order["user"]["email"] == identify["user"]["email"] == "test@example.com"
    assert not (tmp_path / "tl.sqlite3").exists()  # not through the store


async def test_send_test_exits_1_with_the_platforms_words(
    tmp_path: Path, aiohttp_server: Any,
) -> None:
    receiver = Receiver(statuses=[422])
    path = write_config(tmp_path, hook_table(await start_receiver(aiohttp_server, receiver)))
    result = await invoke_in_thread("send-test", "--config", str(path), "--destination", "hook")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[:2] == ["HTTP 422", "no"]
    assert "purchase: rejected: HTTP 422: no" in result.stdout


async def test_send_test_to_meta_uses_the_test_event_code(
    tmp_path: Path, aiohttp_server: Any,
) -> None:
    fake = FakeMeta(access_token=META_TOKEN)
    server = await aiohttp_server(fake.app)
    endpoint = str(server.make_url(f"/v24.0/{PIXEL}/events"))
    path = write_config(tmp_path, meta_table(endpoint=endpoint, test_event_code="TEST123"))
    result = await invoke_in_thread("send-test", "--config", str(path), "--destination", "meta")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("HTTP 200\n")
    assert json.loads(result.stdout.splitlines()[1])["events_received"] == 1
    assert "identify: not sent" in result.stderr
    assert "test event code TEST123" in result.stderr
    (accepted,) = fake.accepted
    assert accepted.body["test_event_code"] == "TEST123"
    (event,) = accepted.events
    assert event["event_name"] == "Purchase" and event["custom_data"]["value"] == 1.0
    assert META_TOKEN not in result.output

    result = await invoke_in_thread("send-test", "--config", str(path), "--destination", "meta",
                                    "--test-event-code", "OVERRIDE9")
    assert result.exit_code == 0, result.output
    assert fake.accepted[-1].body["test_event_code"] == "OVERRIDE9"


async def test_send_test_to_meta_without_a_test_event_code_needs_live(
    tmp_path: Path, aiohttp_server: Any,
) -> None:
    fake = FakeMeta(access_token=META_TOKEN)
    server = await aiohttp_server(fake.app)
    path = write_config(tmp_path, meta_table(
        endpoint=str(server.make_url(f"/v24.0/{PIXEL}/events"))))
    result = await invoke_in_thread("send-test", "--config", str(path), "--destination", "meta")
    assert result.exit_code == 2
    assert "has no test_event_code" in result.stderr and "--live" in result.stderr
    assert fake.requests == []
    result = await invoke_in_thread("send-test", "--config", str(path), "--destination", "meta",
                                    "--live")
    assert result.exit_code == 0, result.output
    assert "counts this test purchase as a real conversion" in result.stderr
    (accepted,) = fake.accepted
    assert "test_event_code" not in accepted.body


def test_send_test_code_for_a_type_without_one_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, hook_table("https://hooks.example/in"))
    result = invoke("send-test", "--config", str(path), "--destination", "hook",
                    "--test-event-code", "X")
    assert result.exit_code == 2
    assert "destination type webhook has no test event code" in result.stderr
