"""Which source a presented key belongs to (tracklayerd/ingest/common.py KeyRing)."""

from __future__ import annotations

from tracklayerd.ingest.common import KeyRing
from tracklayerd.secrets import Secret, Secrets


def secrets(*values: str) -> Secrets:
    return Secrets(Secret(v, "test") for v in values)


def test_each_key_resolves_to_its_source_every_time_and_others_never() -> None:
    ring = KeyRing({"web": secrets("old-key", "new-key"), "app": secrets("app-key")})
    for _ in range(3):  # the first lookup of a key and the later ones agree
        assert ring.source_for("new-key") == "web"
        assert ring.source_for("old-key") == "web"
        assert ring.source_for("app-key") == "app"
        assert ring.source_for("new-key ") is None
        assert ring.source_for("wrong") is None
        assert ring.source_for("") is None
        assert ring.source_for(None) is None


def test_only_configured_keys_are_remembered() -> None:
    ring = KeyRing({"web": secrets("key")})
    for attempt in range(1000):
        assert ring.source_for(f"guess-{attempt}") is None
        assert ring.source_for("key") == "web"
    assert len(ring._seen) == 1


def test_a_source_without_keys_takes_what_matches_no_other() -> None:
    ring = KeyRing({"dev": None, "web": secrets("key")})
    assert ring.source_for("key") == "web"
    assert ring.source_for("anything") == "dev"
    assert ring.source_for(None) == "dev"
