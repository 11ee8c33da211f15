"""The identity graph's SQL (a mixin of SQLiteStore; see tracklayerd/pipeline/identity.py).

Loading the nodes of the keys an event carries (and of the persons they belong to),
pruning nodes not seen for the retention window, and forgetting a person (tracklayerd
forget, an erasure request: their nodes, events, deliveries and raw inbox rows). The nodes
themselves are written with the processed events (SQLiteStore.commit_processed).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tracklayerd.store import batch, schema
from tracklayerd.store.base import ForgetReport, IdentityNode

if TYPE_CHECKING:
    from tracklayerd.store.writer import Writer


NODE_COLUMNS = "kind, value, person, first_seen, last_seen, first_event, last_event"
NODE_COLUMNS_OF_N = ", ".join(f"n.{column}" for column in NODE_COLUMNS.split(", "))


class IdentityQueries:
    """The identity graph's reads, pruning and erasure, mixed into SQLiteStore."""

    if TYPE_CHECKING:
        @property
        def writer(self) -> Writer: ...
        async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]: ...
        def _checkpoint(self, mode: str = "PASSIVE") -> None: ...

    async def load_identity(self, keys: Sequence[tuple[str, str]]) -> list[IdentityNode]:
        found: dict[tuple[str, str], IdentityNode] = {}
        unique = list(dict.fromkeys(keys))
        for chunk in batch.chunks(unique, 400):
            values = ",".join("(?, ?)" for _ in chunk)
            # A join driven by the keys: `(kind, value) IN (VALUES ...)` makes SQLite scan
            # the whole table for every chunk (quadratic as the graph grows).
            rows = await self._fetchall(
                f"WITH k(kind, value) AS (VALUES {values}) SELECT {NODE_COLUMNS_OF_N}"
                " FROM k CROSS JOIN identity_nodes AS n ON n.kind = k.kind"
                " AND n.value = k.value", [part for key in chunk for part in key])
            for row in rows:
                found[(row[0], row[1])] = IdentityNode(*row)
        persons = list({node.person for node in found.values()})
        for people in batch.chunks(persons, 800):
            marks = ",".join("?" * len(people))
            for row in await self._fetchall(
                f"SELECT {NODE_COLUMNS} FROM identity_nodes WHERE person IN ({marks})", people
            ):
                found[(row[0], row[1])] = IdentityNode(*row)
        return list(found.values())

    async def prune_identity(self, before: float, limit: int) -> int:
        def job(conn: sqlite3.Connection) -> int:
            # Bounded: retention never deletes millions of rows in one statement.
            return conn.execute(
                "DELETE FROM identity_nodes WHERE (kind, value) IN (SELECT kind, value"
                " FROM identity_nodes WHERE last_seen < ? LIMIT ?)", (before, limit),
            ).rowcount

        deleted: int = await self.writer.run(job, rows=limit)
        return deleted

    async def forget(
        self, *, user_ids: Sequence[str] = (), anonymous_ids: Sequence[str] = (),
        email_hashes: Sequence[str] = (), emails: Sequence[str] = (),
    ) -> ForgetReport:
        # 1. The person(s) these identifiers belong to, and everything linked to them.
        keys = ([("user_id", v) for v in user_ids] + [("anonymous_id", v) for v in anonymous_ids]
                + [("email", v) for v in email_hashes])
        nodes = await self.load_identity(keys)
        people = {n.person for n in nodes if (n.kind, n.value) in set(keys)}
        linked = [n for n in nodes if n.person in people]
        clear = {n.value for n in linked if n.kind not in ("email", "phone")}
        clear |= set(user_ids) | set(anonymous_ids)
        hashes = {n.value for n in linked if n.kind in ("email", "phone")} | set(email_hashes)
        needles = sorted({v.lower() for v in clear | set(emails) | hashes if len(v) >= 3})
        # 2. Stored events and raw inbox rows that name any of them (a scan: forget is rare).
        seqs: set[int] = set()
        for needle in needles:
            for table, column, key in (("events", "body", "id"), ("inbox", "payload", "seq")):
                rows = await self._fetchall(
                    f"SELECT {key} FROM {table} WHERE instr(lower(CAST({column} AS TEXT)), ?)",
                    (needle,))
                seqs.update(int(r[0]) for r in rows)
        node_keys = [(n.kind, n.value) for n in linked]
        seq_list = sorted(seqs)

        def job(conn: sqlite3.Connection) -> ForgetReport:
            # Deleted rows must not linger in free pages: overwrite them (erasure requests).
            # Then back to what the connection had (Debian's SQLite defaults to ON).
            before = conn.execute("PRAGMA secure_delete").fetchone()[0]
            conn.execute("PRAGMA secure_delete = ON")
            try:
                return delete(conn)
            finally:
                conn.execute(
                    f"PRAGMA secure_delete = {schema.SECURE_DELETE.get(before, 'ON')}")

        def delete(conn: sqlite3.Connection) -> ForgetReport:
            report = ForgetReport()
            for chunk in batch.chunks(seq_list, 800):
                marks = ",".join("?" * len(chunk))
                report.deliveries += conn.execute(
                    f"DELETE FROM deliveries WHERE event_row IN ({marks})", chunk).rowcount
                report.events += conn.execute(
                    f"DELETE FROM events WHERE id IN ({marks})", chunk).rowcount
                report.inbox_rows += conn.execute(
                    f"DELETE FROM inbox WHERE seq IN ({marks})", chunk).rowcount
            report.identity_nodes = sum(
                conn.execute("DELETE FROM identity_nodes WHERE kind = ? AND value = ?",
                             key).rowcount for key in node_keys)
            return report

        result: ForgetReport = await self.writer.run(job, rows=0)
        # Old copies of the pages also sit in the WAL until it is checkpointed and truncated.
        await asyncio.to_thread(self._checkpoint, "TRUNCATE")
        return result
