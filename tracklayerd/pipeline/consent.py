"""Consent, per destination: allowed, limited or suppressed, and the rule that decided.

Pure: no I/O, no awaits, never raises on what a sender can put in an event. The decision
order in :func:`decide` is documented, step by step, in docs/consent.md; keep the two in
step. Reasons name categories, regions and destinations (configuration and ISO codes), never
a value the sender supplied, so they can be stored, shown and logged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

import msgspec
import pycountry

from tracklayerd.config import Config, ConsentConfig, DestinationConfig
from tracklayerd.events import Consent, Context, Event, Identity
from tracklayerd.pipeline.normalize import lookup_key, region_of

Outcome = Literal["allowed", "limited", "suppressed"]
RegionSource = Literal["consent", "location", "address", "geoip"]

EU = frozenset({
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT",
    "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
})
EEA = EU | {"IS", "LI", "NO"}
REGION_GROUPS: dict[str, frozenset[str]] = {"EEA": EEA, "EU": EU}
# GDPR and ePrivacy (EEA), UK GDPR and PECR (GB), the revised FADP (CH): consent first.
DEFAULT_OPT_IN_REGIONS = EEA | {"GB", "CH"}

# Google consent-mode signals; a destination may require them by name, like categories.
GOOGLE_SIGNALS = ("ad_storage", "analytics_storage", "ad_user_data", "ad_personalization")

# Properties kept by limited(): commerce facts about the order, never about the person.
# Scalars only, so a nested object cannot carry an address in.
LIMITED_PROPERTIES = frozenset({
    "value", "revenue", "total", "subtotal", "price", "currency", "order_id", "orderId",
    "transaction_id", "checkout_id", "coupon", "discount", "shipping", "tax", "affiliation",
    "category", "content_type", "content_category", "num_items", "quantity", "sku",
    "product_id", "event_id", "eventId",
})

# Every rule a decision can name (":<id>" takes the category); docs/consent.md lists each.
RULES = (
    "google_ad_user_data_denied", "not_required", "consent_stated", "google_ad_storage_denied",
    "category_denied:", "category_not_granted:", "rudderstack_denied:",
    "rudderstack_not_granted:", "google_analytics_storage_denied",
    "google_ad_personalization_denied", "categories_granted", "no_consent_unknown_region",
    "no_consent_opt_in_region", "no_consent_default_allow",
)

_NO_CONSENT = Consent(categories_stated=False)


class ConsentDecision(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What one destination may do with one event, and why (stored on the delivery)."""

    outcome: Outcome
    # A short stable identifier of the rule that decided ("category_denied:marketing").
    rule: str
    # One sentence naming categories and region; never personal data.
    reason: str
    # The effective region ("FR", "US-CA") and where it came from; None: unknown.
    region: str | None = None
    region_source: RegionSource | None = None
    # US state-law limited data use ([consent] ldu_states): ldu_state is the 2-letter state,
    # None with ldu set when the state is unknown (the platform geolocates).
    ldu: bool = False
    ldu_state: str | None = None
    # Google consent-mode signals as sent, for Google destinations to put in their payload.
    ad_user_data: bool | None = None
    ad_personalization: bool | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ConsentPolicy:
    """The global part of the rules ([consent]), resolved once."""

    opt_in_regions: frozenset[str] = DEFAULT_OPT_IN_REGIONS
    unknown_region: Literal["opt_in", "opt_out"] = "opt_out"
    ldu_states: frozenset[str] = frozenset()
    # IP → (country, subdivision), from [consent] geoip_database; None: no GeoIP.
    geoip: Callable[[str], tuple[str | None, str | None]] | None = dataclasses.field(
        default=None, compare=False)

    @classmethod
    def from_config(cls, config: ConsentConfig) -> ConsentPolicy:
        regions: set[str] = set()
        for entry in config.opt_in_regions:
            code = opt_in_region(entry)
            if code is not None:
                regions |= REGION_GROUPS.get(code, {code})
        states = {state for entry in config.ldu_states if (state := us_state(entry))}
        geoip = None
        if config.geoip_database is not None:
            from tracklayerd.geoip import GeoIP

            geoip = GeoIP(config.geoip_database).lookup
        return cls(opt_in_regions=frozenset(regions), unknown_region=config.unknown_region,
                   ldu_states=frozenset(states), geoip=geoip)


