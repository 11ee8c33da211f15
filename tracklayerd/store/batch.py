"""Many rows in a few statements: multi-row VALUES lists for the writer's hot paths.

`executemany` runs one statement per row: each one is reset, bound and stepped, opens its
own statement journal when triggers may write, and hands the GIL back and forth with the
event loop around every step. One statement over a VALUES list of up to 256 rows does the
same rows in one step: updating the state of a batch of 1,000 deliveries went from ~20 µs
to ~7 µs per delivery, inserting a slice's events and deliveries from ~30 µs to ~16 µs per
event (contrib/bench/store_writes.py measures the whole paths).

Chunks are powers of two (256, 128, ..., 1 rows), so a statement shape is prepared in at
most nine sizes and stays in the connection's statement cache, whatever the batch sizes.
The statements are built on the event loop before the job is submitted: the writer thread
only runs them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec

MAX_ROWS = 256
# SQLite's default bound-parameter limit since 3.32 (999 before): the writer reads the
# connection's own at open (max_params).
DEFAULT_MAX_PARAMS = 32766

Statement = tuple[str, list[Any]]
T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """`items` in lists of at most `size` (IN lists within the bound-parameter limit)."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def max_params(conn: sqlite3.Connection) -> int:
    return int(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))


def statements(
    sql: str, rows: Sequence[Sequence[Any]], limit: int = DEFAULT_MAX_PARAMS,
    before: int = 0,
) -> list[Statement]:
    """`sql` for `rows`: its `{values}` becomes a VALUES list of up to MAX_ROWS rows.

    `before` reserves that many parameters ahead of the VALUES list (left as None in each
    statement's parameters, for the job to fill in).
    """
    if not rows:
        return []
    width = len(rows[0])
    fit = max(1, min(MAX_ROWS, (limit - before) // width))
    largest = 1 << (fit.bit_length() - 1)
    mark = "(" + ", ".join("?" * width) + ")"
    head = [None] * before
    result: list[Statement] = []
    start = 0
    while start < len(rows):
        size = largest
        while size > len(rows) - start:
            size //= 2
        params: list[Any] = list(head)
        for row in rows[start:start + size]:
            params.extend(row)
        result.append((sql.replace("{values}", ", ".join([mark] * size)), params))
        start += size
    return result


def run(conn: sqlite3.Connection, batch: Sequence[Statement]) -> list[Any]:
    """Run the statements; the rows their RETURNING clauses gave, in order."""
    returned: list[Any] = []
    for sql, params in batch:
        returned.extend(conn.execute(sql, params).fetchall())
    return returned


class _ConsentHead(msgspec.Struct):
    outcome: Any = None
    rule: Any = None


_consent_head = msgspec.json.Decoder(_ConsentHead)


def consent_columns(consent: bytes | None) -> tuple[str | None, str | None]:
    """A delivery's consent_outcome and consent_rule from its consent decision (JSON), as
    migration 8 derives them from stored ones: the outcome; the rule only when the outcome
    is 'suppressed' (what the status page counts per rule), '?' if it has none."""
    if consent is None:
        return None, None
    try:
        head = _consent_head.decode(consent)
    except msgspec.DecodeError:
        return None, None
    outcome = head.outcome if isinstance(head.outcome, str) else None
    if outcome != "suppressed":
        return outcome, None
    return outcome, head.rule if isinstance(head.rule, str) else "?"
