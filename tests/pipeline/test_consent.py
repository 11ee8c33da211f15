"""Consent: every source format read by the real decoders, then decided per destination.

The matrix at the top is the specification in table form: format by region by destination
requirement → outcome and rule. Events are built the way ingest stores them and decoded by
tracklayerd.pipeline.decode, so the parsing is covered with the decision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.pipeline.support import RECEIVED, inbox_record
from tracklayerd.config import ConsentConfig, parse_config
from tracklayerd.errors import ConfigError
from tracklayerd.events import Consent, Context, Enriched, Event, Identity, Item, event_decoder
from tracklayerd.events import event_encoder as encoder
from tracklayerd.pipeline.consent import (
    DEFAULT_OPT_IN_REGIONS,
    EEA,
    RULES,
    ConsentDecision,
    ConsentPolicy,
    DestinationConsent,
    consent_rules,
    decide,
    decide_all,
    effective_region,
    limited,
)
from tracklayerd.pipeline.decode import decode
from tracklayerd.store.base import InboxRecord

DOCS = Path(__file__).resolve().parents[2] / "docs"
POLICY = ConsentPolicy()


# --- building events through the real decoders -------------------------------------------


def segment_event(context: dict[str, Any] | None = None, traits: dict[str, Any] | None = None,
                  origin: str = "tracking_api") -> Event:
    """A track call from analytics.js (or a webhook), stored by ingest and decoded."""
    message: dict[str, Any] = {
        "type": "track", "event": "Order Completed", "messageId": "m-1",
        "anonymousId": "a-1", "timestamp": "2026-11-20T10:00:00.000Z",
        "properties": {"order_id": "1001", "revenue": 129.9, "currency": "EUR"},
        "context": {"library": {"name": "analytics.js", "version": "2.0"},
                    **(context or {}), "traits": traits or {}},
    }
    return decode(inbox_record(message, origin=origin), None)


def native_event(consent: dict[str, Any] | None = None,
                 user: dict[str, Any] | None = None) -> Event:
    """A native API event, stored and decoded as the processor does."""
    body: dict[str, Any] = {"event": "purchase", "event_id": "ord-1001", "order_id": "1001",
                            "value": 129.9, "currency": "EUR", "user": user or {}}
    if consent is not None:
        body["consent"] = consent
    record = InboxRecord(seq=1, source="web", message_id="ord-1001", kind="native",
                         received_at=RECEIVED.timestamp(), payload=msgspec.json.encode(body))
    return decode(record, None)


# Each region reaches the event through a different source, so region resolution is
# covered too: the consent's own region, context.location, and the user's address.
SEGMENT_REGION: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {  # context, traits
    "FR": ({"location": {"country": "France", "city": "Lyon"}}, {}),
    "DE": ({"consent": {"region": "DE"}}, {}),
    "GB": ({}, {"address": {"country": "United Kingdom", "city": "Leeds"}}),
    "CH": ({"location": {"country": "CH"}}, {}),
    "US": ({}, {"address": {"country": "USA"}}),
    "US-CA": ({"location": {"country": "US", "region": "California"}}, {}),
    "unknown": ({}, {}),
}
NATIVE_REGION: dict[str, dict[str, Any]] = {  # user
    "FR": {"country": "FR"}, "DE": {"country": "Germany"}, "GB": {"country": "GB"},
    "CH": {"country": "Switzerland"}, "US": {"country": "US"},
    "US-CA": {"country": "US", "state": "CA"}, "unknown": {},
}
REGIONS = list(SEGMENT_REGION)
OPT_IN, OPT_OUT, UNKNOWN = {"FR", "DE", "GB", "CH"}, {"US", "US-CA"}, {"unknown"}

ALL_TRUE = {"Marketing": True, "Analytics": True}
# format → ("segment", context) or ("native", consent block or None)
FORMATS: dict[str, tuple[str, Any]] = {
    "segment_granted": ("segment", {"consent": {"categoryPreferences": ALL_TRUE}}),
    "segment_marketing_only": ("segment", {"consent": {"categoryPreferences": {
        "marketing": True, "analytics": False}}}),
    "segment_denied": ("segment", {"consent": {"categoryPreferences": {
        "marketing": False, "analytics": False}}}),
    "segment_empty": ("segment", {"consent": {"categoryPreferences": {}}}),
    "segment_missing": ("segment", {}),
    "rudderstack_and_denied": ("segment", {"consentManagement": {
        "provider": "oneTrust", "allowedConsentIds": ["analytics"],
        "deniedConsentIds": ["marketing"], "resolutionStrategy": "and"}}),
    "rudderstack_or_denied": ("segment", {"consentManagement": {
        "provider": "oneTrust", "allowedConsentIds": ["analytics"],
        "deniedConsentIds": ["marketing"], "resolutionStrategy": "or"}}),
    "rudderstack_allowed": ("segment", {"consentManagement": {
        "provider": "ketch", "allowedConsentIds": ["Marketing", "analytics"],
        "deniedConsentIds": ["personalisation"]}}),
    "rudderstack_partial": ("segment", {"consentManagement": {
        "provider": "custom", "allowedConsentIds": ["marketing"],
        "deniedConsentIds": ["personalisation"]}}),
    "rudderstack_denied_only": ("segment", {"consentManagement": {
        "provider": "oneTrust", "deniedConsentIds": ["personalisation"]}}),
    "rudderstack_empty": ("segment", {"consentManagement": {
        "provider": "oneTrust", "allowedConsentIds": [], "deniedConsentIds": []}}),
    "native_granted": ("native", {"categories": {"marketing": True, "analytics": True}}),
    "native_denied": ("native", {"categories": {"marketing": False}}),
    "native_no_categories": ("native", {"categories_stated": False, "ad_user_data": True}),
    "native_missing": ("native", None),
    "google_granted": ("segment", {"consent": {
        "ad_storage": "granted", "ad_user_data": "granted", "ad_personalization": "denied"}}),
    "google_ad_user_data_denied": ("segment", {"consent": {
        "categoryPreferences": ALL_TRUE, "adUserData": "denied"}}),
    "google_ad_storage_denied": ("segment", {"consent": {
        "categoryPreferences": ALL_TRUE, "ad_storage": False}}),
}

DESTINATIONS = {
    "meta_ungated": DestinationConsent(platform="meta"),
    "meta_marketing": DestinationConsent(categories=("marketing",), platform="meta"),
    "meta_both": DestinationConsent(categories=("marketing", "analytics"), platform="meta"),
    "meta_limited": DestinationConsent(categories=("marketing",), on_denied="limited",
                                       platform="meta"),
    "google_limited": DestinationConsent(categories=("marketing",), on_denied="limited",
                                         platform="google"),
    "hook_analytics": DestinationConsent(categories=("analytics",), platform=None),
}

A = ("allowed", "categories_granted")
NOT_REQUIRED = ("allowed", "not_required")
REGION = ("region", "")  # no statement: the region decides (REGION_EXPECTED below)


def no(rule: str) -> tuple[str, str]:
    return ("suppressed", rule)


def lim(rule: str) -> tuple[str, str]:
    return ("limited", rule)


# format → (outcome, rule) per destination, in DESTINATIONS' order: meta_ungated,
# meta_marketing, meta_both, meta_limited, google_limited, hook_analytics.
EXPECTED: dict[str, tuple[tuple[str, str], ...]] = {
    "segment_granted": (NOT_REQUIRED, A, A, A, A, A),
    "segment_marketing_only": (NOT_REQUIRED, A, no("category_denied:analytics"), A, A,
                               no("category_denied:analytics")),
    "segment_denied": (NOT_REQUIRED, no("category_denied:marketing"),
                       no("category_denied:marketing"), lim("category_denied:marketing"),
                       lim("category_denied:marketing"), no("category_denied:analytics")),
    "segment_empty": (NOT_REQUIRED, no("category_not_granted:marketing"),
                      no("category_not_granted:marketing"),
                      lim("category_not_granted:marketing"),
                      lim("category_not_granted:marketing"),
                      no("category_not_granted:analytics")),
    "segment_missing": (NOT_REQUIRED, REGION, REGION, REGION, REGION, REGION),
    "rudderstack_and_denied": (NOT_REQUIRED, no("rudderstack_denied:marketing"),
                               no("rudderstack_denied:marketing"),
                               lim("rudderstack_denied:marketing"),
                               lim("rudderstack_denied:marketing"), A),
    # "or": one granted id of the destination's is enough; marketing alone is denied.
    "rudderstack_or_denied": (NOT_REQUIRED, no("rudderstack_denied:marketing"), A,
                              lim("rudderstack_denied:marketing"),
                              lim("rudderstack_denied:marketing"), A),
    "rudderstack_allowed": (NOT_REQUIRED, A, A, A, A, A),
    "rudderstack_partial": (NOT_REQUIRED, A, no("rudderstack_not_granted:analytics"), A, A,
                            no("rudderstack_not_granted:analytics")),
    # Older SDKs send only the denied ids: what is not denied is granted.
    "rudderstack_denied_only": (NOT_REQUIRED, A, A, A, A, A),
    "rudderstack_empty": (NOT_REQUIRED, REGION, REGION, REGION, REGION, REGION),
    "native_granted": (NOT_REQUIRED, A, A, A, A, A),
    "native_denied": (NOT_REQUIRED, no("category_denied:marketing"),
                      no("category_denied:marketing"), lim("category_denied:marketing"),
                      lim("category_denied:marketing"), no("category_not_granted:analytics")),
    "native_no_categories": (NOT_REQUIRED, REGION, REGION, REGION, REGION, REGION),
    "native_missing": (NOT_REQUIRED, REGION, REGION, REGION, REGION, REGION),
    # Google signals alone grant no category.
    "google_granted": (NOT_REQUIRED, REGION, REGION, REGION, REGION, REGION),
    "google_ad_user_data_denied": (NOT_REQUIRED, A, A, A, lim("google_ad_user_data_denied"),
                                   A),
    # ad_storage denies ad platforms only; the webhook is not one.
    "google_ad_storage_denied": (NOT_REQUIRED, no("google_ad_storage_denied"),
                                 no("google_ad_storage_denied"),
                                 lim("google_ad_storage_denied"),
                                 lim("google_ad_storage_denied"), A),
}


def region_expected(region: str, rules: DestinationConsent) -> tuple[str, str]:
    denied = "limited" if rules.on_denied == "limited" else "suppressed"
    if region in OPT_IN:
        return (denied, "no_consent_opt_in_region")
    # An unknown region counts as elsewhere ([consent] unknown_region defaults to "opt_out").
    return ("allowed", "no_consent_default_allow")


def event_for(format_name: str, region: str) -> Event:
    kind, payload = FORMATS[format_name]
    if kind == "native":
        return native_event(payload, NATIVE_REGION[region])
    region_context, traits = SEGMENT_REGION[region]
    context = {**payload, **region_context}
    if "consent" in payload and "consent" in region_context:
        context["consent"] = {**payload["consent"], **region_context["consent"]}
    return segment_event(context, traits)


def test_the_matrix_covers_every_format_and_destination() -> None:
    assert set(EXPECTED) == set(FORMATS)
    assert all(len(row) == len(DESTINATIONS) for row in EXPECTED.values())


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("format_name", list(FORMATS))
def test_consent_matrix(format_name: str, region: str) -> None:
    event = event_for(format_name, region)
    got = {}
    want = {}
    for (dest_id, rules), expected in zip(DESTINATIONS.items(), EXPECTED[format_name],
                                          strict=True):
        decision = decide(event, dest_id, rules, POLICY)
        got[dest_id] = (decision.outcome, decision.rule)
        want[dest_id] = region_expected(region, rules) if expected == REGION else expected
        assert decision.region == (None if region == "unknown" else region)
    assert got == want


# --- parsing -----------------------------------------------------------------------------


def test_segment_category_preferences_are_kept_as_sent() -> None:
    event = segment_event({"consent": {"categoryPreferences": {"Advertising": True,
                                                               "C0004": False}}})
    assert event.consent == Consent(categories={"Advertising": True, "C0004": False})


def test_empty_category_preferences_is_a_statement_that_denies_every_category() -> None:
    event = segment_event({"consent": {"categoryPreferences": {}}})
    assert event.consent == Consent(categories={})
    assert event.consent.categories_stated


@pytest.mark.parametrize("consent", [{"defaultDestinationBehavior": "imply"},
                                     {"categoryPreferences": ["Advertising"]}, "granted"])
def test_consent_without_anything_usable_is_no_consent(consent: Any) -> None:
    assert segment_event({"consent": consent}).consent is None


def test_rudderstack_consent_management_is_read() -> None:
    event = segment_event({"consentManagement": {
        "provider": "oneTrust", "resolutionStrategy": "OR",
        "allowedConsentIds": ["C0001", "C0003", "", None, {"x": 1}, "C0001"],
        "deniedConsentIds": ["C0004", 5],
    }})
    assert event.consent == Consent(categories_stated=False, provider="oneTrust",
                                    allowed=["C0001", "C0003"], denied=["C0004", "5"],
                                    strategy="or")


@pytest.mark.parametrize("origin", ["rudderstack_webhook", "segment_webhook"])
def test_webhook_messages_carry_consent_like_the_tracking_api(origin: str) -> None:
    event = segment_event({"consentManagement": {"deniedConsentIds": ["marketing"]}},
                          origin=origin)
    assert event.consent == Consent(categories_stated=False, denied=["marketing"])


def test_legacy_allowed_consent_ids_object_gives_its_keys() -> None:
    # RudderStack's v1.1 JavaScript SDK: {id: category name}.
    event = segment_event({"consentManagement": {
        "allowedConsentIds": {"C0001": "Strictly Necessary", "C0004": "Targeting"}}})
    assert event.consent is not None
    assert event.consent.allowed == ["C0001", "C0004"]


def test_unknown_resolution_strategy_is_none_and_means_all() -> None:
    event = segment_event({"consentManagement": {
        "resolutionStrategy": "xor", "allowedConsentIds": ["analytics"],
        "deniedConsentIds": ["marketing"]}})
    assert event.consent is not None and event.consent.strategy is None
    rules = DESTINATIONS["meta_both"]
    assert decide(event, "meta", rules, POLICY).rule == "rudderstack_denied:marketing"


def test_consent_ids_are_capped() -> None:
    event = segment_event({"consentManagement": {
        "deniedConsentIds": [f"c{i}" for i in range(500)]}})
    assert event.consent is not None and len(event.consent.denied) == 100


@pytest.mark.parametrize(("value", "expected"), [
    ("granted", True), ("DENIED", False), (" granted ", True), (True, True), (False, False),
    ("yes", None), (1, None), (None, None),
])
def test_google_signals_in_segment_consent(value: Any, expected: bool | None) -> None:
    event = segment_event({"consent": {"ad_storage": value, "analyticsStorage": value,
                                       "ad_user_data": value, "adPersonalization": value}})
    consent = event.consent or Consent(categories_stated=False)
    assert (consent.ad_storage, consent.analytics_storage, consent.ad_user_data,
            consent.ad_personalization) == (expected,) * 4
    assert consent.categories_stated is False


def test_location_and_consent_region_are_stored_as_given() -> None:
    event = segment_event({"location": {"country": "United States", "region": "California",
                                        "city": "San Francisco"},
                           "consent": {"region": "us-ca"}})
    assert event.consent == Consent(categories_stated=False, region="us-ca",
                                    location_country="United States",
                                    location_region="California")


def test_native_consent_block_with_the_new_fields() -> None:
    event = native_event({"categories": {"marketing": True}, "allowed": ["C0004"],
                          "strategy": "and", "region": "FR"})
    assert event.consent == Consent(categories={"marketing": True}, allowed=["C0004"],
                                    strategy="and", region="FR")


def test_stored_event_with_consent_round_trips() -> None:
    event = event_for("rudderstack_or_denied", "US-CA")
    assert event_decoder.decode(encoder.encode(event)) == event


# --- regions -----------------------------------------------------------------------------


def test_explicit_region_wins_over_location_and_address() -> None:
    event = segment_event({"consent": {"region": "DE"}, "location": {"country": "FR"}},
                          {"address": {"country": "GB"}})
    region = effective_region(event)
    assert region is not None and (str(region), region.source) == ("DE", "consent")


def test_location_wins_over_address() -> None:
    event = segment_event({"location": {"country": "FR"}}, {"address": {"country": "GB"}})
    region = effective_region(event)
    assert region is not None and (str(region), region.source) == ("FR", "location")


def test_a_lower_source_adds_the_state_of_the_same_country_only() -> None:
    same = segment_event({"consent": {"region": "US"}},
                         {"address": {"country": "US", "state": "Texas"}})
    other = segment_event({"consent": {"region": "US"}},
                          {"address": {"country": "CA", "state": "QC"}})
    no_country = segment_event({"location": {"country": "US"}}, {"address": {"state": "CO"}})
    assert [str(effective_region(e)) for e in (same, other, no_country)] == [
        "US-TX", "US", "US-CO"]


def test_an_unparseable_region_is_skipped_not_guessed() -> None:
    event = segment_event({"consent": {"region": "Atlantis-9"}, "location": {"country": "CH"}})
    region = effective_region(event)
    assert region is not None and (str(region), region.source) == ("CH", "location")
    assert effective_region(segment_event({"consent": {"region": "zz"}})) is None


def test_unknown_region_opt_out_allows_a_missing_consent() -> None:
    policy = ConsentPolicy.from_config(ConsentConfig(unknown_region="opt_out"))
    decision = decide(segment_event(), "meta", DESTINATIONS["meta_marketing"], policy)
    assert (decision.outcome, decision.rule) == ("allowed", "no_consent_default_allow")
    assert "region unknown" in decision.reason


def test_opt_in_regions_take_groups_countries_and_subdivisions() -> None:
    policy = ConsentPolicy.from_config(ConsentConfig(opt_in_regions=["EU", "CA-QC", "US-CA"]))
    assert policy.opt_in_regions == EEA - {"IS", "LI", "NO"} | {"CA-QC", "US-CA"}
    rules = DESTINATIONS["meta_marketing"]

    def outcome(context: dict[str, Any]) -> str:
        return decide(segment_event(context), "meta", rules, policy).outcome

    assert outcome({"location": {"country": "CA", "region": "Québec"}}) == "suppressed"
    assert outcome({"location": {"country": "CA", "region": "Ontario"}}) == "allowed"
    assert outcome({"consent": {"region": "US-CA"}}) == "suppressed"
    assert outcome({"consent": {"region": "NO"}}) == "allowed"  # EEA, not EU


def test_default_opt_in_regions_are_the_eea_gb_and_ch() -> None:
    assert ConsentPolicy.from_config(ConsentConfig()).opt_in_regions == DEFAULT_OPT_IN_REGIONS
    assert len(DEFAULT_OPT_IN_REGIONS) == 32 and {"IS", "LI", "NO", "GB", "CH"} <= EEA | {
        "GB", "CH"}


# --- categories, Google, LDU -------------------------------------------------------------


def test_category_ids_compare_case_insensitively_and_a_conflict_denies() -> None:
    rules = DestinationConsent(categories=("marketing",), platform="meta")
    upper = segment_event({"consent": {"categoryPreferences": {"MARKETING": True}}})
    both = segment_event({"consent": {"categoryPreferences": {"Marketing": True,
                                                              "marketing": False}}})
    assert decide(upper, "meta", rules, POLICY).rule == "categories_granted"
    assert decide(both, "meta", rules, POLICY).rule == "category_denied:marketing"


@pytest.mark.parametrize(("signal", "rule"), [
    ("granted", "categories_granted"), ("denied", "google_ad_storage_denied")])
def test_a_google_signal_can_be_required_like_a_category(signal: str, rule: str) -> None:
    rules = DestinationConsent(categories=("ad_storage",), platform="microsoft")
    event = segment_event({"consent": {"ad_storage": signal}, "location": {"country": "FR"}})
    assert decide(event, "uet", rules, POLICY).rule == rule


def test_a_required_google_signal_never_sent_leaves_it_to_the_region() -> None:
    rules = DestinationConsent(categories=("analytics_storage",), platform=None)
    event = segment_event({"consent": {"ad_storage": "granted"},
                           "location": {"country": "FR"}})
    assert decide(event, "hook", rules, POLICY).rule == "no_consent_opt_in_region"


def test_google_ad_user_data_applies_to_google_even_without_categories() -> None:
    event = segment_event({"consent": {"ad_user_data": "denied"}})
    ungated = DestinationConsent(platform="google")
    assert decide(event, "ads", ungated, POLICY).rule == "google_ad_user_data_denied"
    assert decide(event, "meta", DestinationConsent(platform="meta"), POLICY).rule == (
        "not_required")


def test_google_signals_are_passed_through_on_the_decision() -> None:
    event = event_for("google_granted", "US")
    decision = decide(event, "ads", DestinationConsent(platform="google"), POLICY)
    assert (decision.ad_user_data, decision.ad_personalization) == (True, False)


@pytest.mark.parametrize(("context", "traits", "ldu"), [
    ({"consent": {"region": "US-CA"}}, {}, (True, "CA")),
    ({"location": {"country": "US", "region": "Colorado"}}, {}, (True, "CO")),
    ({}, {"address": {"country": "United States", "state": "ct"}}, (True, "CT")),
    ({"consent": {"region": "US-TX"}}, {}, (False, None)),  # not listed
    ({}, {"address": {"country": "US"}}, (True, None)),  # state unknown: geolocate
    ({"consent": {"region": "FR"}}, {}, (False, None)),
    ({}, {}, (False, None)),
])
def test_ldu_from_the_effective_region(
    context: dict[str, Any], traits: dict[str, Any], ldu: tuple[bool, str | None]
) -> None:
    policy = ConsentPolicy.from_config(ConsentConfig(ldu_states=["CA", "CO", "CT"]))
    decision = decide(segment_event(context, traits), "meta", DestinationConsent(), policy)
    assert (decision.ldu, decision.ldu_state) == ldu


def test_no_ldu_without_ldu_states() -> None:
    event = segment_event({"consent": {"region": "US-CA"}})
    decision = decide(event, "meta", DestinationConsent(), POLICY)
    assert (decision.ldu, decision.ldu_state) == (False, None)


def test_decide_all_is_decide_for_each_destination() -> None:
    event = event_for("rudderstack_or_denied", "FR")
    assert decide_all(event, DESTINATIONS, POLICY) == {
        dest_id: decide(event, dest_id, rules, POLICY) for dest_id, rules in DESTINATIONS.items()}


def test_a_decision_is_storable() -> None:
    decision = decide(event_for("segment_denied", "FR"), "meta",
                      DESTINATIONS["meta_limited"], POLICY)
    assert msgspec.json.decode(msgspec.json.encode(decision), type=ConsentDecision) == decision


# --- configuration -----------------------------------------------------------------------


def config(**data: Any) -> Any:
    return parse_config(data, Path.cwd())


META = {"type": "meta_capi", "pixel_id": "1", "access_token": "t"}
HOOK = {"type": "webhook", "endpoint": "https://hooks.example.com/x"}


def test_rules_from_config_inherit_ad_categories_for_ad_platforms_only() -> None:
    policy, rules = consent_rules(config(
        consent={"ad_categories": ["Marketing"], "unknown_region": "opt_out",
                 "ldu_states": ["ca"]},
        destinations={"meta": META, "meta_open": {**META, "consent": []},
                      "meta_own": {**META, "consent": ["C0004", "c0004", " C0002 "],
                                   "consent_denied": "limited"},
                      "hook": HOOK}))
    assert policy == ConsentPolicy(unknown_region="opt_out", ldu_states=frozenset({"CA"}))
    assert rules == {
        "meta": DestinationConsent(categories=("marketing",), platform="meta",
                                   region_gated=True),
        "meta_open": DestinationConsent(platform="meta"),
        "meta_own": DestinationConsent(categories=("c0004", "c0002"), on_denied="limited",
                                       platform="meta"),
        "hook": DestinationConsent(),
    }


def test_config_normalizes_region_codes() -> None:
    parsed = config(consent={"opt_in_regions": ["eea", "gb", "ca-qc"], "ldu_states": ["co"]})
    assert (parsed.consent.opt_in_regions, parsed.consent.ldu_states) == (
        ["EEA", "GB", "CA-QC"], ["CO"])


@pytest.mark.parametrize(("data", "message"), [
    ({"consent": {"opt_in_regions": ["EEA", "UK"]}}, "consent.opt_in_regions[1]: 'UK' is not"),
    ({"consent": {"opt_in_regions": ["FR-ZZZ"]}}, "consent.opt_in_regions[0]: 'FR-ZZZ'"),
    ({"consent": {"ldu_states": ["CA", "Cal"]}}, "consent.ldu_states[1]: 'Cal' is not"),
    ({"consent": {"unknown_region": "deny"}}, "consent.unknown_region: Invalid enum value"),
    ({"consent": {"ad_categories": [""]}}, "consent.ad_categories[0]: a consent category"),
    ({"consent": {"geoip_database": "x.mmdb"}}, "consent.geoip_database: cannot open"),
    ({"destinations": {"meta": {**META, "consent_denied": "drop"}}},
     "destinations.meta.consent_denied: Invalid enum value 'drop'"),
    ({"destinations": {"meta": {**META, "consent": ["marketing", "  "]}}},
     "destinations.meta.consent[1]: a consent category"),
    ({"destinations": {"meta": {**META, "consent": "marketing"}}},
     "destinations.meta.consent: Expected `array"),
])
def test_config_errors_name_their_path(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config(**data)
    assert str(error.value).startswith(message), str(error.value)


# --- limited mode ------------------------------------------------------------------------

FULL_IDENTITY = Identity(
    email="ada.lovelace@example.com", phone="+44 20 7946 0958", external_id="crm-ada-77",
    customer_id="cust-ada-88", user_id="user-ada-99", anonymous_id="anon-ada-00",
    first_name="Augusta", last_name="Lovelace", street="12 St James's Square",
    city="Marylebone", state="Greater London", zip="SW1Y 4JH", country="United Kingdom",
    date_of_birth="1815-12-10", gender="female", fbc="fb.1.1700000000.AbCfbc",
    fbp="fb.1.1700000000.123fbp", fbclid="IwARfbclid", gclid="Cj0gclid", gbraid="gbraid-1",
    wbraid="wbraid-1", ttclid="ttclid-1", ttp="ttp-1", sccid="sccid-1", scid="scid-1",
    epik="epik-1", rdt_cid="rdt-1", li_fat_id="lifat-1", msclkid="msclkid-1",
    previous_id="prev-ada-11",
)


def full_event() -> Event:
    return Event(
        event="purchase", event_id="ord-1001-purchase", timestamp=RECEIVED,
        received_at=RECEIVED, source="web", user=FULL_IDENTITY, order_id="1001", value=129.9,
        currency="GBP", items=[Item(id="sku-1", name="Notebook", price=64.95, quantity=2)],
        consent=Consent(categories={"marketing": False}, region="GB",
                        location_country="GB", location_region="England"),
        context=Context(ip="203.0.113.7", user_agent="Mozilla/5.0 (X11) Firefox/133.0",
                        page_url="https://user:pw@shop.example:8443/thanks?email=ada%40example.com"
                                 "&gclid=Cj0gclid#top",
                        referrer="https://mail.example.net/inbox/ada?id=7",
                        page_title="Thank you, Augusta", locale="en-GB"),
        properties={"revenue": 129.9, "currency": "GBP", "coupon": "WINTER",
                    "email": "ada.lovelace@example.com", "name": "Augusta Lovelace",
                    "address": {"street": "12 St James's Square"}, "tax": 21.65,
                    "category": {"nested": "ada"}},
        enriched=[Enriched(field="user.email", from_event=3, seen_at=RECEIVED)],
        integrations={"All": False, "Meta": True, "Google Analytics": {"clientId": "555.ada"}},
        message_id="m-1", explicit_event_id=True, original_name="Order Completed",
    )


def test_limited_removes_every_personal_field() -> None:
    stripped = limited(full_event())
    assert stripped.user == Identity()
    assert stripped.context == Context(page_url="https://shop.example:8443/thanks",
                                       referrer="https://mail.example.net", locale="en-GB")
    assert stripped.properties == {"revenue": 129.9, "currency": "GBP", "coupon": "WINTER",
                                   "tax": 21.65}
    assert stripped.enriched == []
    assert stripped.integrations == {"All": False, "Meta": True}
    body = encoder.encode(stripped).decode()
    for value in msgspec.structs.asdict(FULL_IDENTITY).values():
        assert value not in body
    for value in ("203.0.113.7", "Firefox", "Augusta", "ada", "pw@", "555"):
        assert value not in body


def test_limited_keeps_what_the_conversion_is() -> None:
    event = full_event()
    stripped = limited(event)
    kept = ("event", "event_id", "timestamp", "received_at", "source", "message_type",
            "order_id", "value", "currency", "items", "consent", "message_id",
            "explicit_event_id", "original_name", "violations", "warnings")
    assert {f: getattr(stripped, f) for f in kept} == {f: getattr(event, f) for f in kept}
    assert event.user == FULL_IDENTITY  # the original is untouched


@given(page_url=st.text(max_size=60) | st.sampled_from([
           "http://[::1", "https://h:99999/x", "https://h:port/", "ftp://h/x", "https:///x"]),
       properties=st.dictionaries(st.text(max_size=10) | st.sampled_from(["revenue", "tax"]),
                                  st.none() | st.integers() | st.text(max_size=5)
                                  | st.lists(st.integers(), max_size=2), max_size=5))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_limited_never_raises_and_stays_storable(page_url: str,
                                                 properties: dict[str, Any]) -> None:
    event = msgspec.structs.replace(full_event(), properties=properties,
                                    context=Context(page_url=page_url, referrer=page_url))
    stripped = limited(event)
    assert event_decoder.decode(encoder.encode(stripped)) == stripped
    for url in (stripped.context.page_url, stripped.context.referrer):
        assert url is None or url.startswith(("http://", "https://"))


# --- reasons -----------------------------------------------------------------------------


def test_reasons_contain_no_personal_data() -> None:
    personal = [v for v in msgspec.structs.asdict(FULL_IDENTITY).values() if v]
    traits = {"email": FULL_IDENTITY.email, "phone": FULL_IDENTITY.phone,
              "firstName": "Augusta", "lastName": "Lovelace",
              "address": {"street": FULL_IDENTITY.street, "city": "Marylebone",
                          "country": "United Kingdom", "postalCode": "SW1Y 4JH"}}
    contexts = [
        {"consent": {"region": "ada.lovelace@example.com",
                     "categoryPreferences": {"ada.lovelace@example.com": True}}},
        {"consentManagement": {"deniedConsentIds": ["ada.lovelace@example.com"],
                               "provider": "Augusta"},
         "location": {"country": "Marylebone", "region": "Greater London"}},
        {"consent": {"ad_user_data": "denied"}, "location": {"city": "Marylebone"}},
        {},
    ]
    for context in contexts:
        event = segment_event(context, traits)
        for rules in (*DESTINATIONS.values(), DestinationConsent(platform="google")):
            for policy in (POLICY, ConsentPolicy(unknown_region="opt_out",
                                                 ldu_states=frozenset({"CA"}))):
                reason = decide(event, "meta", rules, policy).reason
                assert not [v for v in personal if v.casefold() in reason.casefold()], reason
                assert "ada" not in reason.casefold(), reason


def test_every_rule_is_documented() -> None:
    text = (DOCS / "consent.md").read_text()
    for rule in RULES:
        assert f"`{rule}" in text, f"rule {rule!r} is missing from docs/consent.md"


def test_every_emitted_rule_is_a_known_rule() -> None:
    for format_name in FORMATS:
        for region in REGIONS:
            event = event_for(format_name, region)
            for rules in [*DESTINATIONS.values(), REGION_GATED]:
                rule = decide(event, "d", rules, POLICY).rule
                assert rule in RULES or rule.startswith(
                    tuple(r for r in RULES if r.endswith(":"))), rule


# --- never raises ------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
ids = st.lists(st.sampled_from(["marketing", "Analytics", "C0004", "ad_storage", ""])
               | json_values, max_size=5)
consents = st.fixed_dictionaries({}, optional={
    "categoryPreferences": st.dictionaries(
        st.sampled_from(["marketing", "MARKETING", "analytics", "ad_storage"])
        | st.text(max_size=8), st.booleans() | json_values, max_size=4) | json_values,
    "region": st.sampled_from(["FR", "US-CA", "us", "GB-ENG", "-", "US-", "x-y-z"])
    | json_values,
    "ad_storage": st.sampled_from(["granted", "denied", True, False]) | json_values,
    "ad_user_data": st.sampled_from(["granted", "denied", True, False]) | json_values,
}) | json_values
managements = st.fixed_dictionaries({}, optional={
    "provider": json_values, "allowedConsentIds": ids | json_values,
    "deniedConsentIds": ids | json_values,
    "resolutionStrategy": st.sampled_from(["and", "or", "OR"]) | json_values,
}) | json_values
locations = st.fixed_dictionaries({}, optional={
    "country": st.sampled_from(["US", "France", "GBR", "", "zz"]) | json_values,
    "region": st.sampled_from(["CA", "California", "QC", "ENG"]) | json_values,
}) | json_values
every_rule_set = [*DESTINATIONS.values(), DestinationConsent(platform="google"),
                  DestinationConsent(categories=("ad_storage", "marketing"), platform="x")]
policies = [POLICY, ConsentPolicy(unknown_region="opt_out", ldu_states=frozenset({"CA"}))]


@given(consent=consents, management=managements, location=locations,
       address=st.fixed_dictionaries({}, optional={"country": json_values,
                                                   "state": json_values}))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_decide_never_raises_on_arbitrary_consent(
    consent: Any, management: Any, location: Any, address: Any
) -> None:
    event = segment_event({"consent": consent, "consentManagement": management,
                           "location": location}, {"address": address})
    assert event_decoder.decode(encoder.encode(event)) == event
    for rules in every_rule_set:
        for policy in policies:
            decision = decide(event, "dest", rules, policy)
            assert decision.outcome in ("allowed", "limited", "suppressed")
            assert decision.rule and decision.reason


REGION_GATED = DestinationConsent(platform="meta", region_gated=True)


@pytest.mark.parametrize(("format_name", "region", "expected"), [
    # An ad destination left at its defaults: no consent statement at all is denied where an
    # opt-in is the law, and allowed elsewhere (and where the region is unknown).
    ("segment_missing", "FR", no("no_consent_opt_in_region")),
    ("segment_missing", "GB", no("no_consent_opt_in_region")),
    ("segment_missing", "CH", no("no_consent_opt_in_region")),
    ("segment_missing", "US", ("allowed", "no_consent_default_allow")),
    ("segment_missing", "unknown", ("allowed", "no_consent_default_allow")),
    ("native_missing", "DE", no("no_consent_opt_in_region")),
    # Any statement is enough when the destination names no category...
    ("segment_granted", "FR", ("allowed", "consent_stated")),
    ("segment_denied", "FR", ("allowed", "consent_stated")),
    ("rudderstack_allowed", "FR", ("allowed", "consent_stated")),
    # ...except that advertising storage denied denies an ad platform.
    ("google_ad_storage_denied", "US", no("google_ad_storage_denied")),
])
def test_an_ad_destination_at_its_defaults_is_gated_by_region(
    format_name: str, region: str, expected: tuple[str, str]
) -> None:
    decision = decide(event_for(format_name, region), "meta", REGION_GATED, POLICY)
    assert (decision.outcome, decision.rule) == expected


def test_unknown_region_opt_in_denies_a_default_ad_destination_without_consent() -> None:
    policy = ConsentPolicy(unknown_region="opt_in")
    decision = decide(event_for("segment_missing", "unknown"), "meta", REGION_GATED, policy)
    assert (decision.outcome, decision.rule) == no("no_consent_unknown_region")