@dataclasses.dataclass(frozen=True, slots=True)
class DestinationConsent:
    """One destination's requirements: categories (casefolded), what a denial means, and
    its registered platform ("meta", "google", ...; None for a non-ad destination)."""

    categories: tuple[str, ...] = ()
    on_denied: Literal["suppress", "limited"] = "suppress"
    platform: str | None = None
    # An ad destination that names no category ([destinations.x] consent unset and no
    # [consent] ad_categories) is still gated by region: an event stating no consent at all
    # is denied in opt-in regions. `consent = []` turns even that off.
    region_gated: bool = False

    @classmethod
    def from_config(
        cls, destination: DestinationConfig, consent: ConsentConfig, platform: str | None
    ) -> DestinationConsent:
        required = destination.consent
        if required is None:
            required = consent.ad_categories if platform is not None else []
        return cls(categories=_unique(required), on_denied=destination.consent_denied,
                   platform=platform,
                   region_gated=destination.consent is None and platform is not None)


def consent_rules(config: Config) -> tuple[ConsentPolicy, dict[str, DestinationConsent]]:
    """The policy and every destination's requirements, from a validated config."""
    from tracklayerd.destinations.registry import destination_platform

    return ConsentPolicy.from_config(config.consent), {
        dest_id: DestinationConsent.from_config(dest, config.consent,
                                                destination_platform(dest.type))
        for dest_id, dest in config.destinations.items()
    }


# --- regions -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Region:
    country: str  # ISO 3166-1 alpha-2
    subdivision: str | None  # the ISO 3166-2 suffix ("CA" of "US-CA")
    source: RegionSource

    def __str__(self) -> str:
        return f"{self.country}-{self.subdivision}" if self.subdivision else self.country


def effective_region(
    event: Event, geoip: Callable[[str], tuple[str | None, str | None]] | None = None
) -> Region | None:
    """Where the user is, for consent: the consent's own region, else `context.location`,
    else the user's address, else (with a GeoIP database) the IP's country; a lower source
    only adds the subdivision when it names the same country. Unparseable values are
    skipped, never guessed."""
    found = _stated_region(event)
    if found is None and geoip is not None and event.context.ip:
        country, sub_value = geoip(event.context.ip)
        if (code := _country(country)) is not None:
            return Region(code, _subdivision(code, sub_value), "geoip")
    return found


def _stated_region(event: Event) -> Region | None:
    consent = event.consent or _NO_CONSENT
    explicit_country, _, explicit_sub = (consent.region or "").partition("-")
    candidates: list[tuple[str | None, str | None, RegionSource]] = [
        (explicit_country, explicit_sub, "consent"),
        (consent.location_country, consent.location_region, "location"),
        (event.user.country, event.user.state, "address"),
    ]
    found: Region | None = None
    for country_value, sub_value, source in candidates:
        country = _country(country_value)
        if country is None:
            # An address with a state and no country still places a user whose country
            # is known from above (the Meta destination reads US states the same way).
            if found is not None and found.subdivision is None and source == "address":
                sub = _subdivision(found.country, sub_value)
                if sub is not None:
                    return dataclasses.replace(found, subdivision=sub)
            continue
        sub = _subdivision(country, sub_value)
        if found is None:
            found = Region(country, sub, source)
            if sub is not None:
                return found
        elif country == found.country and sub is not None:
            return dataclasses.replace(found, subdivision=sub)
    return found


