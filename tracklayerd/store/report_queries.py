"""The SQL of ``tracklayerd report`` (tracklayerd/report.py), mixed into SQLiteStore.

Everything is aggregated in SQLite: the report must stay usable on millions of events, so
Python only sees a few hundred groups (or, for a reconciliation, the events it compares).
The canonical event body is a BLOB of JSON text; the JSON functions of SQLite before 3.45
refuse BLOBs and later ones read a BLOB as JSONB, hence the CAST to TEXT.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tracklayerd.store import batch
from tracklayerd.store.base import EventTally, ReportItem, ReportTally

SENT_SQL = "('delivered', 'observed')"
VALUE_KEY = "X'2276616C756522'"  # the bytes of '"value"'
CONSENT = ("CASE WHEN d.consent_outcome IN ('suppressed', 'limited')"
           " THEN d.consent_outcome END")
CHUNK = 400  # bound parameters per IN list (SQLite's default limit is 32766 since 3.32)

ITEM_COLUMNS = (
    "e.id, e.name, e.event_id, e.status, e.received_at,"
    " json_extract(CAST(e.body AS TEXT), '$.order_id'),"
    " json_extract(CAST(e.body AS TEXT), '$.value'),"
    " json_extract(CAST(e.body AS TEXT), '$.currency'),"
    " d.destination, d.status, d.consent_outcome"
)


def _window(since: float, until: float | None) -> tuple[str, list[Any]]:
    if until is None:
        return "e.received_at >= ?", [since]
    return "e.received_at >= ? AND e.received_at < ?", [since, until]


def _item(r: Sequence[Any]) -> ReportItem:
    # A reconciliation holds every event of the window: the few distinct names, statuses
    # and currencies are shared instead of repeated per row.
    return ReportItem(
        event_row=int(r[0]), event=_shared(r[1]) or "", event_id=r[2], status=_shared(r[3]) or "",
        received_at=float(r[4]), order_id=None if r[5] is None else str(r[5]),
        value=None if r[6] is None else float(r[6]), currency=_shared(r[7]),
        destination=_shared(r[8]), delivery=_shared(r[9]), consent=_shared(r[10]),
    )


def _shared(value: Any) -> str | None:
    return None if value is None else sys.intern(str(value))


class ReportQueries:
    if TYPE_CHECKING:
        async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]: ...

    async def report_tallies(
        self, since: float, until: float | None, destination: str | None = None
    ) -> list[ReportTally]:
        where, params = _window(since, until)
        if destination is not None:
            where += " AND d.destination = ?"
            params.append(destination)
        # The body is parsed only for delivered and observed rows of events that have a
        # value at all (instr is a byte search, far cheaper than parsing); SQLite's JSON
        # parse cache makes the second json_extract of a body nearly free. LIMIT -1 keeps
        # the subquery from being flattened: flattened, the GROUP BY sorter carries every
        # event body instead of the two values taken from it (a third more CPU on 2M
        # deliveries).
        valued = f"d.status IN {SENT_SQL} AND instr(e.body, {VALUE_KEY})"
        rows = await self._fetchall(
            "SELECT destination, name, status, consent, currency, count(*), count(value),"
            " total(value), count(quality), total(quality) FROM (SELECT d.destination,"
            f" e.name, d.status, {CONSENT} AS consent,"
            f" CASE WHEN {valued} THEN json_extract(CAST(e.body AS TEXT), '$.currency')"
            " END AS currency,"
            f" CASE WHEN {valued} THEN json_extract(CAST(e.body AS TEXT), '$.value')"
            " END AS value, d.match_quality AS quality"
            # CROSS JOIN: from the window's events (received_at index) outwards, so a
            # short window reads only its own rows.
            " FROM events e CROSS JOIN deliveries d ON d.event_row = e.id"
            f" WHERE {where} LIMIT -1) GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
            params)
        return [
            ReportTally(destination=r[0], event=r[1] or "", status=r[2], consent=r[3],
                        currency=r[4], deliveries=int(r[5]), valued=int(r[6]),
                        value=float(r[7]), scored=int(r[8]), quality=float(r[9]))
            for r in rows
        ]

    async def report_event_tallies(self, since: float, until: float | None) -> list[EventTally]:
        where, params = _window(since, until)
        rows = await self._fetchall(
            f"SELECT e.name, e.status, count(*) FROM events e WHERE {where}"
            " GROUP BY 1, 2 ORDER BY 1, 2", params)
        return [EventTally(r[0], r[1], int(r[2])) for r in rows]

    async def report_items(
        self, since: float, until: float | None, events: Sequence[str],
        destination: str | None = None,
    ) -> list[ReportItem]:
        names = sorted({name.casefold() for name in events})
        if not names:
            return []
        where, params = _window(since, until)
        marks = ",".join("?" * len(names))
        on, before = ("AND d.destination = ?", [destination]) if destination else ("", [])
        rows = await self._fetchall(
            f"SELECT {ITEM_COLUMNS} FROM events e"
            f" LEFT JOIN deliveries d ON d.event_row = e.id {on}"
            f" WHERE {where} AND lower(e.name) IN ({marks}) ORDER BY e.id, d.destination",
            [*before, *params, *names])
        return [_item(r) for r in rows]

    async def report_items_by_id(
        self, events: Sequence[str], order_ids: Sequence[str], event_ids: Sequence[str],
        destination: str | None = None,
    ) -> list[ReportItem]:
        names = sorted({name.casefold() for name in events})
        if not names:
            return []
        name_marks = ",".join("?" * len(names))
        on, before = ("AND d.destination = ?", [destination]) if destination else ("", [])
        found: dict[tuple[int, str | None], ReportItem] = {}
        # Event ids use their index. Order ids live only in the body: each chunk is a scan,
        # which is why this runs only for what the window did not explain.
        lookups = [("e.event_id", chunk) for chunk in batch.chunks(sorted(set(event_ids)), CHUNK)]
        lookups += [("json_extract(CAST(e.body AS TEXT), '$.order_id')", chunk)
                    for chunk in batch.chunks(sorted(set(order_ids)), 20_000)]
        for column, chunk in lookups:
            marks = ",".join("?" * len(chunk))
            for r in await self._fetchall(
                f"SELECT {ITEM_COLUMNS} FROM events e"
                f" LEFT JOIN deliveries d ON d.event_row = e.id {on}"
                # The name first: the body is parsed only for events of those names.
                f" WHERE lower(e.name) IN ({name_marks}) AND {column} IN ({marks})",
                [*before, *names, *chunk],
            ):
                item = _item(r)
                found[(item.event_row, item.destination)] = item
        return [found[key] for key in sorted(found, key=lambda k: (k[0], k[1] or ""))]
