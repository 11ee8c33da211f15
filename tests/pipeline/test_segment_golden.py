"""Golden files: a Segment message as the SDKs send it → the exact canonical event.

Each ``tests/data/segment/*.json`` holds ``{"description", "input", "expected"}`` (and
``"xfail": "BUG: ..."`` while a known bug makes the file fail). ``input`` is the message as
sent, the batch-level fields when it came in a ``/v1/batch`` (``batch``: ``context``,
``integrations``, ``sentAt``), the arrival time and the request's IP. Without ``batch`` the
message was posted alone to ``/v1/<type>``. The expected events are written by hand from the
Segment spec, never pasted from the code's output.

The comparison is exact on the decoded JSON of both sides; only the spelling of an instant
("...T10:00:00Z" vs "...T10:00:00.000000Z") and whether a field at its default value is
written out may differ. Both sides must also decode as an ``Event`` (the schema's limits).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.pipeline.support import inbox_record
from tracklayerd.config import parse_config
from tracklayerd.events import Event
from tracklayerd.pipeline.mapping import BUILTIN_RULES
from tracklayerd.processor import Pipeline

DATA = Path(__file__).resolve().parents[1] / "data" / "segment"
FILES = sorted(DATA.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return case


def cases() -> list[Any]:
    params = []
    for path in FILES:
        xfail = load(path).get("xfail")
        marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
        params.append(pytest.param(path, id=path.name, marks=marks))
    return params


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BARE = Event(event="-", event_id="-", timestamp=EPOCH, received_at=EPOCH, source="-")
DEFAULTS = {name: msgspec.to_builtins(getattr(_BARE, name)) for name in Event.__struct_fields__}
ALWAYS = ("event", "event_id", "source")


def as_event(data: dict[str, Any]) -> Event:
    return msgspec.json.decode(msgspec.json.encode(data), type=Event)


def normalized(event: dict[str, Any]) -> dict[str, Any]:
    """The event as a dict, instants as datetimes and fields at their default left out."""
    result: dict[str, Any] = {}
    for key, value in event.items():
        if key in ("timestamp", "received_at"):
            result[key] = when(value)
        elif key in ALWAYS or value != DEFAULTS[key]:
            result[key] = value
    return result


@pytest.mark.parametrize("path", cases())
def test_segment_message_becomes_the_expected_canonical_event(
    path: Path, tmp_path: Path
) -> None:
    case = load(path)
    given = case["input"]
    batch = given.get("batch") or {}
    record = inbox_record(
        given["message"],
        received_at=when(given["received_at"]),
        request_ip=given["request_ip"],
        type_hint=None if "batch" in given else given["message"].get("type"),
        context=batch.get("context"),
        integrations=batch.get("integrations"),
        sent_at=batch.get("sentAt"),
    )
    processed = Pipeline(parse_config({}, tmp_path)).process(record)
    assert (processed.status, processed.reason) == ("accepted", None)
    assert processed.body is not None

    expected = case["expected"]
    assert set(expected) <= set(Event.__struct_fields__), "unknown field in expected"
    as_event(expected)  # the expectation itself is a valid canonical event
    actual: dict[str, Any] = msgspec.json.decode(processed.body)
    as_event(actual)  # what destinations will decode, within the schema's limits
    assert normalized(actual) == normalized(expected)
    assert (processed.name, processed.event_id) == (expected["event"], expected["event_id"])
    assert processed.occurred_at == when(expected["timestamp"]).timestamp()


def test_golden_files_are_well_formed() -> None:
    assert FILES, f"no golden files in {DATA}"
    for path in FILES:
        case = load(path)
        assert set(case) <= {"description", "xfail", "input", "expected"}, path.name
        assert case["description"].strip(), path.name
        assert set(case["input"]) <= {"message", "batch", "received_at", "request_ip"}, path.name
        assert set(case["input"].get("batch", {})) <= {"context", "integrations", "sentAt"}


def golden_messages() -> list[dict[str, Any]]:
    return [load(path)["input"]["message"] for path in FILES]


@pytest.mark.parametrize("rule", BUILTIN_RULES, ids=lambda rule: rule.canonical)
def test_every_builtin_source_name_and_type_has_a_golden_file(rule: Any) -> None:
    names = {m["event"].casefold() for m in golden_messages() if m.get("type") == "track"}
    types = {m.get("type") for m in golden_messages()}
    assert sorted(rule.events - names) == []
    assert sorted(rule.types - types) == []


@pytest.mark.parametrize("required", ["identify", "page", "screen"])
def test_golden_files_cover_each_non_track_type(required: str) -> None:
    assert required in {m.get("type") for m in golden_messages()}


def test_golden_files_cover_batch_context_and_both_kinds_of_library() -> None:
    batches = [load(p)["input"].get("batch", {}) for p in FILES]
    assert any("context" in b and "sentAt" in b for b in batches)
    libraries = {m.get("context", {}).get("library", {}).get("name") for m in golden_messages()}
    assert {"analytics.js", "analytics-python"} <= libraries