def opt_in_region(entry: str) -> str | None:
    """A `[consent] opt_in_regions` entry in canonical form ("eea" → "EEA", "ca-qc" →
    "CA-QC"); None when it is no group, country or subdivision."""
    code = entry.strip().upper()
    if code in REGION_GROUPS:
        return code
    country, dash, _ = code.partition("-")
    if country not in _iso()[0]:
        return None
    return code if not dash or code in _iso()[1] else None


def us_state(entry: str) -> str | None:
    """A US state's 2-letter code ("ca" → "CA"); None for anything else."""
    code = entry.strip().upper()
    return code if len(code) == 2 and f"US-{code}" in _iso()[1] else None


def _country(value: str | None) -> str | None:
    return region_of(value) if value else None


@lru_cache(maxsize=4096)
def _subdivision(country: str, value: str | None) -> str | None:
    if not value:
        return None
    return _subdivisions(country).get(lookup_key(value))


@cache
def _subdivisions(country: str) -> dict[str, str]:
    """Lookup key → ISO 3166-2 suffix, by suffix, full code or name; top level wins."""
    index: dict[str, str] = {}
    subs = sorted((sub for sub in pycountry.subdivisions if sub.country_code == country),
                  key=lambda sub: sub.parent_code is not None)
    for sub in subs:
        suffix = sub.code.partition("-")[2]
        for key in (suffix, sub.code, sub.name):
            index.setdefault(lookup_key(key), suffix)
    return index


@cache
def _iso() -> tuple[frozenset[str], frozenset[str]]:
    """ISO 3166-1 alpha-2 codes and ISO 3166-2 subdivision codes."""
    return (frozenset(country.alpha_2 for country in pycountry.countries),
            frozenset(sub.code for sub in pycountry.subdivisions))


# --- the decision ------------------------------------------------------------------------

Verdict = Literal["granted", "denied", "not_granted", "silent"]


@dataclasses.dataclass(frozen=True, slots=True)
class _Status:
    category: str
    verdict: Verdict
    rule: str = ""
    why: str = ""


def decide(
    event: Event, destination_id: str, rules: DestinationConsent, policy: ConsentPolicy
) -> ConsentDecision:
    """Whether `destination_id` may receive `event` (docs/consent.md, "Decision order")."""
    return _decide(event, effective_region(event, policy.geoip), destination_id, rules, policy)


def decide_all(
    event: Event, rules: Mapping[str, DestinationConsent], policy: ConsentPolicy
) -> dict[str, ConsentDecision]:
    """:func:`decide` for every destination in `rules`, placing the user once."""
    region = effective_region(event, policy.geoip)
    return {dest_id: _decide(event, region, dest_id, dest_rules, policy)
            for dest_id, dest_rules in rules.items()}


def _decide(
    event: Event, region: Region | None, destination_id: str, rules: DestinationConsent,
    policy: ConsentPolicy,
) -> ConsentDecision:
    consent = event.consent or _NO_CONSENT
    ldu, ldu_state = _ldu(region, policy)
    where = _where(region)
    common: dict[str, Any] = {
        "region": None if region is None else str(region),
        "region_source": None if region is None else region.source,
        "ldu": ldu, "ldu_state": ldu_state,
        "ad_user_data": consent.ad_user_data, "ad_personalization": consent.ad_personalization,
    }

    def allow(rule: str, why: str) -> ConsentDecision:
        return ConsentDecision(outcome="allowed", rule=rule, reason=f"{why}; {where}", **common)

    def deny(rule: str, why: str) -> ConsentDecision:
        if rules.on_denied == "limited":
            return ConsentDecision(
                outcome="limited", rule=rule, **common,
                reason=f"{why}; {where}; sent to {destination_id} without personal data "
                       "(consent_denied = \"limited\")")
        return ConsentDecision(outcome="suppressed", rule=rule, reason=f"{why}; {where}",
                               **common)

    # 1. Google's own signal to Google: no user data, whatever the categories say.
    if rules.platform == "google" and consent.ad_user_data is False:
        return deny("google_ad_user_data_denied",
                    "Google consent mode ad_user_data is denied")
    # 2. No category required: not consent-gated, except that an ad destination left at its
    # defaults still needs some consent statement where the law wants an opt-in.
    required = rules.categories
    if not required:
        if not rules.region_gated:
            return allow("not_required", f"{destination_id} requires no consent category")
        if consent.ad_storage is False:
            return deny("google_ad_storage_denied",
                        "Google consent mode ad_storage is denied, read as advertising denied")
        if _stated(consent):
            return allow("consent_stated", f"consent is stated and {destination_id} names no "
                                           "category")
        return _by_region(region, policy, allow, deny, "no consent stated")
    # 3. An ad platform is advertising: a denied ad_storage denies it.
    if rules.platform is not None and consent.ad_storage is False:
        return deny("google_ad_storage_denied",
                    "Google consent mode ad_storage is denied, read as advertising denied")
    # 4. Every required category: any "no" decides, then any "not granted".
    statuses = _statuses(consent, required)
    for wanted in ("denied", "not_granted"):
        status = next((s for s in statuses if s.verdict == wanted), None)
        if status is not None:
            return deny(status.rule, status.why)
    names = ", ".join(required)
    if all(s.verdict == "granted" for s in statuses):
        return allow("categories_granted", f"consent grants {names}")
    # 5. Nothing stated about some category: the region decides.
    silent = ", ".join(s.category for s in statuses if s.verdict == "silent")
    return _by_region(region, policy, allow, deny, f"no consent stated for {silent}")


