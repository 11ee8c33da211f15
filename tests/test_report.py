"""The parallel-validation report (tracklayerd report): computed from a store filled through
the real pipeline (Segment ingest, the processor, the scheduler, a fake Meta), reconciled with
crafted exports (tests/data/report) whose differences are known, and its command line.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from click.testing import CliRunner, Result

from tests.conftest import ClientFactory, store_of
from tests.fakes.meta import FakeMeta
from tests.test_dedup_consent_e2e import (
    HOOK_SECRET,
    META_TOKEN,
    PIXEL,
    WRITE_KEY,
    as_row,
    order_completed,
    run,
    segment_context,
    start_meta,
    track,
    webhook,
)
from tracklayerd import report as reporting
from tracklayerd.cli import cli
from tracklayerd.config import Config, load_config
from tracklayerd.report import (
    DestinationRow,
    Difference,
    EventRow,
    ExportError,
    ExportRow,
    ValueTotal,
)
from tracklayerd.store.base import ReportItem
from tracklayerd.store.sqlite import SQLiteStore

DATA = Path(__file__).parent / "data" / "report"
DAY = 86400.0
# The lines of each order in the crafted exports (the NDJSON has a blank line).
CSV_LINES = {"0999": 2, "1001": 3, "1002": 4, "1003": 5, "1004": 6, "1005": 7, "1006": 8}
NDJSON_LINES = {**CSV_LINES, "1002": 3}


# The CLI runs in these tests and takes over logging (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("restore_logging")


# --- the rig: one live and one observe destination, filled through the pipeline ----------


def write_config(tmp_path: Path, endpoint: str) -> Path:
    """Meta live with consent ["marketing"], and a second Meta dataset in observe mode
    (the migration's shadow); a config file, so the app and the CLI open the same store."""
    path = tmp_path / "tracklayerd.toml"
    path.write_text(
        f'[storage]\npath = "{tmp_path / "tl.sqlite3"}"\n\n'
        f'[sources.shop]\ntype = "segment"\nwrite_key = "{WRITE_KEY}"\n\n'
        f'[sources.hook]\ntype = "segment_webhook"\nshared_secret = "{HOOK_SECRET}"\n\n'
        f'[destinations.meta]\ntype = "meta_capi"\npixel_id = "{PIXEL}"\n'
        f'access_token = "{META_TOKEN}"\nendpoint = "{endpoint}"\nconsent = ["marketing"]\n\n'
        f'[destinations.shadow]\ntype = "meta_capi"\npixel_id = "{PIXEL}"\n'
        f'access_token = "{META_TOKEN}"\nendpoint = "{endpoint}"\nmode = "observe"\n')
    return path


@dataclass
class Rig:
    client: TestClient[Any, Any]
    store: SQLiteStore
    fake: FakeMeta
    config: Config
    path: Path


async def filled(make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path) -> Rig:
    """Orders 1001-1007 now (one repeated by Segment's webhook, one denied by consent, one a
    dead letter at Meta) and order 0999 three days ago."""
    fake, endpoint = await start_meta(aiohttp_server)
    path = write_config(tmp_path, endpoint)
    config = load_config(path)
    client = await make_client(config)
    store = store_of(client)
    denied = segment_context(consent={"categoryPreferences": {"marketing": False}},
                             location={"country": "US"})
    await store.append_inbox([as_row(config, "shop", order_completed(
        "o-0999", "0999", revenue=25.0), time.time() - 3 * DAY)])
    await track(client, order_completed("o-1001", "1001"))  # 59.90 EUR
    await track(client, order_completed("o-1002", "1002", revenue=100.0))
    await track(client, order_completed("o-1003", "1003", revenue=20.0, currency="USD"))
    await track(client, order_completed("o-1004", "1004", revenue=30.0, context=denied))
    await track(client, order_completed("o-1005", "1005", revenue=45.0, currency="USD"))
    await track(client, order_completed("o-1007", "1007", revenue=15.0))
    fake.fail_when_event_id("o-1005")  # Meta refuses it: a dead letter
    await run(client)
    await webhook(client, order_completed("hook-1001", "1001"))  # Segment forwards it too
    await run(client)
    return Rig(client, store, fake, config, path)


async def statuses(store: SQLiteStore, message_id: str) -> dict[str, str]:
    (event,) = await store.events_for("shop", [message_id])
    return dict(await store.deliveries_for(event.id))


async def mean_quality(store: SQLiteStore, destination: str, message_ids: list[str]) -> float:
    scores = []
    for message_id in message_ids:
        (event,) = await store.events_for("shop", [message_id])
        for record in await store.delivery_records(event.id):
            if record.destination == destination:
                assert record.match_quality is not None
                scores.append(record.match_quality)
    return round(sum(scores) / len(scores), 2)


# --- the report -----------------------------------------------------------------------------


async def test_report_counts_what_arrived_was_deduplicated_suppressed_sent_or_observed(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    rig = await filled(make_client, aiohttp_server, tmp_path)
    # The pipeline did what the report is about to count.
    assert await statuses(rig.store, "o-1004") == {"meta": "suppressed", "shadow": "observed"}
    assert await statuses(rig.store, "o-1005") == {"meta": "dead", "shadow": "observed"}
    assert sorted(rig.fake.event_ids) == ["o-0999", "o-1001", "o-1002", "o-1003", "o-1007"]

    report = await reporting.build_report(rig.store, since=None, until=None)

    assert report.events == [EventRow(event="purchase", received=8, accepted=7, duplicate=1,
                                      dropped=0, invalid=0)]
    sent = ["o-0999", "o-1001", "o-1002", "o-1003", "o-1007"]
    everything = [*sent, "o-1004", "o-1005"]
    meta = DestinationRow(
        destination="meta", event="purchase", arrived=7, delivered=5, observed=0,
        consent_suppressed=1, ledger_suppressed=0, consent_limited=0, dead=1, queued=0,
        match_quality=await mean_quality(rig.store, "meta", sent),
        values=[ValueTotal(currency="EUR", events=4, value=199.9),
                ValueTotal(currency="USD", events=1, value=20.0)])
    shadow = DestinationRow(
        destination="shadow", event="purchase", arrived=7, delivered=0, observed=7,
        consent_suppressed=0, ledger_suppressed=0, consent_limited=0, dead=0, queued=0,
        match_quality=await mean_quality(rig.store, "shadow", everything),
        values=[ValueTotal(currency="EUR", events=5, value=229.9),
                ValueTotal(currency="USD", events=2, value=65.0)])
    assert report.rows == [meta, shadow]
    # One canonical event: each destination's total is its only row.
    assert report.totals == [
        DestinationRow(**{**_fields(meta), "event": "*"}),
        DestinationRow(**{**_fields(shadow), "event": "*"}),
    ]
    assert (report.since, report.until, report.destination) == (None, None, None)

    only_meta = await reporting.build_report(rig.store, since=None, until=None,
                                             destination="meta")
    assert only_meta.rows == [meta] and only_meta.destination == "meta"
    assert only_meta.events == report.events  # events belong to no destination


def _fields(row: DestinationRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__struct_fields__}


async def test_the_window_is_on_the_time_events_were_received(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    rig = await filled(make_client, aiohttp_server, tmp_path)
    two_days_ago = time.time() - 2 * DAY

    recent = await reporting.build_report(rig.store, since=two_days_ago, until=None,
                                          destination="meta")
    old = await reporting.build_report(rig.store, since=None, until=two_days_ago,
                                       destination="meta")
    (recent_row,), (old_row,) = recent.rows, old.rows
    assert (recent_row.arrived, recent_row.delivered, recent_row.values) == (6, 4, [
        ValueTotal(currency="EUR", events=3, value=174.9),
        ValueTotal(currency="USD", events=1, value=20.0)])
    assert (old_row.arrived, old_row.delivered, old_row.values) == (1, 1, [
        ValueTotal(currency="EUR", events=1, value=25.0)])
    assert [e.received for e in recent.events] == [7]
    assert [e.received for e in old.events] == [1]
    empty = await reporting.build_report(rig.store, since=time.time() + DAY, until=None)
    assert (empty.events, empty.rows, empty.totals) == ([], [], [])


# --- reconciliation ----------------------------------------------------------------------


def expected_differences(lines: dict[str, int], destination: str) -> list[Difference]:
    """The crafted exports against the filled store, received in the last day."""
    differences = [
        Difference(kind="value_mismatch", event="purchase", key="order_id", id="1002",
                   line=lines["1002"], export_value=110.0, export_currency="EUR",
                   tracklayerd_value=100.0, tracklayerd_currency="EUR"),
        Difference(kind="currency_mismatch", event="purchase", key="order_id", id="1003",
                   line=lines["1003"], export_value=20.0, export_currency="GBP",
                   tracklayerd_value=20.0, tracklayerd_currency="USD"),
    ]
    if destination == "meta":  # what consent and Meta kept from it
        differences += [
            Difference(kind="missing_in_tracklayerd", event="purchase", key="order_id",
                       id="1004", line=lines["1004"], export_value=30.0,
                       export_currency="EUR", tracklayerd_status="consent_suppressed"),
            Difference(kind="missing_in_tracklayerd", event="purchase", key="order_id",
                       id="1005", line=lines["1005"], export_value=45.0,
                       export_currency="USD", tracklayerd_status="dead"),
        ]
    differences += [
        Difference(kind="missing_in_tracklayerd", event="purchase", key="order_id", id="1006",
                   line=lines["1006"], export_value=12.0, export_currency="EUR",
                   tracklayerd_status="not_received"),
        Difference(kind="missing_in_export", event="purchase", key="order_id", id="1007",
                   tracklayerd_value=15.0, tracklayerd_currency="EUR"),
    ]
    return differences


async def event_rows(store: SQLiteStore) -> dict[str, int]:
    rows = {}
    for order in ("0999", "1001", "1002", "1003", "1004", "1005", "1007"):
        (event,) = await store.events_for("shop", [f"o-{order}"])
        rows[order] = event.id
    return rows


@pytest.mark.parametrize(("export", "lines"), [("orders.csv", CSV_LINES),
                                               ("orders.ndjson", NDJSON_LINES)])
@pytest.mark.parametrize("destination", ["shadow", "meta", None])
async def test_reconciliation_lists_exactly_the_known_differences(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path, export: str,
    lines: dict[str, int], destination: str | None,
) -> None:
    rig = await filled(make_client, aiohttp_server, tmp_path)
    rows = reporting.read_export(DATA / export)
    assert [(r.order_id, r.value, r.currency) for r in rows] == [
        ("0999", 25.0, "EUR"), ("1001", 59.9, "EUR"), ("1002", 110.0, "EUR"),
        ("1003", 20.0, "GBP"), ("1004", 30.0, "EUR"), ("1005", 45.0, "USD"),
        ("1006", 12.0, "EUR")]

    rec = await reporting.compare(rig.store, rows, since=time.time() - DAY, until=None,
                                  destination=destination)

    ids = await event_rows(rig.store)
    expected = expected_differences(lines, destination or "any")
    for difference in expected:  # the tracklayerd event each one is about
        if difference.kind != "missing_in_tracklayerd" or difference.id in ("1004", "1005"):
            difference.event_row = ids[difference.id]
    assert rec.differences == expected
    assert (rec.destination, rec.events, rec.tolerance) == (destination, ["purchase"], 0.01)
    # 0999 was received three days ago, outside the window: found by id, and it matches.
    assert (rec.matched, rec.matched_outside_window) == (
        (4, 1) if destination == "meta" else (6, 1))
    assert (rec.missing_in_tracklayerd, rec.missing_in_export, rec.value_mismatches,
            rec.currency_mismatches, rec.duplicates, rec.matches) == (
        3 if destination == "meta" else 1, 1, 1, 1, 0, False)
    assert rec.export == reporting.Side(rows=7, values=[
        ValueTotal(currency="EUR", events=5, value=236.9),
        ValueTotal(currency="GBP", events=1, value=20.0),
        ValueTotal(currency="USD", events=1, value=45.0)])
    # What tracklayerd sent (Meta) or would have sent (the observe-mode shadow) in the window.
    assert rec.tracklayerd == (
        reporting.Side(rows=4, values=[ValueTotal(currency="EUR", events=3, value=174.9),
                                       ValueTotal(currency="USD", events=1, value=20.0)])
        if destination == "meta" else
        reporting.Side(rows=6, values=[ValueTotal(currency="EUR", events=4, value=204.9),
                                       ValueTotal(currency="USD", events=2, value=65.0)]))


async def test_an_export_that_agrees_matches(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    rig = await filled(make_client, aiohttp_server, tmp_path)
    export = tmp_path / "sent.csv"
    # Keyed by event id this time, with the canonical event named: what the old route
    # sent to Meta, for the same events.
    export.write_text("event_id,event,value,currency\no-1001,purchase,59.9,EUR\n"
                      "o-1002,Purchase,100.004,EUR\no-1003,purchase,20,usd\n"
                      "o-1007,purchase,,\n")
    rows = reporting.read_export(export)
    rec = await reporting.compare(rig.store, rows, since=time.time() - DAY, until=None,
                                  destination="meta")
    assert rec.differences == [] and rec.matches
    assert (rec.matched, rec.export.rows, rec.tracklayerd.rows) == (4, 4, 4)


def item(row: int, order_id: str | None, value: float | None = 10.0, *,
         delivery: str | None = "delivered", status: str = "accepted",
         event_id: str | None = None) -> ReportItem:
    return ReportItem(event_row=row, event="purchase", event_id=event_id or f"e-{row}",
                      status=status, received_at=0.0, order_id=order_id, value=value,
                      currency="EUR", destination=None if delivery is None else "meta",
                      delivery=delivery, consent="allowed")


def export_row(line: int, order_id: str, value: float | None = 10.0) -> ExportRow:
    return ExportRow(line=line, event="purchase", order_id=order_id, value=value,
                     currency="EUR")


def test_duplicates_on_either_side_and_the_value_tolerance() -> None:
    rec = reporting.reconcile(
        [item(1, "A"), item(2, "A"), item(3, "B", 10.01), item(4, "C", delivery="pending"),
         item(5, "D", delivery=None, status="duplicate"), item(6, "E", 10.02)],
        [export_row(2, "A"), export_row(3, "A"), export_row(4, "B"), export_row(5, "C"),
         export_row(6, "D"), export_row(7, "E")])
    assert [(d.kind, d.id, d.line, d.event_row, d.tracklayerd_status)
            for d in rec.differences] == [
        ("duplicate_in_tracklayerd", "A", 2, 2, None),  # two events sent for order A
        ("duplicate_in_export", "A", 3, None, None),
        ("missing_in_tracklayerd", "C", 5, 4, "queued"),  # not sent yet
        ("missing_in_tracklayerd", "D", 6, 5, "duplicate"),
        ("value_mismatch", "E", 7, 6, None),  # 0.02 apart; B's 0.01 is within tolerance
    ]
    assert (rec.matched, rec.duplicates, rec.value_mismatches) == (3, 2, 1)


# --- reading exports -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text", "message"), [
    ("bad.csv", "order_id,value\n1,10\n2,ten\n", "line 3: value 'ten' is not a number"),
    ("bad.csv", "id,total\n1,10\n", "line 1: the header has no order_id or event_id column "
                                     "(it has: id, total)"),
    ("bad.csv", "order_id,value\n1,10\n,5\n", "line 3: neither an order_id nor an event_id"),
    ("bad.csv", "", "line 1: the file is empty"),
    ("bad.ndjson", '{"order_id": "1"}\n{"order_id": "2",\n', "line 2: not JSON"),
    ("bad.ndjson", '{"order_id": "1"}\n["2"]\n', "line 2: not a JSON object"),
    ("bad.jsonl", '{"order_id": true}\n', "line 1: order_id must be a string or a number"),
    ("bad.txt", '{"order_id": "1", "value": "1,234.50"}\n',
     "line 1: value '1,234.50' is not a number"),
])
def test_a_bad_export_names_the_line(tmp_path: Path, name: str, text: str,
                                     message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ExportError) as raised:
        reporting.read_export(path)
    assert str(raised.value).startswith(message), str(raised.value)


def test_the_format_is_detected_by_extension_then_content(tmp_path: Path) -> None:
    for name, text in (("a.csv", "order_id\n7\n"), ("b.ndjson", '{"order_id": 7}\n'),
                       ("c.txt", '{"order_id": 7}\n'), ("d", "Order Number\n7\n"),
                       ("e.csv", "\ufefforder_id,currency\r\n7,\r\n")):
        path = tmp_path / name
        path.write_text(text)
        assert [(r.order_id, r.event, r.currency) for r in reporting.read_export(path)] == [
            ("7", "purchase", None)], name


# --- the command line -----------------------------------------------------------------------


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    # Exits are expected; anything else escaping the command is a bug (a traceback).
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


async def report_cli(rig: Rig, *args: str) -> Result:
    # The CLI runs its own event loop: off this one, which serves the app and the fake.
    return await asyncio.to_thread(invoke, "report", "--config", str(rig.path), *args)


async def test_cli_formats_and_exit_statuses(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    rig = await filled(make_client, aiohttp_server, tmp_path)

    table = await report_cli(rig)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].startswith("all events, all destinations (generated ")
    assert lines[3].split() == ["event", "received", "accepted", "duplicate", "dropped",
                                "invalid"]
    assert lines[4].split() == ["purchase", "8", "7", "1", "0", "0"]
    meta = next(line for line in lines if line.startswith("meta ") and "purchase" in line)
    assert meta.split()[:10] == ["meta", "purchase", "7", "5", "0", "1", "0", "0", "1", "0"]
    assert meta.endswith("199.90 EUR, 20.00 USD")
    assert any(line.startswith("* observed: would have been sent") for line in lines)

    as_json = await report_cli(rig, "--format", "json", "--destination", "shadow",
                               "--since", "1d")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert sorted(data) == ["reconciliation", "report"] and data["reconciliation"] is None
    assert sorted(data["report"]) == ["destination", "events", "generated_at", "rows",
                                      "since", "totals", "until"]
    (row,) = data["report"]["rows"]
    assert (row["destination"], row["arrived"], row["observed"], row["values"]) == (
        "shadow", 6, 6, [{"currency": "EUR", "events": 4, "value": 204.9},
                         {"currency": "USD", "events": 2, "value": 65.0}])
    assert data["report"]["until"] is None
    assert abs(data["report"]["since"] - (time.time() - DAY)) < 60

    as_csv = await report_cli(rig, "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(r["destination"], r["event"], r["arrived"], r["dead"], r["values"])
            for r in rows] == [("meta", "purchase", "7", "1", "199.90 EUR; 20.00 USD"),
                               ("shadow", "purchase", "7", "0", "229.90 EUR; 65.00 USD")]

    # With --against: differences exit 1, in every format.
    against = ("--against", str(DATA / "orders.csv"), "--since", "1d",
               "--destination", "shadow")
    table = await report_cli(rig, *against)
    assert table.exit_code == 1, table.output
    assert "Reconciliation with " in table.stdout and "result: 4 difference(s)" in table.stdout
    assert "missing in tracklayerd: 1" in table.stdout
    found = [line.split()[:4] for line in table.stdout.splitlines()
             if line.startswith(("value_", "currency_", "missing_"))]
    assert found == [["value_mismatch", "purchase", "order_id", "1002"],
                     ["currency_mismatch", "purchase", "order_id", "1003"],
                     ["missing_in_tracklayerd", "purchase", "order_id", "1006"],
                     ["missing_in_export", "purchase", "order_id", "1007"]]
    as_json = await report_cli(rig, *against, "--format", "json")
    assert as_json.exit_code == 1
    rec = json.loads(as_json.stdout)["reconciliation"]
    assert (rec["matches"], rec["matched"], len(rec["differences"])) == (False, 6, 4)
    as_csv = await report_cli(rig, *against, "--format", "csv")
    assert as_csv.exit_code == 1
    differences = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(d["kind"], d["id"], d["line"], d["export_value"], d["tracklayerd_value"])
            for d in differences] == [
        ("value_mismatch", "1002", "4", "110.0", "100.0"),
        ("currency_mismatch", "1003", "5", "20.0", "20.0"),
        ("missing_in_tracklayerd", "1006", "8", "12.0", ""),
        ("missing_in_export", "1007", "", "", "15.0")]

    agree = tmp_path / "agree.ndjson"
    agree.write_text("".join(json.dumps({"order_id": o, "value": v, "currency": c}) + "\n"
                             for o, v, c in (("1001", 59.9, "EUR"), ("1002", 100, "EUR"),
                                             ("1003", 20, "USD"), ("1007", 15, "EUR"))))
    matching = await report_cli(rig, "--against", str(agree), "--since", "1d",
                                "--destination", "meta")
    assert matching.exit_code == 0, matching.output
    assert "result: everything matches" in matching.stdout

    # Nothing personal is ever printed: no email, phone, IP or user id.
    for result in (table, as_json, as_csv, matching):
        for personal in ("ada@example.com", "415", "203.0.113", "user-1"):
            assert personal not in result.stdout


async def test_cli_usage_errors_exit_2(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    rig = await filled(make_client, aiohttp_server, tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("order_id,value\n1,10\n2,x\n")
    for args, message in [
        (("--since", "yesterday"), "is neither an ISO 8601 time"),
        (("--since", "1h", "--until", "2h"), "--since must be before --until"),
        (("--destination", "tiktok"), "no destination 'tiktok' in the config "
                                      "(configured: meta, shadow)"),
        (("--against", str(bad)), f"--against {bad}: line 3: value 'x' is not a number"),
        (("--against", str(tmp_path / "nope.csv")), "does not exist"),
        (("--format", "xml"), "Invalid value for '--format'"),
        (("--data-dir", str(tmp_path)), ""),  # the config's path is absolute: still found
    ]:
        result = await report_cli(rig, *args)
        if not message:
            assert result.exit_code == 0, result.output
            continue
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)

    elsewhere = tmp_path / "other.toml"
    elsewhere.write_text(rig.path.read_text().replace(str(tmp_path / "tl.sqlite3"),
                                                      str(tmp_path / "none.sqlite3")))
    result = await asyncio.to_thread(invoke, "report", "--config", str(elsewhere))
    assert result.exit_code == 2 and "no store at" in result.stderr


def test_summarize_sorts_each_state_into_its_column() -> None:
    from tracklayerd.store.base import EventTally, ReportTally

    def tally(status: str, n: int, consent: str | None = None, currency: str | None = None,
              value: float = 0.0, event: str = "purchase") -> ReportTally:
        sent = status in ("delivered", "observed")
        return ReportTally(destination="meta", event=event, status=status, consent=consent,
                           currency=currency, deliveries=n, valued=n if currency else 0,
                           value=value, scored=n, quality=5.0 * n if sent else 0.0)

    report = reporting.summarize(
        [tally("delivered", 3, currency="eur", value=30.0),
         tally("delivered", 1, consent="limited", currency="EUR", value=5.0),
         tally("delivered", 2), tally("suppressed", 2, consent="suppressed"),
         tally("suppressed", 1), tally("pending", 1), tally("retrying", 1),
         tally("in_flight", 1), tally("dead", 1), tally("delivered", 1, event="lead")],
        [EventTally("purchase", "accepted", 14), EventTally("purchase", "duplicate", 2),
         EventTally(None, "invalid", 3), EventTally("page", "dropped", 4)],
        since=1.0, until=2.0, destination=None, generated_at=3.0)
    lead, purchase = report.rows
    assert (purchase.arrived, purchase.delivered, purchase.consent_limited,
            purchase.consent_suppressed, purchase.ledger_suppressed, purchase.queued,
            purchase.dead, purchase.match_quality) == (13, 6, 1, 2, 1, 3, 1, 5.0)
    assert purchase.values == [ValueTotal(currency="EUR", events=4, value=35.0)]
    assert (lead.arrived, lead.values) == (1, [])
    (total,) = report.totals
    assert (total.event, total.arrived, total.delivered) == ("*", 14, 7)
    assert report.events == [
        EventRow(event="page", received=4, accepted=0, duplicate=0, dropped=4, invalid=0),
        EventRow(event="purchase", received=16, accepted=14, duplicate=2, dropped=0,
                 invalid=0),
        EventRow(event=None, received=3, accepted=0, duplicate=0, dropped=0, invalid=3)]
    table = reporting.report_table(report)
    assert "(undecodable)" in table and "35.00 EUR" in table
