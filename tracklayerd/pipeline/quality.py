"""A match-quality model: how well an event's identifiers should match, per platform. Pure.

Only Meta publishes what its score rests on, and not as numbers; the other platforms say
which identifiers help. So this is a model, not a prediction of any platform's own score:
one table of points per platform (``WEIGHTS``), each row saying which statement of the
destination reference it rests on (``§1.9`` is section 1.9 of reference/destinations.md; the
Meta tiers of §1.9 and the summary of §12 carry most of it), or that it is a judgement.
``score`` adds the points of the identifiers present and caps the sum at 10, so adding an
identifier never lowers it. docs/identity.md renders the table (a test keeps the two in
step).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import msgspec

from tracklayerd.events import Event
from tracklayerd.pipeline.click_ids import click_id_problem, ip_problem

MAX_SCORE = 10.0

# The identifier kinds identifiers_present() finds on an event; score() takes a set of them.
KINDS = frozenset({
    "email", "phone", "external_id", "ip", "user_agent",
    "first_name", "last_name", "street", "city", "state", "zip", "country",
    "date_of_birth", "gender",
    "fbc", "fbp", "gclid", "gbraid", "wbraid", "ttclid", "ttp", "sccid", "scid", "epik",
    "rdt_cid", "li_fat_id", "msclkid",
})


@dataclass(frozen=True)
class Signal:
    """One row of a platform's table: points for one identifier, or for a combination."""

    kind: str
    points: float
    # Present when every kind of at least one of these sets is present.
    any_of: tuple[frozenset[str], ...]
    basis: str


def _one(kind: str, points: float, basis: str) -> Signal:
    return Signal(kind, points, (frozenset({kind}),), basis)


def _all(label: str, kinds: Iterable[str], points: float, basis: str) -> Signal:
    return Signal(label, points, (frozenset(kinds),), basis)


def _either(label: str, kinds: Iterable[str], points: float, basis: str) -> Signal:
    return Signal(label, points, tuple(frozenset({k}) for k in kinds), basis)


# Meta's Help Center tiers (reference 1.9), as points. Multiples of 0.5, so sums are exact
# and one decimal shows them.
HIGH, MEDIUM, LOW = 3.0, 1.5, 0.5

IP_UA = ("ip", "user_agent")