def _by_region(
    region: Region | None, policy: ConsentPolicy,
    allow: Callable[[str, str], ConsentDecision], deny: Callable[[str, str], ConsentDecision],
    what: str,
) -> ConsentDecision:
    if region is None:
        if policy.unknown_region == "opt_in":
            return deny("no_consent_unknown_region",
                        f"{what} and the region is unknown "
                        "([consent] unknown_region = \"opt_in\")")
        return allow("no_consent_default_allow",
                     f"{what}; the region is unknown and "
                     "[consent] unknown_region = \"opt_out\" allows")
    if _opt_in(region, policy):
        return deny("no_consent_opt_in_region", f"{what} in an opt-in region")
    return allow("no_consent_default_allow", f"{what}, allowed outside opt-in regions")


def _stated(consent: Consent) -> bool:
    """Whether the sender said anything about consent (a location alone says nothing)."""
    return (consent.categories_stated or bool(consent.allowed) or bool(consent.denied)
            or any(getattr(consent, signal) is not None for signal in GOOGLE_SIGNALS))


def _statuses(consent: Consent, required: tuple[str, ...]) -> list[_Status]:
    categories = _folded(consent.categories) if consent.categories_stated else None
    rudder = _rudderstack(consent, required)
    stated = categories is not None or rudder is not None
    statuses: list[_Status] = []
    for category in required:
        found: list[_Status] = []
        signal = getattr(consent, category) if category in GOOGLE_SIGNALS else None
        if signal is not None:
            found.append(_google(category, signal))
        else:
            if categories is not None:
                value = categories.get(category)
                if value is True:
                    found.append(_Status(category, "granted"))
                elif value is False:
                    found.append(_Status(category, "denied", f"category_denied:{category}",
                                         f"the consent's categories deny {category}"))
                else:
                    found.append(_Status(
                        category, "not_granted", f"category_not_granted:{category}",
                        f"the consent's categories do not grant {category}"))
            if rudder is not None:
                found.append(rudder[category])
        if not stated and not found:
            found.append(_Status(category, "silent"))
        statuses.append(_strictest(category, found))
    return statuses


def _google(category: str, granted: bool) -> _Status:
    if granted:
        return _Status(category, "granted")
    return _Status(category, "denied", f"google_{category}_denied",
                   f"Google consent mode {category} is denied")


