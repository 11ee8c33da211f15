"""Source event → canonical event: the mapping layer. Pure: no I/O, no awaits.

Rules come from ``[mappings.<canonical name>]`` in config, then (unless
``[pipeline] builtin_mappings = false``) from the built-in table below, first match wins. A
rule matches by source event name (case-insensitive unless asked), message type and
property conditions, renames the event (keeping the source name as ``original_name``) and
fills value, currency, order_id and items from property paths when the event does not carry
them already. See docs/mappings.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec

from tracklayerd.config import Mapping as MappingConfig
from tracklayerd.events import Event, Item

# Segment's Order Completed has revenue (excluding shipping and tax), total (including them)
# and sometimes value; ad platforms optimise on revenue, so it comes first.
PURCHASE_VALUE = ("revenue", "value", "total")
REFUND_VALUE = ("total", "revenue", "value")
OTHER_VALUE = ("value", "revenue", "total")
CURRENCY = ("currency",)
ORDER_ID = ("order_id", "orderId", "transaction_id")
ITEMS = ("products", "items")
# Events about one product carry its fields in properties, not in a list.
SINGLE_ITEM_EVENTS = frozenset({"add_to_cart", "remove_from_cart", "view_item",
                                "add_to_wishlist"})
VALUE_MISMATCH_RATIO = 0.25


@dataclass(frozen=True)
class Rule:
    canonical: str
    events: frozenset[str] = frozenset()
    case_sensitive: bool = False
    types: frozenset[str] = frozenset()
    conditions: Mapping[str, Any] = field(default_factory=dict)
    value: tuple[str, ...] = ()
    currency: tuple[str, ...] = ()
    order_id: tuple[str, ...] = ()
    items: tuple[str, ...] = ()

    def matches(self, event: Event) -> bool:
        if self.events:
            name = event.event if self.case_sensitive else event.event.casefold()
            if name not in self.events:
                return False
        if self.types and event.message_type not in self.types:
            return False
        return all(lookup(event.properties, path) == want
                   for path, want in self.conditions.items())


def _builtin(canonical: str, *names: str, types: Iterable[str] = ()) -> Rule:
    return Rule(canonical, events=frozenset(n.casefold() for n in names),
                types=frozenset(types))


# Segment e-commerce spec v2 with its v1 aliases, the B2B SaaS spec, and GA4's recommended
# event names (which are canonical names already).
BUILTIN_RULES: tuple[Rule, ...] = (
    _builtin("purchase", "Order Completed", "Completed Order", "purchase"),
    _builtin("refund", "Order Refunded", "Refunded Order", "refund"),
    _builtin("add_to_cart", "Product Added", "Added Product", "add_to_cart"),
    _builtin("remove_from_cart", "Product Removed", "Removed Product", "remove_from_cart"),
    _builtin("begin_checkout", "Checkout Started", "Started Checkout", "begin_checkout"),
    _builtin("add_payment_info", "Payment Info Entered", "Entered Payment Info",
             "add_payment_info"),
    _builtin("add_shipping_info", "add_shipping_info"),
    _builtin("view_item", "Product Viewed", "Viewed Product", "view_item"),
    _builtin("view_item_list", "Product List Viewed", "Viewed Product Category",
             "view_item_list"),
    _builtin("view_cart", "Cart Viewed", "view_cart"),
    _builtin("add_to_wishlist", "Product Added to Wishlist", "add_to_wishlist"),
    _builtin("search", "Products Searched", "Searched Products", "search"),
    _builtin("sign_up", "Signed Up", "sign_up"),
    _builtin("start_trial", "Trial Started", "start_trial"),
    _builtin("lead", "Lead Generated", "generate_lead", "lead"),
    _builtin("page_view", types=("page", "screen")),
)


def rules_from_config(
    mappings: Mapping[str, MappingConfig | list[MappingConfig]], builtin: bool
) -> list[Rule]:
    rules: list[Rule] = []
    for canonical, configured in mappings.items():
        for cfg in configured if isinstance(configured, list) else [configured]:
            names = _as_list(cfg.match.event)
            rules.append(Rule(
                canonical,
                events=frozenset(n if cfg.case_sensitive else n.casefold() for n in names),
                case_sensitive=cfg.case_sensitive,
                types=frozenset(_as_list(cfg.match.type)),
                conditions=dict(cfg.match.properties),
                value=tuple(cfg.value), currency=tuple(cfg.currency),
                order_id=tuple(cfg.order_id), items=tuple(cfg.items),
            ))
    if builtin:
        rules.extend(BUILTIN_RULES)
    return rules


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class Mapper:
    def __init__(self, rules: list[Rule]) -> None:
        self._rules = rules
        # Per event name, the rules that could match it, in order: most rules name events,
        # so an event is checked against a few instead of every rule.
        self._candidates = lru_cache(maxsize=1024)(self._rules_naming)

    def _rules_naming(self, name: str) -> tuple[Rule, ...]:
        folded = name.casefold()
        return tuple(rule for rule in self._rules if not rule.events
                     or (name if rule.case_sensitive else folded) in rule.events)

    def rule_for(self, event: Event) -> Rule | None:
        """The first rule (configured ones, then the built-ins) that matches the event."""
        return next((rule for rule in self._candidates(event.event) if rule.matches(event)),
                    None)

    def apply(self, event: Event) -> Event:
        rule = self.rule_for(event)
        canonical = rule.canonical if rule is not None else event.event
        props = event.properties
        warnings = list(event.warnings)

        value = event.value
        if value is None:
            paths = (rule.value if rule and rule.value else _default_value_paths(canonical))
            value, warning = _value(props, paths, canonical)
            if warning:
                warnings.append(warning)
        items = event.items
        if not items:
            items = _items(props, rule.items if rule and rule.items else ITEMS, canonical)
        if value is None and canonical in SINGLE_ITEM_EVENTS and len(items) == 1:
            item = items[0]
            if item.price is not None:
                value = item.price * (item.quantity if item.quantity is not None else 1)
        currency = event.currency or _text(
            props, rule.currency if rule and rule.currency else CURRENCY)
        order_id = event.order_id or _text(
            props, rule.order_id if rule and rule.order_id else ORDER_ID)
        return msgspec.structs.replace(
            event,
            event=canonical,
            original_name=event.event if canonical != event.event else event.original_name,
            value=value,
            currency=currency.strip().upper() if currency else None,
            order_id=order_id,
            items=items,
            warnings=warnings,
        )


def _default_value_paths(canonical: str) -> tuple[str, ...]:
    if canonical == "purchase":
        return PURCHASE_VALUE
    if canonical == "refund":
        return REFUND_VALUE
    return OTHER_VALUE


def lookup(data: Mapping[str, Any], path: str) -> Any:
    """A dotted path inside a mapping ("order.total"); None when absent."""
    current: Any = data
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current


def _number(value: Any) -> float | None:
    """A finite float from a JSON number or numeric string; anything else is None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _value(
    props: Mapping[str, Any], paths: tuple[str, ...], canonical: str
) -> tuple[float | None, str | None]:
    chosen: tuple[str, float] | None = None
    for path in paths:
        number = _number(lookup(props, path))
        if number is not None:
            chosen = (path, number)
            break
    if chosen is None:
        return None, None
    warning = None
    revenue, total = _number(props.get("revenue")), _number(props.get("total"))
    if canonical == "purchase" and revenue and total and (
            abs(total - revenue) / max(abs(total), abs(revenue)) > VALUE_MISMATCH_RATIO):
        warning = (f"revenue ({revenue:g}) and total ({total:g}) differ by more than "
                   f"{VALUE_MISMATCH_RATIO:.0%}; value uses {chosen[0]}")
    return chosen[1], warning


def _text(props: Mapping[str, Any], paths: tuple[str, ...]) -> str | None:
    for path in paths:
        value = lookup(props, path)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()[:255]
    return None


def _items(props: Mapping[str, Any], paths: tuple[str, ...], canonical: str) -> list[Item]:
    for path in paths:
        listed = lookup(props, path)
        if isinstance(listed, list):
            return [item for raw in listed if isinstance(raw, Mapping)
                    if (item := _item(raw)) is not None]
    if canonical in SINGLE_ITEM_EVENTS:
        item = _item(props)
        return [item] if item is not None else []
    return []


def _item(raw: Mapping[str, Any]) -> Item | None:
    def text(*keys: str) -> str | None:
        return _text(raw, keys)

    item = Item(
        # v1's `id` is v2's `product_id`; the SKU is the last resort (Segment's own order).
        id=text("product_id", "item_id", "id", "sku"),
        name=text("name", "item_name"),
        category=text("category", "item_category"),
        brand=text("brand", "item_brand"),
        variant=text("variant", "item_variant"),
        price=_number(raw.get("price")),
        quantity=_number(raw.get("quantity")),
    )
    return item if item.id or item.name else None