# Points out of 10. A platform's rows may add up to more than 10: the cap means a well-
# identified event scores 10 without every field a platform accepts.
WEIGHTS: dict[str, tuple[Signal, ...]] = {
    "meta": (
        _one("email", HIGH, "§1.9 Help Center: High (email)"),
        _one("fbc", HIGH, "§1.9 Help Center: High (click ID, fbc)"),
        _all("ip+user_agent", IP_UA, 2.0,
             "§1.9 developer best practices list client_ip_address as high quality, absent "
             "from the Help Center table; judgement: between High and Medium"),
        _one("phone", MEDIUM, "§1.9 Help Center: Medium (phone)"),
        _one("external_id", MEDIUM, "§1.9 Help Center: Medium (external ID)"),
        _one("fbp", MEDIUM, "§1.9 Help Center: Medium (browser ID, fbp)"),
        _one("date_of_birth", MEDIUM, "§1.9 Help Center: Medium (birthdate)"),
        _one("country", MEDIUM, "§1.9 Help Center: Medium (country)"),
        _one("first_name", LOW, "§1.9 Help Center: Low (first name)"),
        _one("last_name", LOW, "§1.9 Help Center: Low (last name)"),
        _one("city", LOW, "§1.9 Help Center: Low (city)"),
        _one("zip", LOW, "§1.9 Help Center: Low (ZIP)"),
        _one("state", LOW, "judgement: accepted (§1.3), in neither priority list; as Low"),
        _one("gender", LOW, "judgement: accepted (§1.3), in neither priority list; as Low"),
    ),
    "google": (
        _either("gclid/gbraid/wbraid", ("gclid", "gbraid", "wbraid"), 4.0,
                "§2.1 a click conversion names its click (gclid, or gbraid/wbraid); §12 "
                "'gclid when present'; judgement: the exact match, so the most points"),
        _one("email", 3.0, "§2.1 hashed_email is one of the two identifiers click uploads "
                           "and EC for leads take; §12 'multiple identifiers'"),
        _one("phone", 2.0, "§2.1 hashed_phone_number, the other one; judgement: less than "
                           "email, which every EC path takes"),
        _all("address", ("first_name", "last_name", "country", "zip"), 1.0,
             "§2.2 address_info (hashed first/last name, country, postal code) counts for EC "
             "for web only, not click uploads (§2.1); judgement: low"),
        _all("ip+user_agent", IP_UA, 0.5,
             "§2.1 user_ip_address is allowlisted only and not for EEA/UK/CH; §2.2 user_agent "
             "for EC web; judgement: low"),
    ),
    "tiktok": (
        _one("ttclid", 3.0, "§4 and §12 list ttclid among what raises EMQ; judgement: "
                            "the click itself, as Meta rates fbc High"),
        _one("email", 2.5, "§4 and §12 (email); judgement of the amount"),
        _one("phone", 1.5, "§4 and §12 (phone); judgement of the amount"),
        _one("external_id", 1.0, "§4 and §12 (external_id); judgement of the amount"),
        _one("ttp", 1.0, "§4 and §12 (ttp, the _ttp cookie); judgement of the amount"),
        _all("ip+user_agent", IP_UA, 1.0, "§4 and §12 (IP, UA); judgement of the amount"),
    ),
    "snapchat": (
        _one("email", 3.0, "§12 recommends hashed email; §5 minimum identity: em, ph or IP+UA"),
        _one("phone", 2.0, "§12 recommends hashed phone; §5 minimum identity"),
        _all("ip+user_agent", IP_UA, 2.0, "§12 recommends IP+UA; §5 minimum identity"),
        _one("sccid", 2.0, "§12 recommends ScCid (sc_click_id); judgement of the amount"),
        _one("scid", 1.0, "§12 recommends _scid (sc_cookie1); judgement: a browser id, as "
                          "Meta rates fbp below the click"),
    ),
    "pinterest": (
        _one("email", 3.0, "§6 required (em, hashed_maids or IP+UA) and §12 highly recommended"),
        _all("ip+user_agent", IP_UA, 2.0, "§6 the required alternative; §12 IP+UA on all events"),
        _one("epik", 2.0, "§12 highly recommended (click_id, _epik)"),
        _one("phone", 1.5, "§12 highly recommended (ph)"),
        _one("external_id", 1.0, "§12 highly recommended (external_id)"),
        _one("first_name", LOW, "§12 highly recommended (fn); judgement: weak alone"),
        _one("last_name", LOW, "§12 highly recommended (ln); judgement: weak alone"),
    ),
    "reddit": (
        _one("email", 3.0, "§7 and §12: email strongly recommended"),
        _one("rdt_cid", 3.0, "§7 click_id (rdt_cid); judgement: the click itself"),
        _all("ip+user_agent", IP_UA, 1.5, "§7 ip_address and user_agent; judgement"),
        _one("phone", 1.5, "§7 phone_number; judgement"),
        _one("external_id", 1.0, "§7 external_id; judgement"),
    ),
    "linkedin": (
        _one("email", 4.5, "§8 at least one of email / li_fat_id / Acxiom / Oracle id is "
                           "required for matching; §12"),
        _one("li_fat_id", 4.5, "§8 the same requirement; §12"),
        _all("name", ("first_name", "last_name"), 1.0,
             "§8 and §12: userInfo (names, company, title, country) only as a fallback"),
    ),
    "microsoft": (
        _one("msclkid", 4.0, "§12 msclkid + hashed email/phone; judgement: the click first"),
        _one("email", 3.0, "§12 hashed email"),
        _one("phone", 1.5, "§12 hashed phone; judgement: less than email"),
        _all("ip+user_agent", IP_UA, 1.0, "§9 clientIpAddress, clientUserAgent; judgement"),
        _one("external_id", 0.5, "§9 externalId; judgement"),
    ),
}
PLATFORMS = tuple(WEIGHTS)

