"""Canonical event contracts: what each canonical event must and should carry. Pure.

A violation never loses the event: it is stored with the event, and each destination
decides later whether the platform would reject it or accept it with a warning. The table
is documented in docs/events.md (a test keeps the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from tracklayerd.events import Event

# ISO 4217 active codes.
_ISO_4217_CODES = """
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN
BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP
ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK
JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK
MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN
PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB
TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XCD
XCG XOF XPF YER ZAR ZMW ZWG ZWL
"""
ISO_4217 = frozenset(_ISO_4217_CODES.split())

IDENTIFIERS = ("email", "phone", "external_id", "customer_id", "user_id")


@dataclass(frozen=True)
class Contract:
    required: tuple[str, ...] = ()
    recommended: tuple[str, ...] = ()
    # At least one of IDENTIFIERS (anonymous ids do not count: no platform matches on them).
    needs_identifier: bool = False


CONTRACTS: dict[str, Contract] = {
    "purchase": Contract(required=("order_id", "value", "currency"), recommended=("items",)),
    "refund": Contract(required=("order_id",), recommended=("value", "currency")),
    "add_to_cart": Contract(recommended=("value", "currency", "items")),
    "begin_checkout": Contract(recommended=("value", "currency", "items")),
    "add_payment_info": Contract(recommended=("value", "currency")),
    "view_item": Contract(recommended=("items",)),
    "lead": Contract(needs_identifier=True),
    "sign_up": Contract(needs_identifier=True),
    "start_trial": Contract(needs_identifier=True, recommended=("value", "currency")),
}


def _present(event: Event, field: str) -> bool:
    value = getattr(event, field)
    return value not in (None, "", [])


def check(event: Event) -> Event:
    """The event with its contract violations and warnings recorded."""
    contract = CONTRACTS.get(event.event, Contract())
    violations = list(event.violations)
    warnings = list(event.warnings)
    for name in contract.required:
        if not _present(event, name):
            violations.append(f"{event.event} requires {name}")
    for name in contract.recommended:
        if not _present(event, name):
            warnings.append(f"{event.event} should carry {name}")
    if contract.needs_identifier and not any(getattr(event.user, f) for f in IDENTIFIERS):
        violations.append(f"{event.event} requires one of {', '.join(IDENTIFIERS)}")
    if event.value is not None and event.value < 0:
        violations.append(f"value must be 0 or more, got {event.value:g}")
    if event.currency is not None and event.currency not in ISO_4217:
        violations.append(f"currency {event.currency!r} is not an ISO 4217 code")
    if event.value is not None and event.currency is None and "currency" not in (
            contract.required):
        warnings.append("value without currency")
    if violations == event.violations and warnings == event.warnings:
        return event
    return msgspec.structs.replace(event, violations=violations, warnings=warnings)
