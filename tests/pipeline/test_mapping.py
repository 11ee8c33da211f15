"""The mapping layer: source event names → canonical names, value/currency/order/items."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from tests.pipeline.support import canonical, default_config, event_of, process, track
from tracklayerd.config import Config
from tracklayerd.errors import ConfigError
from tracklayerd.events import Event, Item, from_native, native_decoder
from tracklayerd.pipeline.mapping import BUILTIN_RULES, Mapper, Rule, rules_from_config
from tracklayerd.store.base import InboxRecord

RECEIVED = datetime(2026, 11, 20, 10, 0, 1, tzinfo=UTC)


def mappings(rules: dict[str, Any], **data: Any) -> Config:
    return default_config(mappings=rules, **data)


def mapped(event: str, properties: dict[str, Any] | None = None,
           config: Config | None = None, **fields: Any) -> Event:
    return canonical(track(event, properties, **fields), config)


# --- names -----------------------------------------------------------------------------


@pytest.mark.parametrize("source_name, canonical_name", [
    ("Order Completed", "purchase"), ("Completed Order", "purchase"),
    ("Order Refunded", "refund"), ("Product Added", "add_to_cart"),
    ("Added Product", "add_to_cart"), ("Checkout Started", "begin_checkout"),
    ("Product Viewed", "view_item"), ("Signed Up", "sign_up"),
    ("Trial Started", "start_trial"), ("Lead Generated", "lead"), ("generate_lead", "lead"),
])
def test_builtin_rules_map_segment_names_and_keep_the_original(
    source_name: str, canonical_name: str
) -> None:
    event = mapped(source_name)
    assert (event.event, event.original_name) == (canonical_name, source_name)


@pytest.mark.parametrize("source_name", ["order completed", "ORDER COMPLETED", "Order completed"])
def test_builtin_rules_match_names_case_insensitively(source_name: str) -> None:
    event = mapped(source_name)
    assert (event.event, event.original_name) == ("purchase", source_name)


@pytest.mark.parametrize("name", ["purchase", "add_to_cart", "begin_checkout", "search", "lead"])
def test_ga4_names_are_canonical_already_and_have_no_original_name(name: str) -> None:
    event = mapped(name)
    assert (event.event, event.original_name) == (name, None)


def test_unknown_names_pass_through_unchanged() -> None:
    event = mapped("Newsletter Subscribed")
    assert (event.event, event.original_name) == ("Newsletter Subscribed", None)


@pytest.mark.parametrize("message_type", ["page", "screen"])
def test_page_and_screen_calls_are_page_views(message_type: str) -> None:
    event = canonical({"type": message_type, "name": "Home", "userId": "u-1"})
    assert (event.event, event.original_name, event.message_type) == (
        "page_view", message_type, message_type)


def test_identify_is_not_renamed_by_the_builtins() -> None:
    event = canonical({"type": "identify", "userId": "u-1", "traits": {"email": "a@b.example"}})
    assert (event.event, event.original_name) == ("identify", None)


def test_user_rules_beat_builtin_rules() -> None:
    config = mappings({"subscription_purchase": {
        "match": {"event": "Order Completed", "properties": {"type": "subscription"}}}})
    subscription = mapped("Order Completed", {"type": "subscription"}, config)
    assert (subscription.event, subscription.original_name) == (
        "subscription_purchase", "Order Completed")
    # The built-in rule still maps the rest.
    assert mapped("Order Completed", {"type": "one-off"}, config).event == "purchase"


def test_user_rule_can_take_over_a_builtin_name() -> None:
    config = mappings({"lead": {"match": {"event": "Signed Up"}}})
    assert mapped("Signed Up", config=config).event == "lead"


def test_user_rules_match_case_insensitively_by_default() -> None:
    config = mappings({"purchase": {"match": {"event": "Checkout Finished"}}})
    for name in ("Checkout Finished", "checkout finished", "CHECKOUT FINISHED"):
        event = mapped(name, config=config)
        assert (event.event, event.original_name) == ("purchase", name)


def test_case_sensitive_rule_matches_only_the_exact_name() -> None:
    config = mappings({"purchase": {"match": {"event": "CHECKOUT_DONE"},
                                    "case_sensitive": True}})
    assert mapped("CHECKOUT_DONE", config=config).event == "purchase"
    assert mapped("checkout_done", config=config).event == "checkout_done"
    assert mapped("Checkout_Done", config=config).event == "Checkout_Done"


def test_rule_with_a_list_of_event_names() -> None:
    config = mappings({"lead": {"match": {"event": ["Demo Requested", "Quote Requested"]}}})
    assert mapped("Demo Requested", config=config).event == "lead"
    assert mapped("quote requested", config=config).event == "lead"


def test_type_only_rule_matches_every_message_of_that_type() -> None:
    config = mappings({"lead": {"match": {"type": "identify"}}})
    event = canonical({"type": "identify", "userId": "u-1",
                       "traits": {"email": "ada@example.com"}}, config)
    assert (event.event, event.original_name, event.message_type) == (
        "lead", "identify", "identify")
    assert mapped("Order Completed", config=config).event == "purchase"


def test_rule_with_event_and_type_needs_both() -> None:
    config = mappings({"sign_up": {"match": {"event": "Account Created", "type": ["track"]}}})
    assert mapped("Account Created", config=config).event == "sign_up"
    screen = canonical({"type": "screen", "name": "Account Created", "userId": "u-1"}, config)
    assert screen.event == "page_view"


def test_property_conditions_with_dotted_paths() -> None:
    config = mappings({"purchase": {
        "match": {"event": "Checkout Finished",
                  "properties": {"status": "paid", "payment.provider": "stripe"}},
        "value": ["amount"],
    }})
    paid = mapped("Checkout Finished",
                  {"status": "paid", "payment": {"provider": "stripe"}, "amount": 59.9}, config)
    assert (paid.event, paid.value) == ("purchase", 59.9)
    for properties in (
        {"status": "pending", "payment": {"provider": "stripe"}},
        {"status": "paid", "payment": {"provider": "paypal"}},
        {"status": "paid"},
        {"status": "paid", "payment": "stripe"},
    ):
        assert mapped("Checkout Finished", properties, config).event == "Checkout Finished"


def test_property_condition_compares_values_not_their_text() -> None:
    config = mappings({"purchase": {"match": {"event": "Checkout Finished",
                                              "properties": {"attempt": 1}}}})
    assert mapped("Checkout Finished", {"attempt": 1}, config).event == "purchase"
    assert mapped("Checkout Finished", {"attempt": "1"}, config).event == "Checkout Finished"


def test_list_of_rules_for_one_canonical_name() -> None:
    config = mappings({"purchase": [
        {"match": {"event": "Checkout Finished"}},
        {"match": {"event": "Payment Captured"}, "value": ["captured_amount"]},
    ]})
    first = mapped("Checkout Finished", {"revenue": 10}, config)
    second = mapped("Payment Captured", {"captured_amount": "42.50", "revenue": 10}, config)
    assert (first.event, first.value) == ("purchase", 10.0)
    assert (second.event, second.value) == ("purchase", 42.5)


def test_first_matching_user_rule_wins() -> None:
    config = mappings({
        "refund": {"match": {"event": "Order Updated", "properties": {"status": "refunded"}}},
        "purchase": {"match": {"event": "Order Updated"}},
    })
    assert mapped("Order Updated", {"status": "refunded"}, config).event == "refund"
    assert mapped("Order Updated", {"status": "paid"}, config).event == "purchase"


def test_builtin_mappings_false_leaves_names_unmapped() -> None:
    config = default_config(pipeline={"builtin_mappings": False})
    event = mapped("Order Completed", {"order_id": "1001", "value": 30}, config)
    assert (event.event, event.original_name) == ("Order Completed", None)
    assert (event.order_id, event.value) == ("1001", 30.0)
    page = canonical({"type": "page", "name": "Home", "userId": "u-1"}, config)
    assert page.event == "page"


def test_builtin_mappings_false_keeps_user_rules() -> None:
    config = default_config(pipeline={"builtin_mappings": False},
                            mappings={"purchase": {"match": {"event": "Checkout Finished"}}})
    assert mapped("Checkout Finished", config=config).event == "purchase"
    assert mapped("Order Completed", config=config).event == "Order Completed"


def test_rules_from_config_puts_user_rules_before_the_builtins() -> None:
    config = mappings({"purchase": {"match": {"event": "Checkout Finished"}}})
    rules = rules_from_config(config.mappings, True)
    assert rules[0] == Rule("purchase", events=frozenset({"checkout finished"}))
    assert tuple(rules[1:]) == BUILTIN_RULES
    assert rules_from_config(config.mappings, False) == rules[:1]


# --- config errors ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Purchase", "order-completed", "Order Completed", "1st_order",
                                  "purchase!", "x" * 65])
def test_bad_canonical_name_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=r"lowercase snake_case") as raised:
        mappings({name: {"match": {"event": "Order Completed"}}})
    assert f"mappings.{name}" in str(raised.value)


@pytest.mark.parametrize("match", [{}, {"properties": {"status": "paid"}},
                                   {"event": [], "type": []}, {"event": ""}])
def test_match_with_neither_event_nor_type_is_a_config_error(match: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"mappings\.purchase\.match: needs an event name"):
        mappings({"purchase": {"match": match}})


def test_match_with_neither_event_nor_type_in_a_list_of_rules_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"mappings\.purchase\.match"):
        mappings({"purchase": [{"match": {"event": "Checkout Finished"}},
                               {"match": {"properties": {"status": "paid"}}}]})


def test_unknown_key_in_a_mapping_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown key"):
        mappings({"purchase": {"match": {"event": "Checkout Finished"}, "values": ["amount"]}})


# --- value -----------------------------------------------------------------------------


@pytest.mark.parametrize("properties, value", [
    ({"revenue": 25, "value": 27, "total": 30}, 25.0),
    ({"value": 27, "total": 30}, 27.0),
    ({"total": 30}, 30.0),
])
def test_order_completed_value_prefers_revenue_then_value_then_total(
    properties: dict[str, Any], value: float
) -> None:
    assert mapped("Order Completed", properties).value == value


@pytest.mark.parametrize("properties, value", [
    ({"revenue": 25, "value": 27, "total": 30}, 30.0),
    ({"revenue": 25, "value": 27}, 25.0),
    ({"value": 27}, 27.0),
])
def test_order_refunded_value_prefers_total_then_revenue_then_value(
    properties: dict[str, Any], value: float
) -> None:
    assert mapped("Order Refunded", properties).value == value


@pytest.mark.parametrize("properties, value", [
    ({"revenue": 25, "value": 27, "total": 30}, 27.0),
    ({"revenue": 25, "total": 30}, 25.0),
    ({"total": 30}, 30.0),
])
def test_checkout_started_value_prefers_value_then_revenue_then_total(
    properties: dict[str, Any], value: float
) -> None:
    assert mapped("Checkout Started", properties).value == value


@pytest.mark.parametrize("raw, value", [("129.90", 129.9), (" 12 ", 12.0), ("0", 0.0),
                                        ("1e3", 1000.0), (-5, -5.0)])
def test_value_from_numbers_and_numeric_strings(raw: Any, value: float) -> None:
    assert mapped("Order Completed", {"revenue": raw}).value == value


@pytest.mark.parametrize("raw", ["n/a", "", "12,50", "$12.50", True, None, [12], {"v": 12}])
def test_value_that_is_not_a_number_falls_through_to_the_next_field(raw: Any) -> None:
    assert mapped("Order Completed", {"revenue": raw, "total": 30}).value == 30.0


@pytest.mark.parametrize("raw", ["NaN", "nan", "Infinity", "-inf"])
def test_value_that_is_not_finite_falls_through_to_the_next_field(raw: str) -> None:
    event = mapped("Order Completed", {"revenue": raw, "total": 30, "currency": "USD",
                                       "order_id": "1001"})
    assert event.value == 30.0
    assert event.violations == []


def test_integer_too_large_for_a_float_is_not_a_value() -> None:
    event = mapped("Order Completed", {"revenue": 10 ** 400, "total": 30})
    assert event.value == 30.0


def test_no_value_fields_means_no_value() -> None:
    assert mapped("Order Completed", {"order_id": "1001"}).value is None


def test_revenue_and_total_mismatch_is_a_warning() -> None:
    event = mapped("Order Completed", {"revenue": 100, "total": 200, "currency": "USD",
                                       "order_id": "1001"})
    assert event.value == 100.0
    assert event.violations == []
    assert [w for w in event.warnings if "differ" in w] == [
        "revenue (100) and total (200) differ by more than 25%; value uses revenue"]


@pytest.mark.parametrize("properties", [
    {"revenue": 90, "total": 100},
    {"revenue": 100},
    {"total": 100},
    {"revenue": 0, "total": 100},
])
def test_no_mismatch_warning_when_revenue_and_total_agree_or_one_is_missing(
    properties: dict[str, Any]
) -> None:
    event = mapped("Order Completed", properties)
    assert not [w for w in event.warnings if "differ" in w]


def test_mismatch_warning_names_the_field_the_value_came_from() -> None:
    config = mappings({"purchase": {"match": {"event": "Checkout Finished"},
                                    "value": ["amount"]}})
    event = mapped("Checkout Finished", {"amount": 180, "revenue": 100, "total": 200}, config)
    assert "value uses amount" in " ".join(event.warnings)


# --- currency, order id, custom paths --------------------------------------------------


@pytest.mark.parametrize("raw", ["usd", " Usd ", "USD"])
def test_currency_is_trimmed_and_uppercased(raw: str) -> None:
    assert mapped("Order Completed", {"currency": raw}).currency == "USD"


@pytest.mark.parametrize("properties, order_id", [
    ({"order_id": "50314b8e9bcf000000000000"}, "50314b8e9bcf000000000000"),
    ({"order_id": 1001}, "1001"),
    ({"orderId": "A-17"}, "A-17"),
    ({"transaction_id": "T-12345"}, "T-12345"),
    ({"order_id": " 1001 ", "transaction_id": "T-1"}, "1001"),
    ({"order_id": "", "orderId": "A-17"}, "A-17"),
])
def test_order_id_from_segment_and_ga4_fields(properties: dict[str, Any], order_id: str) -> None:
    assert mapped("Order Completed", properties).order_id == order_id


def test_custom_value_currency_order_id_and_items_paths() -> None:
    config = mappings({"purchase": {
        "match": {"event": "Checkout Finished"},
        "value": ["amount.gross"], "currency": ["amount.currency"],
        "order_id": ["order.number"], "items": ["cart.lines"],
    }})
    event = mapped("Checkout Finished", {
        "amount": {"gross": "59.90", "currency": "eur"},
        "order": {"number": 7781},
        "cart": {"lines": [{"sku": "NB-1", "name": "Notebook", "price": 29.95, "quantity": 2}]},
        # The defaults are not consulted when the rule names its paths.
        "revenue": 1, "currency": "USD", "order_id": "default-path",
        "products": [{"product_id": "P-9", "name": "Pen"}],
    }, config)
    assert (event.value, event.currency, event.order_id) == (59.9, "EUR", "7781")
    assert event.items == [Item(id="NB-1", name="Notebook", price=29.95, quantity=2)]


def test_custom_value_paths_replace_the_defaults() -> None:
    config = mappings({"purchase": {"match": {"event": "Checkout Finished"},
                                    "value": ["amount"]}})
    assert mapped("Checkout Finished", {"revenue": 10}, config).value is None


def test_rule_without_paths_uses_the_defaults_of_its_canonical_name() -> None:
    config = mappings({"refund": {"match": {"event": "Chargeback Received"}}})
    event = mapped("Chargeback Received", {"revenue": 25, "total": 30, "order_id": "1001"},
                   config)
    assert (event.event, event.value, event.order_id) == ("refund", 30.0, "1001")


# --- items -----------------------------------------------------------------------------


def test_products_become_items() -> None:
    event = mapped("Order Completed", {"products": [
        {"product_id": "507f1f77bcf86cd799439011", "sku": "45790-32",
         "name": "Monopoly: 3rd Edition", "price": 19, "quantity": 1, "category": "Games",
         "brand": "Hasbro", "variant": "Classic", "url": "https://shop.example.com/p/1"},
        {"product_id": "505bd76785ebb509fc183733", "price": "3.50", "quantity": "2"},
    ]})
    assert event.items == [
        Item(id="507f1f77bcf86cd799439011", name="Monopoly: 3rd Edition", category="Games",
             brand="Hasbro", variant="Classic", price=19.0, quantity=1.0),
        Item(id="505bd76785ebb509fc183733", price=3.5, quantity=2.0),
    ]


def test_ga4_items_become_items() -> None:
    event = mapped("purchase", {"items": [{"item_id": "SKU_123", "item_name": "Stan and Friends",
                                           "item_brand": "Google", "item_category": "Apparel",
                                           "item_variant": "green", "price": 10.01,
                                           "quantity": 3}]})
    assert event.items == [Item(id="SKU_123", name="Stan and Friends", category="Apparel",
                                brand="Google", variant="green", price=10.01, quantity=3.0)]


def test_item_id_prefers_product_id_then_id_then_sku() -> None:
    event = mapped("Order Completed", {"products": [
        {"product_id": "P-1", "sku": "S-1"}, {"sku": "S-2", "id": "I-2"}, {"item_id": "G-3"},
        {"sku": "S-4"}]})
    assert [item.id for item in event.items] == ["P-1", "I-2", "G-3", "S-4"]


def test_v1_product_id_is_the_item_id() -> None:
    v1 = mapped("Completed Order", {"products": [{"id": "507f1f77", "sku": "45790-32"}]})
    v2 = mapped("Order Completed", {"products": [{"product_id": "507f1f77", "sku": "45790-32"}]})
    assert [i.id for i in v1.items] == [i.id for i in v2.items] == ["507f1f77"]


def test_items_without_id_or_name_and_non_objects_are_skipped() -> None:
    event = mapped("Order Completed", {"products": [
        {"price": 5, "quantity": 1}, "sku-1", None, 7, {"name": "Gift wrap", "price": 2},
    ]})
    assert event.items == [Item(name="Gift wrap", price=2.0)]


def test_products_that_is_not_a_list_gives_no_items() -> None:
    assert mapped("Order Completed", {"products": {"product_id": "P-1"}}).items == []


def test_single_item_event_value_is_price_times_quantity() -> None:
    event = mapped("Product Added", {"cart_id": "c-1", "product_id": "P-1", "name": "Notebook",
                                     "price": 18.99, "quantity": 2, "currency": "USD"})
    assert event.items == [Item(id="P-1", name="Notebook", price=18.99, quantity=2.0)]
    assert event.value == 18.99 * 2


def test_single_item_event_without_quantity_is_worth_its_price() -> None:
    event = mapped("Product Viewed", {"product_id": "P-1", "price": "24.50"})
    assert (event.value, event.items) == (24.5, [Item(id="P-1", price=24.5)])


def test_single_item_event_keeps_an_explicit_value() -> None:
    event = mapped("Product Viewed", {"product_id": "P-1", "price": 24.5, "quantity": 2,
                                      "value": 20})
    assert event.value == 20.0


@pytest.mark.parametrize("name", ["Product Added", "Product Removed", "Product Viewed",
                                  "Product Added to Wishlist"])
def test_every_single_item_event_makes_an_item_from_its_properties(name: str) -> None:
    event = mapped(name, {"sku": "G-32", "price": 10, "quantity": 3})
    assert (event.items, event.value) == ([Item(id="G-32", price=10.0, quantity=3.0)], 30.0)


def test_single_item_event_without_id_or_name_has_no_item_and_no_value() -> None:
    event = mapped("Product Added", {"price": 10, "quantity": 1})
    assert (event.items, event.value) == ([], None)


def test_single_item_event_with_a_products_list_uses_the_list() -> None:
    event = mapped("add_to_cart", {"items": [{"item_id": "A", "price": 2, "quantity": 1},
                                             {"item_id": "B", "price": 3, "quantity": 1}],
                                   "item_id": "ignored"})
    assert [item.id for item in event.items] == ["A", "B"]
    assert event.value is None


def test_other_events_do_not_make_an_item_from_their_properties() -> None:
    event = mapped("Checkout Started", {"product_id": "P-1", "name": "Notebook", "price": 10})
    assert (event.items, event.value) == ([], None)


# --- native events ---------------------------------------------------------------------


def native_record(event: dict[str, Any]) -> InboxRecord:
    return InboxRecord(seq=1, source="api", message_id=event.get("event_id", "n-1"),
                       kind="native", received_at=RECEIVED.timestamp(),
                       payload=msgspec.json.encode(event))


def test_native_event_keeps_its_top_level_value_order_id_and_items() -> None:
    processed = process(native_record({
        "event": "purchase", "event_id": "n-1", "order_id": 1001, "value": 129.9,
        "currency": "gbp", "items": [{"id": "sku-1", "price": 64.95, "quantity": 2}],
        "properties": {"revenue": 5, "total": 500, "order_id": "other",
                       "products": [{"product_id": "P-9"}]},
    }))
    event = event_of(processed)
    assert (event.value, event.order_id, event.currency) == (129.9, "1001", "GBP")
    assert event.items == [Item(id="sku-1", price=64.95, quantity=2.0)]
    assert not [w for w in event.warnings if "differ" in w]


def test_native_event_without_top_level_value_gets_it_from_properties() -> None:
    event = event_of(process(native_record({
        "event": "Order Completed", "event_id": "n-2",
        "properties": {"revenue": 25, "currency": "EUR", "order_id": "1002"},
    })))
    assert (event.event, event.original_name) == ("purchase", "Order Completed")
    assert (event.value, event.currency, event.order_id) == (25.0, "EUR", "1002")


def test_mapper_on_a_native_event_keeps_its_zero_value() -> None:
    native = native_decoder.decode(msgspec.json.encode(
        {"event": "purchase", "value": 0, "properties": {"revenue": 50}}))
    event = from_native(native, event_id="n-3", source="api", received_at=RECEIVED)
    assert Mapper(list(BUILTIN_RULES)).apply(event).value == 0.0


def test_rule_for_reports_the_matching_rule() -> None:
    native = native_decoder.decode(b'{"event": "Completed Order"}')
    event = from_native(native, event_id="n-4", source="api", received_at=RECEIVED)
    rule = Mapper(list(BUILTIN_RULES)).rule_for(event)
    assert rule is not None and rule.canonical == "purchase"