# How to get each row's identifier, in one line, keyed by Signal.kind.
HOW_TO: dict[str, str] = {
    "email": "send user.email (Segment: traits.email on identify, context.traits.email on "
             "other calls)",
    "phone": "send user.phone with its country code (Segment: traits.phone)",
    "external_id": "send your own customer id as user.external_id (Segment: userId or "
                   "traits.externalId)",
    "ip+user_agent": "send from the browser (analytics.js), or forward the shopper's IP and "
                     "User-Agent as context.ip / context.user_agent (Segment: context.ip, "
                     "context.userAgent)",
    "fbc": "keep the landing URL with its query in context.page_url (fbclid becomes fbc), or "
           "pass the _fbc cookie as user.fbc (Segment: context.fbc)",
    "fbp": "pass the _fbp cookie from the browser as user.fbp (Segment: context.fbp)",
    "gclid/gbraid/wbraid": "keep the landing URL with its query in context.page_url (gclid, "
                           "gbraid, wbraid), or pass user.gclid (Segment: context.gclid)",
    "ttclid": "keep the landing URL with its query in context.page_url (ttclid), or pass "
              "user.ttclid (Segment: context.ttclid)",
    "ttp": "pass the _ttp cookie from the browser as user.ttp (Segment: context.ttp)",
    "sccid": "keep the landing URL with its query in context.page_url (ScCid), or pass "
             "user.sccid (Segment: context.sccid)",
    "scid": "pass the _scid cookie from the browser as user.scid (Segment: context.scid)",
    "epik": "keep the landing URL with its query in context.page_url (epik), or pass the "
            "_epik cookie as user.epik (Segment: context.epik)",
    "rdt_cid": "keep the landing URL with its query in context.page_url (rdt_cid), or pass "
               "user.rdt_cid (Segment: context.rdt_cid)",
    "li_fat_id": "keep the landing URL with its query in context.page_url (li_fat_id), or "
                 "pass user.li_fat_id (Segment: context.li_fat_id)",
    "msclkid": "keep the landing URL with its query in context.page_url (msclkid), or pass "
               "user.msclkid (Segment: context.msclkid)",
    "date_of_birth": "send user.date_of_birth (Segment: traits.birthday)",
    "country": "send user.country (Segment: traits.address.country)",
    "state": "send user.state (Segment: traits.address.state)",
    "city": "send user.city (Segment: traits.address.city)",
    "zip": "send user.zip (Segment: traits.address.postalCode)",
    "first_name": "send user.first_name (Segment: traits.firstName)",
    "last_name": "send user.last_name (Segment: traits.lastName)",
    "gender": "send user.gender (Segment: traits.gender)",
    "address": "send user.first_name, user.last_name, user.country and user.zip (Segment: "
               "traits.firstName, traits.lastName, traits.address.country / postalCode)",
    "name": "send user.first_name and user.last_name (Segment: traits.firstName, "
            "traits.lastName)",
}