def _rudderstack(consent: Consent, required: tuple[str, ...]) -> dict[str, _Status] | None:
    """RudderStack's lists, per required id; None when they state nothing (both empty)."""
    if not consent.allowed and not consent.denied:
        return None
    allowed = {_fold(i) for i in consent.allowed}
    denied = {_fold(i) for i in consent.denied}
    statuses: dict[str, _Status] = {}
    for category in required:
        if category in denied:
            statuses[category] = _Status(category, "denied", f"rudderstack_denied:{category}",
                                         f"RudderStack deniedConsentIds has {category}")
        # Senders that list only the denied ids (older SDKs) grant what they do not deny.
        elif category in allowed or not allowed:
            statuses[category] = _Status(category, "granted")
        else:
            statuses[category] = _Status(
                category, "not_granted", f"rudderstack_not_granted:{category}",
                f"RudderStack allowedConsentIds lacks {category}")
    if consent.strategy == "or" and any(s.verdict == "granted" for s in statuses.values()):
        return {category: _Status(category, "granted") for category in required}
    return statuses


def _strictest(category: str, found: list[_Status]) -> _Status:
    for verdict in ("denied", "not_granted", "granted"):
        for status in found:
            if status.verdict == verdict:
                return status
    return _Status(category, "silent")


def _opt_in(region: Region, policy: ConsentPolicy) -> bool:
    return region.country in policy.opt_in_regions or str(region) in policy.opt_in_regions


def _ldu(region: Region | None, policy: ConsentPolicy) -> tuple[bool, str | None]:
    if not policy.ldu_states or region is None or region.country != "US":
        return False, None
    if region.subdivision is None:
        return True, None
    if region.subdivision in policy.ldu_states:
        return True, region.subdivision
    return False, None


_SOURCES = {"consent": "the consent's region", "location": "context.location",
            "address": "the user's address", "geoip": "the IP address (GeoIP)"}


def _where(region: Region | None) -> str:
    if region is None:
        return "region unknown"
    return f"region {region} (from {_SOURCES[region.source]})"


def _fold(value: str) -> str:
    return value.strip().casefold()


def _folded(categories: dict[str, bool]) -> dict[str, bool]:
    # "Marketing" and "marketing" are one category; if they disagree, the "no" wins.
    folded: dict[str, bool] = {}
    for key, value in categories.items():
        folded[_fold(key)] = folded.get(_fold(key), True) and value
    return folded


def _unique(categories: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(folded for c in categories if (folded := _fold(c))))


# --- limited mode ------------------------------------------------------------------------


def limited(event: Event) -> Event:
    """The event without personal data, for a destination whose consent_denied is
    "limited": what was bought, for how much, when and on which page of the shop, not by
    whom. Identity, click ids, IP and user agent go; URLs lose query and fragment (where
    click ids and e-mail addresses travel), the referrer keeps only its origin; properties
    keep only commerce scalars, integrations only their on/off switches. Never raises."""
    context = event.context
    return msgspec.structs.replace(
        event,
        user=Identity(),
        context=Context(page_url=_without_query(context.page_url),
                        referrer=_origin(context.referrer), locale=context.locale),
        properties={key: value for key, value in event.properties.items()
                    if key in LIMITED_PROPERTIES
                    and isinstance(value, str | int | float | bool)},
        # Only the on/off switches: an integration's options can hold ids (GA's clientId).
        integrations={key: value for key, value in event.integrations.items()
                      if isinstance(value, bool)},
        enriched=[],
    )


def _without_query(url: str | None) -> str | None:
    parts = _split(url)
    if parts is None:
        return None
    return urlunsplit((parts.scheme, _host(parts), parts.path, "", ""))


def _origin(url: str | None) -> str | None:
    parts = _split(url)
    return None if parts is None else urlunsplit((parts.scheme, _host(parts), "", "", ""))


def _host(parts: SplitResult) -> str:
    # Without "user:password@": credentials in a URL are nobody's business downstream.
    return parts.netloc.rpartition("@")[2]


def _split(url: str | None) -> SplitResult | None:
    if not url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a malformed port, which must not reach a payload
    except ValueError:
        return None
    return parts if parts.scheme in ("http", "https") and parts.hostname else None
