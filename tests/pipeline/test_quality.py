"""The match-quality model: per-platform points, bounded and monotonic, with what to add next."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.pipeline.support import canonical
from tracklayerd.events import Context, Event, Identity, from_native, native_decoder
from tracklayerd.pipeline.click_ids import extract_click_ids
from tracklayerd.pipeline.quality import (
    HOW_TO,
    KINDS,
    PLATFORMS,
    WEIGHTS,
    Missing,
    identifiers_present,
    score,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "identity.md"
WHEN = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
BROWSER = {"ip", "user_agent"}


def test_the_model_covers_the_eight_ad_platforms() -> None:
    assert set(PLATFORMS) == {"meta", "google", "tiktok", "snapchat", "pinterest", "reddit",
                              "linkedin", "microsoft"}


@pytest.mark.parametrize("platform", sorted(WEIGHTS))
def test_every_row_is_well_formed(platform: str) -> None:
    rows = WEIGHTS[platform]
    assert len({row.kind for row in rows}) == len(rows), "a kind appears twice"
    for row in rows:
        # Multiples of 0.5: sums are exact, and one decimal shows them.
        assert row.points > 0 and (row.points * 2).is_integer(), row
        assert row.any_of and all(needs and needs <= KINDS for needs in row.any_of), row
        assert row.basis.strip(), row
        assert row.kind in HOW_TO, f"{row.kind} has no how-to line"


@pytest.mark.parametrize("platform", sorted(WEIGHTS))
def test_every_identifier_a_platform_accepts_reaches_full_marks(platform: str) -> None:
    assert score(KINDS, platform).score == 10.0


@pytest.mark.parametrize(("platform", "present", "expected"), [
    ("meta", set(), 0.0),
    ("meta", {"email"}, 3.0),
    ("meta", {"ip"}, 0.0),  # the IP counts only with the user agent
    ("meta", BROWSER | {"fbp"}, 3.5),
    ("meta", BROWSER | {"fbp", "fbc", "email"}, 9.5),
    ("meta", BROWSER | {"fbp", "email", "external_id"}, 8.0),
    ("meta", {"first_name", "last_name", "city", "zip"}, 2.0),
    ("meta", {"email", "fbc", "phone", "external_id", "fbp"} | BROWSER, 10.0),  # 12.5, capped
    ("google", {"gclid"}, 4.0),
    ("google", {"gbraid", "wbraid"}, 4.0),  # one click, whichever id names it
    ("google", {"email", "phone"}, 5.0),
    ("google", {"email", "first_name", "last_name", "country"}, 3.0),  # no zip: no address
    ("google", {"email", "first_name", "last_name", "country", "zip"}, 4.0),
    ("google", {"gclid", "email", "phone"} | BROWSER, 9.5),
    ("tiktok", {"ttclid", "email"}, 5.5),
    ("tiktok", {"ttp"} | BROWSER, 2.0),
    ("tiktok", {"ttclid", "email", "phone", "external_id", "ttp"} | BROWSER, 10.0),
    ("snapchat", {"email"} | BROWSER, 5.0),
    ("snapchat", {"sccid", "scid"}, 3.0),
    ("pinterest", {"epik"} | BROWSER, 4.0),
    ("pinterest", {"first_name", "last_name"}, 1.0),
    ("reddit", {"email", "rdt_cid"}, 6.0),
    ("reddit", {"phone"} | BROWSER, 3.0),
    ("linkedin", {"email", "li_fat_id"}, 9.0),
    ("linkedin", {"first_name"}, 0.0),  # userInfo needs both names
    ("linkedin", {"first_name", "last_name"} | BROWSER, 1.0),  # LinkedIn takes no IP or UA
    ("microsoft", {"msclkid", "email"}, 7.0),
    ("microsoft", {"external_id"} | BROWSER, 1.5),
    ("microsoft", {"fbc", "gclid", "ttclid"}, 0.0),  # other platforms' clicks count nothing
])
def test_score_per_platform(platform: str, present: set[str], expected: float) -> None:
    assert score(present, platform).score == expected


def test_the_breakdown_says_what_each_present_identifier_adds() -> None:
    quality = score({"email", "fbp", "ip", "user_agent", "street"}, "meta")
    assert quality.breakdown == {"email": 3.0, "ip+user_agent": 2.0, "fbp": 1.5}


def test_the_score_is_the_breakdown_capped_at_ten() -> None:
    quality = score(KINDS, "meta")
    assert sum(quality.breakdown.values()) > 10.0
    assert quality.score == 10.0


def test_missing_lists_the_three_rows_worth_most_in_order() -> None:
    quality = score({"email"}, "meta")
    assert [(m.kind, m.points) for m in quality.missing] == [
        ("fbc", 3.0), ("ip+user_agent", 2.0), ("phone", 1.5)]


def test_missing_breaks_ties_in_table_order() -> None:
    quality = score({"email", "fbc", "ip", "user_agent", "phone"}, "meta")
    assert [m.kind for m in quality.missing] == ["external_id", "fbp", "date_of_birth"]


def test_missing_says_how_to_get_each_identifier() -> None:
    (first, *_) = score({"email", "fbc"} | BROWSER, "meta").missing
    assert first == Missing(kind="phone", points=1.5, lacking=["phone"], how_to=HOW_TO["phone"])
    (fbp,) = [m for m in score({"email", "fbc", "phone", "external_id"} | BROWSER,
                               "meta").missing if m.kind == "fbp"]
    assert fbp.how_to == "pass the _fbp cookie from the browser as user.fbp (Segment: context.fbp)"


def test_a_half_present_combination_names_the_part_that_is_lacking() -> None:
    (missing,) = [m for m in score({"ip"}, "snapchat").missing if m.kind == "ip+user_agent"]
    assert missing.lacking == ["user_agent"]
    (address,) = [m for m in score({"first_name", "country", "gclid", "email", "phone"},
                                   "google").missing if m.kind == "address"]
    assert (address.kind, address.lacking) == ("address", ["last_name", "zip"])


def test_nothing_is_missing_once_every_row_is_present() -> None:
    assert score(KINDS, "linkedin").missing == []


def test_an_unknown_platform_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown platform 'facebook'; known: meta, google"):
        score({"email"}, "facebook")


def test_an_unknown_identifier_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown identifier kinds: emial"):
        score({"emial"}, "meta")


kind_sets = st.frozensets(st.sampled_from(sorted(KINDS)))


@given(platform=st.sampled_from(PLATFORMS), smaller=kind_sets, extra=kind_sets)
def test_adding_identifiers_never_lowers_the_score(
        platform: str, smaller: frozenset[str], extra: frozenset[str]) -> None:
    assert score(smaller, platform).score <= score(smaller | extra, platform).score


@given(platform=st.sampled_from(PLATFORMS), present=kind_sets)
def test_the_score_is_between_0_and_10_with_one_decimal(
        platform: str, present: frozenset[str]) -> None:
    value = score(present, platform).score
    assert 0.0 <= value <= 10.0
    assert round(value, 1) == value


@given(platform=st.sampled_from(PLATFORMS), present=kind_sets)
def test_missing_is_at_most_three_rows_never_present_and_by_points(
        platform: str, present: frozenset[str]) -> None:
    quality = score(present, platform)
    assert len(quality.missing) <= 3
    assert not {m.kind for m in quality.missing} & set(quality.breakdown)
    points = [m.points for m in quality.missing]
    assert points == sorted(points, reverse=True)


# --- identifiers_present --------------------------------------------------------------------

def event(user: Identity, **context: str) -> Event:
    return Event(event="purchase", event_id="e-1", timestamp=WHEN, received_at=WHEN,
                 source="web", user=user, context=Context(**context))


NATIVE_EXAMPLE = b"""{
  "event": "purchase", "event_id": "order-1001-purchase", "timestamp": "2026-11-20T10:00:00Z",
  "user": {
    "email": "ada@example.com", "phone": "+44 20 7946 0000", "external_id": "cust-42",
    "first_name": "Ada", "last_name": "Lovelace",
    "city": "London", "state": "LND", "zip": "EC1A 1BB", "country": "GB",
    "fbp": "fb.1.1700000000000.123456789", "fbclid": "IwAR2F4dbP0", "gclid": "Cj0KCQiA2Kit"
  },
  "order_id": "1001", "value": 129.90, "currency": "GBP",
  "context": {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
              "page_url": "https://shop.example/thanks"}
}"""


def test_identifiers_present_on_the_documented_native_event() -> None:
    native = native_decoder.decode(NATIVE_EXAMPLE)
    canonical_event = from_native(native, event_id="order-1001-purchase", source="api",
                                  received_at=WHEN)
    assert identifiers_present(canonical_event) == {
        "email", "phone", "external_id", "first_name", "last_name", "city", "state", "zip",
        "country", "fbp", "fbc", "gclid", "ip", "user_agent"}
    assert score(identifiers_present(canonical_event), "meta").score == 10.0
    assert score(identifiers_present(canonical_event), "google").score == 10.0


def test_identifiers_present_on_an_analytics_js_checkout() -> None:
    message = {
        "type": "track", "event": "Checkout Started", "anonymousId": "anon-77",
        "messageId": "ajs-next-2", "timestamp": "2026-11-20T10:00:00.000Z",
        "properties": {"value": 40, "currency": "EUR"},
        "context": {
            "library": {"name": "analytics.js", "version": "npm:next-1.70.0"},
            "page": {"url": "https://shop.example/checkout?ttclid=E.C.P.Cq1"},
            "userAgent": "Mozilla/5.0", "traits": {"email": "Ada@Example.com"},
            "ttp": "2aBcD3eFgH4iJkL",
        },
    }
    present = identifiers_present(extract_click_ids(canonical(message)))
    assert present == {"email", "ip", "user_agent", "ttclid", "ttp"}
    assert score(present, "tiktok").score == 7.5


def test_an_anonymous_id_alone_identifies_nobody() -> None:
    assert identifiers_present(event(Identity(anonymous_id="anon-1"))) == set()


@pytest.mark.parametrize(("email", "counts"), [
    ("ada@example.com", True),
    (" Ada.Lovelace+shop@Example.co.uk ", True),
    ("62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f", True),  # pre-hashed
    ("ada@example", False),
    ("ada at example.com", False),
    ("ada@@example.com", False),
    ("", False),
])
def test_an_email_counts_when_it_is_plausible(email: str, counts: bool) -> None:
    assert ("email" in identifiers_present(event(Identity(email=email)))) is counts


@pytest.mark.parametrize(("phone", "counts"), [
    ("+1 (650) 555-1212", True),
    ("0044 20 7946 0958", True),
    ("650.555.1212", True),
    ("1-650-555-1212 ext 5", True),
    ("e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176", True),  # pre-hashed
    ("555-1212", True),
    ("12345", False),
    ("+1234567890123456", False),  # longer than E.164 allows
    ("call me", False),
    ("ada@example.com", False),
])
def test_a_phone_counts_when_it_has_a_plausible_number_of_digits(phone: str, counts: bool) -> None:
    assert ("phone" in identifiers_present(event(Identity(phone=phone)))) is counts


@pytest.mark.parametrize("field", ["external_id", "customer_id", "user_id"])
def test_the_advertisers_own_ids_count_as_external_id(field: str) -> None:
    assert identifiers_present(event(Identity(**{field: "cust-42"}))) == {"external_id"}


def test_an_fbclid_counts_as_fbc_since_a_destination_can_build_one() -> None:
    assert identifiers_present(event(Identity(fbclid="IwAR2F4dbP0"))) == {"fbc"}


def test_broken_click_ids_and_a_proxy_ip_do_not_count() -> None:
    user = Identity(fbc="IwAR2F4dbP0", fbp="fb.1.x.y", gclid="undefined", ttclid="{ttclid}")
    assert identifiers_present(event(user, ip="10.0.0.3", user_agent="Mozilla/5.0")) == {
        "user_agent"}


def test_blank_fields_do_not_count() -> None:
    user = Identity(first_name=" ", city="", external_id="  ", gclid=" ")
    assert identifiers_present(event(user, user_agent=" ")) == set()


# --- the documented table -------------------------------------------------------------------

def _documented_rows(platform: str) -> set[tuple[str, float]]:
    text = DOCS.read_text()
    start = text.index(f"\n### {platform}\n")
    end = text.find("\n#", start + 1)
    section = text[start:] if end == -1 else text[start:end]
    rows = re.findall(r"^\| `([^`]+)` \| ([0-9.]+) \|", section, flags=re.MULTILINE)
    return {(kind, float(points)) for kind, points in rows}


@pytest.mark.parametrize("platform", sorted(WEIGHTS))
def test_the_documented_table_is_the_models_table(platform: str) -> None:
    assert _documented_rows(platform) == {(row.kind, row.points) for row in WEIGHTS[platform]}
