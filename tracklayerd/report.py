"""The parallel-validation report: ``tracklayerd report`` and the status page's summary.

Two parts, both read-only:

* :func:`build_report`: per destination and canonical event, what arrived, was suppressed
  (consent, or the delivery ledger), was delivered or would have been (observe mode), died
  or still waits; value totals per currency and mean match quality of what went (or would
  go) out; per canonical event, how many were accepted, deduplicated, dropped or invalid.
* :func:`reconcile`: an export of what the old route sent, or of the shop's orders,
  against what tracklayerd sent (or would have sent), per order id or event id: what is
  missing on either side, every value and currency mismatch, and totals.

Only ids, values, currencies and counts are ever shown: never identifiers of a person.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from tracklayerd.store.base import EventTally, ReportItem, ReportTally, Store

SENT = ("delivered", "observed")
QUEUED = ("pending", "in_flight", "retrying")
TOLERANCE = 0.01  # a value difference up to this (in the currency's units) is a match
DEFAULT_EVENT = "purchase"  # what an export row without an event column is
TABLE_DIFFERENCES = 100  # the table lists this many; csv and json list them all

KeyKind = Literal["order_id", "event_id"]
Key = tuple[str, KeyKind, str]  # (canonical event, kind, id)


# --- the report ----------------------------------------------------------------------------


class ValueTotal(msgspec.Struct, kw_only=True):
    currency: str | None  # None: events with a value and no currency
    events: int
    value: float


class EventRow(msgspec.Struct, kw_only=True):
    """Events received in the window with one canonical name, by event status."""

    event: str | None  # None: records that could not be decoded
    received: int
    accepted: int
    duplicate: int  # business deduplication: delivered nowhere (docs/dedup.md)
    dropped: int  # not in the source's allowlist
    invalid: int


class DestinationRow(msgspec.Struct, kw_only=True):
    """One destination and canonical event (event "*": all of the destination's events)."""

    destination: str
    event: str
    arrived: int  # delivery rows: every event the destination was to get
    delivered: int  # sent, and the platform accepted it
    observed: int  # would have been sent: the destination was in observe mode
    consent_suppressed: int  # not sent: consent denied it
    ledger_suppressed: int  # not sent: the destination had accepted its event id already
    consent_limited: int  # of delivered + observed: sent without personal data (consent)
    dead: int
    queued: int  # pending, in flight or retrying
    match_quality: float | None  # mean score (0-10) of delivered + observed; None: none
    values: list[ValueTotal]  # of delivered + observed events, per currency


class Report(msgspec.Struct, kw_only=True):
    generated_at: float  # unix seconds
    since: float | None  # the window, on events.received_at: since <= t < until
    until: float | None
    destination: str | None  # None: every destination
    events: list[EventRow]
    rows: list[DestinationRow]  # per destination and canonical event
    totals: list[DestinationRow]  # per destination (event "*")


class _Acc:
    """Sums for one DestinationRow."""

    __slots__ = ("counts", "quality", "scored", "values")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(
            ("arrived", "delivered", "observed", "consent_suppressed", "ledger_suppressed",
             "consent_limited", "dead", "queued"), 0)
        self.scored = 0
        self.quality = 0.0
        self.values: dict[str | None, list[float]] = {}

    def add(self, tally: ReportTally) -> None:
        counts, n = self.counts, tally.deliveries
        counts["arrived"] += n
        if tally.status in ("delivered", "observed", "dead"):
            counts[tally.status] += n
        elif tally.status == "suppressed":
            counts["consent_suppressed" if tally.consent == "suppressed"
                   else "ledger_suppressed"] += n
        elif tally.status in QUEUED:
            counts["queued"] += n
        if tally.status not in SENT:
            return
        if tally.consent == "limited":
            counts["consent_limited"] += n
        self.scored += tally.scored
        self.quality += tally.quality
        if tally.valued:
            total = self.values.setdefault(_currency(tally.currency), [0, 0.0])
            total[0] += tally.valued
            total[1] += tally.value

    def row(self, destination: str, event: str) -> DestinationRow:
        return DestinationRow(
            destination=destination, event=event, **self.counts,
            match_quality=round(self.quality / self.scored, 2) if self.scored else None,
            values=_value_totals((c, int(t[0]), t[1]) for c, t in self.values.items()),
        )


def _currency(code: str | None) -> str | None:
    code = (code or "").strip().upper()
    return code or None


def _value_totals(triples: Iterable[tuple[str | None, int, float]]) -> list[ValueTotal]:
    return [ValueTotal(currency=c, events=n, value=round(v, 4))
            for c, n, v in sorted(triples, key=lambda t: (t[0] is None, t[0] or ""))]


def summarize(
    tallies: Sequence[ReportTally], event_tallies: Sequence[EventTally], *,
    since: float | None, until: float | None, destination: str | None,
    generated_at: float,
) -> Report:
    """The Report from the store's tallies (pure)."""
    rows: dict[tuple[str, str], _Acc] = {}
    totals: dict[str, _Acc] = {}
    for tally in tallies:
        rows.setdefault((tally.destination, tally.event), _Acc()).add(tally)
        totals.setdefault(tally.destination, _Acc()).add(tally)
    events: dict[str | None, dict[str, int]] = {}
    for et in event_tallies:
        counts = events.setdefault(et.event, dict.fromkeys(
            ("accepted", "duplicate", "dropped", "invalid"), 0))
        if et.status in counts:
            counts[et.status] += et.events
    return Report(
        generated_at=generated_at, since=since, until=until, destination=destination,
        events=[EventRow(event=name, received=sum(c.values()), **c)
                for name, c in sorted(events.items(),
                                      key=lambda kv: (kv[0] is None, kv[0] or ""))],
        rows=[acc.row(*key) for key, acc in sorted(rows.items())],
        totals=[acc.row(dest, "*") for dest, acc in sorted(totals.items())],
    )


async def build_report(
    store: Store, *, since: float | None, until: float | None,
    destination: str | None = None,
) -> Report:
    """The report over events received in [since, until) (None: unbounded)."""
    generated_at = time.time()
    tallies = await store.report_tallies(since or 0.0, until, destination)
    event_tallies = await store.report_event_tallies(since or 0.0, until)
    return summarize(tallies, event_tallies, since=since, until=until,
                     destination=destination, generated_at=generated_at)


# --- the export ----------------------------------------------------------------------------


class ExportRow(msgspec.Struct, kw_only=True):
    line: int  # in the file, from 1 (a CSV header is line 1)
    event: str  # canonical name, casefolded
    order_id: str | None = None
    event_id: str | None = None
    value: float | None = None
    currency: str | None = None

    @property
    def key(self) -> Key:
        if self.order_id is not None:
            return (self.event, "order_id", self.order_id)
        assert self.event_id is not None
        return (self.event, "event_id", self.event_id)


class ExportError(Exception):
    """The export cannot be read; the message names the line."""


# Header spellings accepted, after lowercasing and dropping everything but letters and
# digits ("Order ID", "order_id" and "orderId" are all "orderid").
COLUMNS = {
    "orderid": "order_id", "ordernumber": "order_id",
    "eventid": "event_id", "messageid": "event_id",
    "value": "value", "revenue": "value", "total": "value",
    "currency": "currency", "currencycode": "currency",
    "event": "event", "eventname": "event",
}


def _column(name: str) -> str | None:
    return COLUMNS.get("".join(ch for ch in name.lower() if ch.isalnum()))


def read_export(path: str | Path) -> list[ExportRow]:
    """An export as CSV (with a header) or NDJSON (one object a line), by the file's
    extension (.csv; .ndjson, .jsonl, .json) or else its first character."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExportError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from None
    except OSError as exc:
        raise ExportError(f"{path}: {exc.strerror}") from None
    suffix = Path(path).suffix.lower()
    if suffix in (".ndjson", ".jsonl", ".json") or (
            suffix != ".csv" and text.lstrip().startswith("{")):
        return parse_ndjson(text)
    return parse_csv(text)


def parse_csv(text: str) -> list[ExportRow]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise ExportError("line 1: the file is empty (a CSV export needs a header)")
        columns = [_column(name) for name in header]
        if "order_id" not in columns and "event_id" not in columns:
            raise ExportError(f"line 1: the header has no order_id or event_id column "
                              f"(it has: {', '.join(header) or 'nothing'})")
        rows = []
        for cells in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            fields = {col: cell for col, cell in zip(columns, cells, strict=False)
                      if col is not None}
            rows.append(_row(line, fields))
        return rows
    except csv.Error as exc:
        raise ExportError(f"line {reader.line_num}: {exc}") from None


def parse_ndjson(text: str) -> list[ExportRow]:
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            data = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise ExportError(f"line {line}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ExportError(f"line {line}: not a JSON object")
        fields = {col: value for name, value in data.items()
                  if (col := _column(str(name))) is not None}
        rows.append(_row(line, fields))
    return rows


def _row(line: int, fields: dict[str, Any]) -> ExportRow:
    order_id = _id(line, "order_id", fields.get("order_id"))
    event_id = _id(line, "event_id", fields.get("event_id"))
    if order_id is None and event_id is None:
        raise ExportError(f"line {line}: neither an order_id nor an event_id")
    event = _text(line, "event", fields.get("event"))
    currency = _text(line, "currency", fields.get("currency"))
    # Interned: an export of every order of a year repeats a few names and currencies.
    code = _currency(currency)
    return ExportRow(line=line, event=sys.intern((event or DEFAULT_EVENT).casefold()),
                     order_id=order_id, event_id=event_id,
                     value=_value(line, fields.get("value")),
                     currency=None if code is None else sys.intern(code))


def _id(line: int, name: str, raw: Any) -> str | None:
    if isinstance(raw, (bool, dict, list)):
        raise ExportError(f"line {line}: {name} must be a string or a number")
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)  # 1001.0 in a JSON export is order 1001, as tracklayerd stores it
    text = None if raw is None else str(raw).strip()
    return text or None


def _text(line: int, name: str, raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ExportError(f"line {line}: {name} must be a string")
    return raw.strip() or None


def _value(line: int, raw: Any) -> float | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, bool):
        raise ExportError(f"line {line}: value must be a number, not {raw!r}")
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise ExportError(f"line {line}: value {raw!r} is not a number (use a plain decimal: "
                          "1234.50)") from None
    if not math.isfinite(value):
        raise ExportError(f"line {line}: value {raw!r} is not a number")
    return value


# --- the reconciliation --------------------------------------------------------------------

DifferenceKind = Literal[
    "missing_in_tracklayerd", "missing_in_export", "value_mismatch", "currency_mismatch",
    "duplicate_in_export", "duplicate_in_tracklayerd",
]


class Difference(msgspec.Struct, kw_only=True):
    kind: DifferenceKind
    event: str
    key: KeyKind
    id: str
    line: int | None = None  # the export's row (its first, for a duplicate)
    event_row: int | None = None  # tracklayerd's event (its trace: /-/events/{event_row})
    export_value: float | None = None
    export_currency: str | None = None
    tracklayerd_value: float | None = None
    tracklayerd_currency: str | None = None
    # missing_in_tracklayerd: what tracklayerd did with it instead: not_received, queued,
    # dead, consent_suppressed, ledger_suppressed, no_delivery, duplicate, dropped.
    tracklayerd_status: str | None = None


class Side(msgspec.Struct, kw_only=True):
    rows: int  # export: rows compared; tracklayerd: events sent (or observed) in the window
    values: list[ValueTotal]


class Reconciliation(msgspec.Struct, kw_only=True):
    destination: str | None  # None: sent (or observed) to any destination
    events: list[str]  # the canonical events compared
    tolerance: float
    export: Side
    tracklayerd: Side
    matched: int  # export rows tracklayerd sent (or observed)
    matched_outside_window: int  # of them: received by tracklayerd outside the window
    missing_in_tracklayerd: int
    missing_in_export: int
    value_mismatches: int
    currency_mismatches: int
    duplicates: int  # duplicate_in_export + duplicate_in_tracklayerd
    matches: bool  # no difference at all: the cut-over gate
    differences: list[Difference]


# What tracklayerd did with an event, the most telling first: sent (or observed), else why
# not. An event with several deliveries (every destination compared) counts by its best.
OUTCOMES = ("sent", "queued", "dead", "consent_suppressed", "ledger_suppressed", "no_delivery",
            "duplicate", "dropped")
RANK = {outcome: rank for rank, outcome in enumerate(OUTCOMES)}


class _Event:
    """One tracklayerd event and what happened to it for the destination(s) compared."""

    __slots__ = ("item", "rank")

    def __init__(self, item: ReportItem, rank: int) -> None:
        self.item = item
        self.rank = rank

    @property
    def sent(self) -> bool:
        return self.rank == 0


def _outcome(item: ReportItem) -> str:
    if item.status != "accepted":
        return item.status  # duplicate, dropped
    if item.delivery is None:
        return "no_delivery"
    if item.delivery in SENT:
        return "sent"
    if item.delivery in QUEUED:
        return "queued"
    if item.delivery == "suppressed":
        return "consent_suppressed" if item.consent == "suppressed" else "ledger_suppressed"
    return item.delivery  # dead


def _events(items: Iterable[ReportItem]) -> dict[int, _Event]:
    events: dict[int, _Event] = {}
    last = len(OUTCOMES)
    for item in items:
        rank = RANK.get(_outcome(item), last)
        event = events.get(item.event_row)
        if event is None:
            events[item.event_row] = _Event(item, rank)
        elif rank < event.rank:
            event.rank = rank
    return events


def _keys(event: ReportItem) -> Iterator[Key]:
    name = event.event.casefold()
    if event.order_id is not None:
        yield (name, "order_id", event.order_id.strip())
    yield (name, "event_id", event.event_id)


def export_events(rows: Sequence[ExportRow]) -> list[str]:
    return sorted({row.event for row in rows}) or [DEFAULT_EVENT]


def reconcile(
    report_rows: Sequence[ReportItem], against_rows: Sequence[ExportRow], *,
    destination: str | None = None, elsewhere: Sequence[ReportItem] = (),
    tolerance: float = TOLERANCE,
) -> Reconciliation:
    """Compare an export with tracklayerd's events (pure).

    `report_rows`: the store's report_items() for the window, the export's events and the
    destination; `elsewhere`: report_items_by_id() for the export's keys the window lacks.
    An export row is keyed by its order id, else its event id, and matches the tracklayerd
    events of the same canonical name with that key that were sent (or observed).
    """
    window = _events(report_rows)
    outside = {row: event for row, event in _events(elsewhere).items() if row not in window}
    by_key: dict[Key, list[_Event]] = {}
    for event in (*window.values(), *outside.values()):
        for key in _keys(event.item):
            by_key.setdefault(key, []).append(event)

    differences: list[Difference] = []
    seen: dict[Key, ExportRow] = {}
    claimed: set[int] = set()
    matched = matched_outside = 0
    for row in against_rows:
        key = row.key
        if key in seen:
            differences.append(_difference("duplicate_in_export", row))
            continue
        seen[key] = row
        candidates = by_key.get(key, [])
        if len(candidates) > 1:
            candidates.sort(key=lambda e: e.item.event_row)
        claimed.update(e.item.event_row for e in candidates)
        sent = [e.item for e in candidates if e.sent]
        if not sent:
            telling = min(candidates, key=lambda e: e.rank, default=None)
            differences.append(_difference(
                "missing_in_tracklayerd", row,
                event_row=None if telling is None else telling.item.event_row,
                tracklayerd_status="not_received" if telling is None
                else OUTCOMES[telling.rank] if telling.rank < len(OUTCOMES)
                else _outcome(telling.item)))
            continue
        matched += 1
        first = sent[0]
        if first.event_row in outside:
            matched_outside += 1
        differences.extend(_difference("duplicate_in_tracklayerd", row, extra)
                           for extra in sent[1:])
        if row.value is not None and (first.value is None or abs(
                row.value - first.value) > tolerance + 1e-9):
            differences.append(_difference("value_mismatch", row, first))
        if row.currency is not None and row.currency != _currency(first.currency):
            differences.append(_difference("currency_mismatch", row, first))

    uses_orders = any(row.order_id is not None for row in against_rows)
    sent_in_window = sorted((e for e in window.values() if e.sent),
                            key=lambda e: e.item.event_row)
    for event in sent_in_window:
        if event.item.event_row in claimed:
            continue
        item = event.item
        key_kind: KeyKind = "order_id" if uses_orders and item.order_id is not None \
            else "event_id"
        differences.append(Difference(
            kind="missing_in_export", event=item.event.casefold(), key=key_kind,
            id=item.order_id if key_kind == "order_id" and item.order_id else item.event_id,
            event_row=item.event_row, tracklayerd_value=item.value,
            tracklayerd_currency=_currency(item.currency)))

    kinds = [d.kind for d in differences]
    return Reconciliation(
        destination=destination, events=export_events(against_rows), tolerance=tolerance,
        export=Side(rows=len(against_rows), values=_totals(
            (r.currency, r.value) for r in against_rows)),
        tracklayerd=Side(rows=len(sent_in_window), values=_totals(
            (_currency(e.item.currency), e.item.value) for e in sent_in_window)),
        matched=matched, matched_outside_window=matched_outside,
        missing_in_tracklayerd=kinds.count("missing_in_tracklayerd"),
        missing_in_export=kinds.count("missing_in_export"),
        value_mismatches=kinds.count("value_mismatch"),
        currency_mismatches=kinds.count("currency_mismatch"),
        duplicates=kinds.count("duplicate_in_export") + kinds.count("duplicate_in_tracklayerd"),
        matches=not differences, differences=differences,
    )


def _difference(kind: DifferenceKind, row: ExportRow, item: ReportItem | None = None,
                **more: Any) -> Difference:
    _, key_kind, ident = row.key
    if item is not None:
        more.update(event_row=item.event_row, tracklayerd_value=item.value,
                    tracklayerd_currency=_currency(item.currency))
    return Difference(kind=kind, event=row.event, key=key_kind, id=ident, line=row.line,
                      export_value=row.value, export_currency=row.currency, **more)


def _totals(pairs: Iterable[tuple[str | None, float | None]]) -> list[ValueTotal]:
    sums: dict[str | None, list[float]] = {}
    for currency, value in pairs:
        if value is not None:
            total = sums.setdefault(currency, [0, 0.0])
            total[0] += 1
            total[1] += value
    return _value_totals((c, int(t[0]), t[1]) for c, t in sums.items())


async def compare(
    store: Store, rows: Sequence[ExportRow], *, since: float | None, until: float | None,
    destination: str | None = None, tolerance: float = TOLERANCE,
) -> Reconciliation:
    """Reconcile an export with the store: the window's events first, then (by id, in any
    window) the export's keys the window lacks, so an order received just outside the
    window is not reported missing."""
    names = export_events(rows)
    items = await store.report_items(since or 0.0, until, names, destination)
    first = reconcile(items, rows, destination=destination, tolerance=tolerance)
    # Only what the window has no trace of: an order found there but not sent (dead,
    # suppressed, ...) is explained already.
    missing = [d for d in first.differences if d.tracklayerd_status == "not_received"]
    if not missing:
        return first
    elsewhere = await store.report_items_by_id(
        names, [d.id for d in missing if d.key == "order_id"],
        [d.id for d in missing if d.key == "event_id"], destination)
    return reconcile(items, rows, destination=destination, elsewhere=elsewhere,
                     tolerance=tolerance)


# --- output --------------------------------------------------------------------------------


class Output(msgspec.Struct, kw_only=True):
    """What --format json prints."""

    report: Report
    reconciliation: Reconciliation | None = None


def render(report: Report, reconciliation: Reconciliation | None, fmt: str,
           against: str | None = None) -> str:
    """The output of --format `fmt` (table, json or csv)."""
    if fmt == "json":
        output = Output(report=report, reconciliation=reconciliation)
        return msgspec.json.format(msgspec.json.encode(output)).decode() + "\n"
    if fmt == "csv":
        return (differences_csv(reconciliation) if reconciliation is not None
                else report_csv(report))
    text = report_table(report)
    if reconciliation is not None:
        text += "\n" + reconciliation_table(reconciliation, against)
    return text


REPORT_COLUMNS = ("destination", "event", "arrived", "delivered", "observed",
                  "consent_suppressed", "ledger_suppressed", "consent_limited", "dead",
                  "queued", "match_quality", "values")
DIFFERENCE_COLUMNS = tuple(f.name for f in msgspec.structs.fields(Difference))


def report_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for row in report.rows:
        writer.writerow([row.destination, row.event, row.arrived, row.delivered, row.observed,
                         row.consent_suppressed, row.ledger_suppressed, row.consent_limited,
                         row.dead, row.queued, _number(row.match_quality),
                         "; ".join(_money(v) for v in row.values)])
    return out.getvalue()


def differences_csv(rec: Reconciliation) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(DIFFERENCE_COLUMNS)
    for d in rec.differences:
        writer.writerow(["" if (v := getattr(d, name)) is None else v
                         for name in DIFFERENCE_COLUMNS])
    return out.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _money(total: ValueTotal) -> str:
    return f"{total.value:.2f} {total.currency or '(no currency)'}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = []
    for cells in (header, *rows):
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return lines


def report_table(report: Report) -> str:
    scope = f"destination {report.destination}" if report.destination else "all destinations"
    if report.since is None and report.until is None:
        window = "all events"
    else:
        window = (f"events received from {_when(report.since) if report.since else 'the first'}"
                  f" until {_when(report.until) if report.until else 'now'}")
    lines = [f"{window}, {scope} (generated {_when(report.generated_at)})", "",
             "Events by canonical name"]
    lines += _table(("event", "received", "accepted", "duplicate", "dropped", "invalid"), [
        (e.event or "(undecodable)", str(e.received), str(e.accepted), str(e.duplicate),
         str(e.dropped), str(e.invalid)) for e in report.events] or [("(none)",) + ("",) * 5],
        right=set(range(1, 6)))
    lines += ["", "Deliveries by destination and canonical event"]
    header = ("destination", "event", "arrived", "delivered", "observed*", "consent-supp",
              "ledger-supp", "limited", "dead", "queued", "match",
              "value (delivered + observed)")
    table: list[Sequence[str]] = []
    totals = {t.destination: t for t in report.totals}
    for i, row in enumerate(report.rows):
        table.append(_destination_cells(row))
        last = i + 1 == len(report.rows) or report.rows[i + 1].destination != row.destination
        if last:
            table.append(_destination_cells(totals[row.destination]))
    lines += _table(header, table or [("(none)",) + ("",) * 11], right=set(range(2, 11)))
    lines += ["", "* observed: would have been sent; the destination is in observe mode and "
                  "sent nothing.",
              "  consent-supp: consent denied it; ledger-supp: the destination had accepted "
              "its event id already;",
              "  limited: sent (or observed) without personal data; match: mean match "
              "quality (0-10) of what was (or would be) sent."]
    return "\n".join(lines) + "\n"


def _destination_cells(row: DestinationRow) -> tuple[str, ...]:
    return (row.destination, "(all)" if row.event == "*" else row.event, str(row.arrived),
            str(row.delivered), str(row.observed), str(row.consent_suppressed),
            str(row.ledger_suppressed), str(row.consent_limited), str(row.dead),
            str(row.queued), _number(row.match_quality) or "-",
            ", ".join(_money(v) for v in row.values) or "-")


def reconciliation_table(rec: Reconciliation, against: str | None = None) -> str:
    scope = (f"destination {rec.destination}" if rec.destination
             else "any destination")
    lines = [f"Reconciliation{f' with {against}' if against else ''}: "
             f"{', '.join(rec.events)}, sent or observed to {scope}, value tolerance "
             f"{rec.tolerance:g}", ""]
    currencies = sorted({v.currency for v in (*rec.export.values, *rec.tracklayerd.values)},
                        key=lambda c: (c is None, c or ""))
    export = {v.currency: v for v in rec.export.values}
    ours = {v.currency: v for v in rec.tracklayerd.values}
    rows = [("rows", str(rec.export.rows), str(rec.tracklayerd.rows))]
    for currency in currencies:
        label = f"value {currency or '(no currency)'}"
        rows.append((label, _side_value(export.get(currency)), _side_value(ours.get(currency))))
    lines += _table(("", "export", "tracklayerd (window)"), rows, right={1, 2})
    lines += ["",
              f"matched: {rec.matched}" + (f" ({rec.matched_outside_window} received outside "
                                           "the window)" if rec.matched_outside_window else ""),
              f"missing in tracklayerd: {rec.missing_in_tracklayerd}",
              f"missing in the export: {rec.missing_in_export}",
              f"value mismatches: {rec.value_mismatches}",
              f"currency mismatches: {rec.currency_mismatches}",
              f"duplicates: {rec.duplicates}", ""]
    if rec.differences:
        shown = rec.differences[:TABLE_DIFFERENCES]
        lines += _table(
            ("difference", "event", "key", "id", "line", "export", "tracklayerd", "status",
             "event row"),
            [(d.kind, d.event, d.key, d.id, "" if d.line is None else str(d.line),
              _pair(d.export_value, d.export_currency),
              _pair(d.tracklayerd_value, d.tracklayerd_currency),
              d.tracklayerd_status or "", "" if d.event_row is None else str(d.event_row))
             for d in shown], right={4, 8})
        if len(rec.differences) > len(shown):
            lines.append(f"... and {len(rec.differences) - len(shown)} more "
                         "(--format csv lists them all)")
        lines += ["", f"result: {len(rec.differences)} difference(s)"]
    else:
        lines.append("result: everything matches")
    return "\n".join(lines) + "\n"


def _side_value(total: ValueTotal | None) -> str:
    return "-" if total is None else f"{total.value:.2f} ({total.events})"


def _pair(value: float | None, currency: str | None) -> str:
    if value is None and currency is None:
        return "-"
    return " ".join(p for p in ("-" if value is None else f"{value:.2f}", currency) if p)
