"""Identity stitching: link the identifiers seen together, enrich later events. Pure.

The processor loads the part of the graph a slice touches (:class:`Graph`), runs
:func:`stitch` over the slice's events in order, and writes the graph's changes in the same
transaction as the events. A person is a set of identifier nodes; an event's identifiers join
its person, and identifiers the person had within their window are added to the event, each
recorded with the event it was last seen on.

Rules (docs/identity.md):
* Conflicting strong ids never merge: two different user ids, external ids, customer ids or
  emails are two people, whatever anonymous id they shared (a family computer, a kiosk).
* A person stops growing at ``max_identifiers_per_person``, so one shared value (a test
  account) cannot glue strangers together.
* Emails and phones are kept only as SHA-256 of their normalized form (pipeline/normalize):
  the graph holds no readable contact data, and a hashed value passes through to the
  platforms unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from tracklayerd.config import IdentityConfig
from tracklayerd.events import Enriched, Event, Identity
from tracklayerd.pipeline.normalize import (
    Hints,
    Normalized,
    normalize_email,
    normalize_phone,
    region_of,
    sha256_hex,
)
from tracklayerd.pipeline.normalize_tables import Email, Phone
from tracklayerd.store.base import IdentityNode as Node

# Kinds stored in clear, by the Identity attribute of the same name.
CLEAR_KINDS = ("user_id", "anonymous_id", "external_id", "customer_id", "fbc", "fbp",
               "gclid", "gbraid", "wbraid", "ttclid", "ttp", "sccid", "scid", "epik",
               "rdt_cid", "li_fat_id", "msclkid")
HASHED_KINDS = ("email", "phone")
# One of each per person: a second, different value is a different person.
STRONG_KINDS = frozenset({"user_id", "external_id", "customer_id", "email"})
# Linked but never copied onto other events: an anonymous id belongs to one device.
NOT_BORROWED = frozenset({"anonymous_id"})
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Graph:
    """The nodes a slice touches, plus every change stitching made to them."""

    nodes: dict[tuple[str, str], Node] = field(default_factory=dict)
    members: dict[int, list[Node]] = field(default_factory=dict)
    changed: dict[tuple[str, str], Node] = field(default_factory=dict)
    relabels: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def of(cls, nodes: Iterable[Node]) -> Graph:
        graph = cls()
        for node in nodes:
            graph.nodes[(node.kind, node.value)] = node
            graph.members.setdefault(node.person, []).append(node)
        return graph

    def add(self, node: Node) -> None:
        self.nodes[(node.kind, node.value)] = node
        self.members.setdefault(node.person, []).append(node)
        self.changed[(node.kind, node.value)] = node

    def merge(self, into: int, other: int) -> None:
        for node in self.members.pop(other, []):
            node.person = into
            self.members.setdefault(into, []).append(node)
            self.changed[(node.kind, node.value)] = node
        self.relabels.append((other, into))


def hash_email(value: str) -> str | None:
    """SHA-256 of the normalized address (trimmed, lowercased); a SHA-256 passes through."""
    return _hashed(value, lambda v: normalize_email(v, Email()))


def hash_phone(value: str, region: str | None = None) -> str | None:
    """SHA-256 of the E.164 number. A national number needs the person's country: a wrong
    guess would join strangers, so without one it is not linked."""
    return _hashed(value, lambda v: normalize_phone(v, Phone(plus=True), Hints(region=region)))


def _hashed(value: str, normalize: Callable[[str], Normalized]) -> str | None:
    stripped = value.strip()
    if SHA256_HEX.match(stripped.lower()):
        return stripped.lower()
    normalized = normalize(stripped).value
    return sha256_hex(normalized) if normalized else None


def keys_of(user: Identity, default_region: str | None = None) -> list[tuple[str, str]]:
    keys = [(kind, value) for kind in CLEAR_KINDS if (value := getattr(user, kind))]
    if user.previous_id:
        keys.append(("anonymous_id", user.previous_id))  # alias: the old id, now linked
    if user.email and (email := hash_email(user.email)):
        keys.append(("email", email))
    region = region_of(user.country) or default_region
    if user.phone and (phone := hash_phone(user.phone, region)):
        keys.append(("phone", phone))
    return keys


def stitch(
    event: Event, event_row: int, graph: Graph, policy: IdentityConfig,
    keys: list[tuple[str, str]] | None = None,
) -> Event:
    """Join the event's identifiers to its person; return it enriched from that person.

    `keys` are the event's `keys_of`, when the caller computed them already (to load the
    graph): normalizing and hashing phones and emails is the costly part.
    """
    if keys is None:
        keys = keys_of(event.user, policy.default_region)
    if not keys:
        return event
    when = event.timestamp.timestamp()
    own = {kind: value for kind, value in keys if kind in STRONG_KINDS}
    # The event's person: the first one (strongest key first) that does not contradict the
    # event's own strong ids; a user id nobody has seen with a shared anonymous id is
    # someone new, not the anonymous id's earlier owner.
    persons = [p for p in _persons_in_order(graph, keys) if _agrees(graph, p, own)]
    person = persons[0] if persons else event_row
    for other in persons[1:]:
        if _can_merge(graph, person, other, policy):
            graph.merge(person, other)
    for kind, value in keys:
        node = graph.nodes.get((kind, value))
        if node is None:
            if len(graph.members.get(person, [])) >= policy.max_identifiers_per_person:
                continue
            if kind in STRONG_KINDS and _has_other(graph, person, kind, value):
                continue  # a second email (say) is another person's, not this one's
            graph.add(Node(kind=kind, value=value, person=person, first_seen=when,
                           last_seen=when, first_event=event_row, last_event=event_row))
        elif node.person == person and when >= node.last_seen:
            node.last_seen, node.last_event = when, event_row
            graph.changed[(kind, value)] = node
    return _enrich(event, graph.members.get(person, []), when, policy)


def _persons_in_order(graph: Graph, keys: list[tuple[str, str]]) -> list[int]:
    """The persons the keys belong to, the one holding the strongest key first."""
    found: list[int] = []
    for _, (kind, value) in sorted(enumerate(keys), key=lambda p: (p[1][0] not in STRONG_KINDS,
                                                                   p[0])):
        node = graph.nodes.get((kind, value))
        if node is not None and node.person not in found:
            found.append(node.person)
    return found


def _strong_values(graph: Graph, person: int) -> dict[str, str]:
    return {n.kind: n.value for n in graph.members.get(person, []) if n.kind in STRONG_KINDS}


def _has_other(graph: Graph, person: int, kind: str, value: str) -> bool:
    existing = _strong_values(graph, person).get(kind)
    return existing is not None and existing != value


def _agrees(graph: Graph, person: int, own: dict[str, str]) -> bool:
    theirs = _strong_values(graph, person)
    return all(theirs.get(kind, value) == value for kind, value in own.items())


def _can_merge(graph: Graph, person: int, other: int, policy: IdentityConfig) -> bool:
    mine, theirs = _strong_values(graph, person), _strong_values(graph, other)
    if any(mine[k] != theirs[k] for k in mine.keys() & theirs.keys()):
        return False
    size = len(graph.members.get(person, [])) + len(graph.members.get(other, []))
    return size <= policy.max_identifiers_per_person


def _enrich(event: Event, nodes: list[Node], when: float, policy: IdentityConfig) -> Event:
    updates: dict[str, str] = {}
    enriched = list(event.enriched)
    # Newest first; ties by kind, so the result does not depend on load order.
    for node in sorted(nodes, key=lambda n: (-n.last_seen, n.kind)):
        if node.kind in NOT_BORROWED or node.kind in updates:
            continue
        if getattr(event.user, node.kind) is not None:
            continue
        if abs(when - node.last_seen) > policy.window_secs(node.kind):
            continue
        updates[node.kind] = node.value
        enriched.append(Enriched(field=f"user.{node.kind}", from_event=node.last_event,
                                 seen_at=datetime.fromtimestamp(node.last_seen, tz=UTC)))
    if not updates:
        return event
    return msgspec.structs.replace(
        event, user=msgspec.structs.replace(event.user, **updates), enriched=enriched
    )