class Missing(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    points: float
    # The kinds still lacking for it (for a combination, the closest one).
    lacking: list[str]
    how_to: str


class MatchQuality(msgspec.Struct, frozen=True, kw_only=True):
    platform: str
    # 0-10, one decimal: the sum of the breakdown, capped at 10.
    score: float
    # Row kind → the points it adds (before the cap), for the rows present.
    breakdown: dict[str, float]
    # The three missing rows worth the most points, most first (table order on ties).
    missing: list[Missing]


def score(identity_present: Iterable[str], platform: str) -> MatchQuality:
    """The modelled match quality of identifiers on one platform.

    Raises ValueError for an unknown platform or kind (a typo would otherwise score 0).
    """
    return _score(frozenset(identity_present), platform)


@lru_cache(maxsize=4096)
def _score(present: frozenset[str], platform: str) -> MatchQuality:
    # Cached: events carry few distinct sets of identifier kinds, and the result is frozen.
    if platform not in WEIGHTS:
        raise ValueError(f"unknown platform {platform!r}; known: {', '.join(PLATFORMS)}")
    if unknown := present - KINDS:
        raise ValueError(f"unknown identifier kinds: {', '.join(sorted(unknown))}")
    breakdown: dict[str, float] = {}
    missing: list[Missing] = []
    for signal in WEIGHTS[platform]:
        if any(needs <= present for needs in signal.any_of):
            breakdown[signal.kind] = signal.points
            continue
        closest = min(signal.any_of, key=lambda needs: len(needs - present))
        missing.append(Missing(kind=signal.kind, points=signal.points,
                               lacking=sorted(closest - present), how_to=HOW_TO[signal.kind]))
    # sorted() is stable: equal points keep the table's order.
    missing = sorted(missing, key=lambda m: -m.points)[:3]
    total = min(MAX_SCORE, sum(breakdown.values(), 0.0))
    return MatchQuality(platform=platform, score=round(total, 1), breakdown=breakdown,
                        missing=missing)


# Plausible, not valid: the destinations normalize and may still refuse. A 64-hex value is a
# SHA-256 the sender hashed already, which every platform takes as is (reference 0).
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"\+?[0-9\s().\-/]+(?:\s*(?:ext\.?|x|#)\s*[0-9]+)?", re.IGNORECASE)
_EXTENSION = re.compile(r"(?:ext\.?|x|#)\s*[0-9]+\s*$", re.IGNORECASE)
# E.164 allows 15 digits; fewer than 7 is no full number anywhere.
_PHONE_DIGITS = range(7, 16)


def _email_plausible(value: str) -> bool:
    value = value.strip()
    return bool(_SHA256.fullmatch(value) or _EMAIL.fullmatch(value))


def _phone_plausible(value: str) -> bool:
    value = value.strip()
    if _SHA256.fullmatch(value):
        return True
    if not _PHONE.fullmatch(value):
        return False
    digits = sum(c.isdigit() for c in _EXTENSION.sub("", value))
    return digits in _PHONE_DIGITS


def _text(value: str | None) -> bool:
    return value is not None and bool(value.strip())


_CLICK_KINDS = ("fbp", "gclid", "gbraid", "wbraid", "ttclid", "ttp", "sccid", "scid", "epik",
                "rdt_cid", "li_fat_id", "msclkid")
_PLAIN_KINDS = ("first_name", "last_name", "street", "city", "state", "zip", "country",
                "date_of_birth", "gender")


def identifiers_present(event: Event) -> set[str]:
    """The identifier kinds (``KINDS``) a canonical event carries in usable shape.

    An ``fbclid`` counts as ``fbc`` (a destination can build one from it); ``customer_id``
    and ``user_id`` count as ``external_id`` (each is the advertiser's own id for the
    person); ``anonymous_id`` counts for nothing, since no platform matches on it.
    """
    user, context = event.user, event.context
    kinds: set[str] = set()
    if user.email is not None and _email_plausible(user.email):
        kinds.add("email")
    if user.phone is not None and _phone_plausible(user.phone):
        kinds.add("phone")
    if any(_text(v) for v in (user.external_id, user.customer_id, user.user_id)):
        kinds.add("external_id")
    if context.ip is not None and ip_problem(context.ip.strip()) is None:
        kinds.add("ip")
    if _text(context.user_agent):
        kinds.add("user_agent")
    kinds.update(kind for kind in _PLAIN_KINDS if _text(getattr(user, kind)))
    kinds.update(kind for kind in _CLICK_KINDS if _click_id(kind, getattr(user, kind)))
    if _click_id("fbc", user.fbc) or _click_id("fbclid", user.fbclid):
        kinds.add("fbc")
    return kinds


def _click_id(field: str, value: str | None) -> bool:
    return value is not None and click_id_problem(field, value.strip()) is None
