"""Canonical contracts: violations and warnings are recorded, never a reason to lose the event."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from tests.pipeline.support import body_of, default_config, inbox_record, process, track
from tracklayerd.events import Event, Identity, Item
from tracklayerd.pipeline.contracts import CONTRACTS, IDENTIFIERS, ISO_4217, check

WHEN = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
COMPLETE_FIELDS: dict[str, Any] = {
    "order_id": "1001",
    "value": 129.9,
    "currency": "USD",
    "items": [Item(id="sku-1", name="Notebook", price=64.95, quantity=2)],
}


def event(name: str, user: Identity | None = None, **fields: Any) -> Event:
    return Event(event=name, event_id="e-1", timestamp=WHEN, received_at=WHEN, source="web",
                 user=user or Identity(anonymous_id="anon-1"), **fields)


def complete(name: str) -> Event:
    """An event carrying every required and recommended field and an identifier."""
    return event(name, Identity(email="ada@example.com"), **COMPLETE_FIELDS)


MISSING: dict[str, Any] = {"order_id": None, "value": None, "currency": None, "items": []}


def without(name: str, field: str) -> Event:
    return msgspec.structs.replace(complete(name), **{field: MISSING[field]})


REQUIRED = [(name, field) for name, c in CONTRACTS.items() for field in c.required]
RECOMMENDED = [(name, field) for name, c in CONTRACTS.items() for field in c.recommended]
NEEDS_IDENTIFIER = [name for name, c in CONTRACTS.items() if c.needs_identifier]


def test_every_contract_field_is_one_the_tests_know_how_to_remove() -> None:
    assert {field for _, field in REQUIRED + RECOMMENDED} <= set(MISSING)


def test_the_table_covers_the_canonical_conversions() -> None:
    assert set(CONTRACTS) == {"purchase", "refund", "add_to_cart", "begin_checkout",
                              "add_payment_info", "view_item", "lead", "sign_up", "start_trial"}
    assert set(NEEDS_IDENTIFIER) == {"lead", "sign_up", "start_trial"}


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_complete_event_has_no_violations_and_no_warnings(name: str) -> None:
    checked = check(complete(name))
    assert (checked.violations, checked.warnings) == ([], [])


@pytest.mark.parametrize("name, field", REQUIRED)
def test_each_missing_required_field_is_a_violation(name: str, field: str) -> None:
    checked = check(without(name, field))
    assert checked.violations == [f"{name} requires {field}"]


@pytest.mark.parametrize("name, field", RECOMMENDED)
def test_each_missing_recommended_field_is_a_warning_not_a_violation(
    name: str, field: str
) -> None:
    checked = check(without(name, field))
    assert checked.violations == []
    assert f"{name} should carry {field}" in checked.warnings


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_bare_event_lists_every_required_field_in_order(name: str) -> None:
    contract = CONTRACTS[name]
    checked = check(event(name))
    expected = [f"{name} requires {field}" for field in contract.required]
    if contract.needs_identifier:
        expected.append(f"{name} requires one of email, phone, external_id, customer_id, "
                        "user_id")
    assert checked.violations == expected
    assert checked.warnings == [f"{name} should carry {f}" for f in contract.recommended]


def test_empty_order_id_and_empty_items_count_as_missing() -> None:
    checked = check(msgspec.structs.replace(complete("purchase"), order_id="", items=[]))
    assert checked.violations == ["purchase requires order_id"]
    assert checked.warnings == ["purchase should carry items"]


def test_zero_value_is_present() -> None:
    checked = check(msgspec.structs.replace(complete("purchase"), value=0.0))
    assert checked.violations == []


@pytest.mark.parametrize("name", NEEDS_IDENTIFIER)
def test_missing_identifier_is_a_violation(name: str) -> None:
    checked = check(event(name, Identity(anonymous_id="anon-1", fbp="fb.1.17.123",
                                         gclid="Cj0K", first_name="Ada"),
                          value=1.0, currency="USD"))
    assert checked.violations == [
        f"{name} requires one of email, phone, external_id, customer_id, user_id"]


@pytest.mark.parametrize("name", NEEDS_IDENTIFIER)
@pytest.mark.parametrize("identifier", IDENTIFIERS)
def test_any_one_identifier_is_enough(name: str, identifier: str) -> None:
    checked = check(event(name, Identity(**{identifier: "x-1"}), value=1.0, currency="USD"))
    assert checked.violations == []


@pytest.mark.parametrize("name", ["purchase", "refund", "add_to_cart", "Newsletter Subscribed"])
def test_negative_value_is_a_violation(name: str) -> None:
    checked = check(msgspec.structs.replace(complete(name), event=name, value=-12.5))
    assert checked.violations == ["value must be 0 or more, got -12.5"]


@pytest.mark.parametrize("currency", ["usd", "US$", "EURO", "XYZ", "", "€"])
def test_currency_that_is_not_an_iso_4217_code_is_a_violation(currency: str) -> None:
    checked = check(msgspec.structs.replace(complete("add_to_cart"), currency=currency))
    assert f"currency {currency!r} is not an ISO 4217 code" in checked.violations


@pytest.mark.parametrize("currency", ["USD", "EUR", "GBP", "JPY", "CHF", "BRL", "INR"])
def test_common_iso_4217_codes_are_accepted(currency: str) -> None:
    assert currency in ISO_4217
    checked = check(msgspec.structs.replace(complete("purchase"), currency=currency))
    assert checked.violations == []


def test_value_without_currency_is_a_warning_for_events_that_do_not_require_currency() -> None:
    checked = check(event("Newsletter Subscribed", value=5.0))
    assert (checked.violations, checked.warnings) == ([], ["value without currency"])


def test_purchase_value_without_currency_is_a_violation_only() -> None:
    checked = check(msgspec.structs.replace(complete("purchase"), currency=None))
    assert checked.violations == ["purchase requires currency"]
    assert "value without currency" not in checked.warnings


def test_event_without_a_contract_and_without_problems_is_unchanged() -> None:
    plain = event("Newsletter Subscribed")
    assert check(plain) is plain


def test_existing_violations_and_warnings_are_kept() -> None:
    earlier = msgspec.structs.replace(complete("purchase"), currency=None,
                                      violations=["earlier"], warnings=["mapping said so"])
    checked = check(earlier)
    assert checked.violations == ["earlier", "purchase requires currency"]
    assert checked.warnings == ["mapping said so"]


# --- through the pipeline: recorded, never dropped -------------------------------------


def test_violations_never_drop_the_event() -> None:
    message = track("Order Completed", {"revenue": -20, "currency": "dollars",
                                        "products": [{"product_id": "P-1", "price": 10}]})
    processed = process(inbox_record(message))
    assert processed.status == "accepted" and processed.reason is None
    body = body_of(processed)
    assert body["violations"] == ["purchase requires order_id",
                                  "value must be 0 or more, got -20",
                                  "currency 'DOLLARS' is not an ISO 4217 code"]


@pytest.mark.parametrize("name", ["Lead Generated", "Signed Up", "Trial Started"])
def test_anonymous_lead_sign_up_or_trial_is_accepted_with_the_violation(name: str) -> None:
    message = track(name, userId=None, anonymousId="a1f7c3e2-5b9d-4e8a-9c21-7d3e5f60b8a4")
    processed = process(inbox_record(message))
    assert processed.status == "accepted"
    violations = body_of(processed)["violations"]
    assert violations == [f"{processed.name} requires one of email, phone, external_id, "
                          "customer_id, user_id"]


def test_violations_do_not_cancel_deliveries() -> None:
    config = default_config(destinations={
        "hook": {"type": "webhook", "endpoint": "http://127.0.0.1:1/hook"}})
    processed = process(inbox_record(track("Order Completed")), config)
    assert processed.status == "accepted"
    assert [d.destination for d in processed.deliveries] == ["hook"]
    assert body_of(processed)["violations"]
