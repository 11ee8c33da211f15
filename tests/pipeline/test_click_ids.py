"""Click ids: filled from the landing URL, referrer and properties, never over the sender's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.pipeline.support import canonical
from tracklayerd.events import Context, Event, Identity, event_decoder, event_encoder
from tracklayerd.pipeline.click_ids import CLICK_IDS, extract_click_ids, find_click_ids

WHEN = datetime(2026, 11, 20, 10, 0, 0, 123000, tzinfo=UTC)
WHEN_MS = 1795168800123
FBCLID = "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk"
GCLID = "Cj0KCQiA2KitBhCIARIsAPPMEhI_wcB"


def event(user: Identity | None = None, *, page_url: str | None = None,
          referrer: str | None = None, ip: str | None = None,
          properties: dict[str, Any] | None = None) -> Event:
    return Event(
        event="purchase", event_id="e-1", timestamp=WHEN,
        # Received a day later (a replayed or late event): fbc must not use this time.
        received_at=WHEN + timedelta(days=1), source="web",
        user=user or Identity(),
        context=Context(page_url=page_url, referrer=referrer, ip=ip),
        properties=properties or {},
    )


def from_url(url: str) -> Event:
    return extract_click_ids(event(page_url=url))


# --- URLs -----------------------------------------------------------------------------------

def test_click_ids_are_read_from_the_landing_url_among_other_parameters() -> None:
    url = (f"https://shop.example/p/42?utm_source=google&utm_medium=cpc&gclid={GCLID}"
           "&ttclid=E.C.P.CqgBxyz&msclkid=3f2a9c1e8b7d4e6f&li_fat_id=5f6b-11ee&rdt_cid=t2_9x"
           "&epik=dj0yJnU9Zk&ScCid=a1b2c3&wbraid=WB1&gbraid=GB1&ref=home")
    user = from_url(url).user
    assert (user.gclid, user.ttclid, user.msclkid, user.li_fat_id, user.rdt_cid, user.epik,
            user.sccid, user.wbraid, user.gbraid) == (
        GCLID, "E.C.P.CqgBxyz", "3f2a9c1e8b7d4e6f", "5f6b-11ee", "t2_9x", "dj0yJnU9Zk",
        "a1b2c3", "WB1", "GB1")


def test_the_fragment_is_not_part_of_the_value() -> None:
    assert from_url(f"https://shop.example/?gclid={GCLID}#reviews").user.gclid == GCLID


def test_a_hash_routed_app_query_after_the_fragment_is_read() -> None:
    assert from_url(f"https://shop.example/#/landing?gclid={GCLID}").user.gclid == GCLID


def test_the_real_query_wins_over_one_in_the_fragment() -> None:
    assert from_url("https://shop.example/?gclid=real#/x?gclid=hash").user.gclid == "real"


def test_url_encoded_values_are_decoded_and_a_plus_stays_a_plus() -> None:
    # Some click ids are base64: `+` is data there, not a form-encoded space.
    user = from_url("https://shop.example/?ttclid=E.C.P.ab%2Bcd%2F%3D&gclid=ab+cd").user
    assert (user.ttclid, user.gclid) == ("E.C.P.ab+cd/=", "ab+cd")


def test_parameter_names_match_in_any_case() -> None:
    user = from_url("https://shop.example/?sccid=snap1&GCLID=g1&MsClkId=m1").user
    assert (user.sccid, user.gclid, user.msclkid) == ("snap1", "g1", "m1")


def test_a_url_copied_out_of_html_with_amp_entities_still_yields_its_click_ids() -> None:
    assert from_url(f"https://shop.example/?utm_source=x&amp;gclid={GCLID}").user.gclid == GCLID


def test_a_repeated_parameter_with_one_value_is_taken_silently() -> None:
    checked = from_url(f"https://shop.example/?gclid={GCLID}&gclid={GCLID}")
    assert (checked.user.gclid, checked.warnings) == (GCLID, [])


def test_a_repeated_parameter_with_different_values_takes_the_first_as_browser_tags_do() -> None:
    checked = from_url("https://shop.example/?gclid=first&x=1&gclid=second")
    assert checked.user.gclid == "first"
    assert checked.warnings == ["context.page_url has 2 different gclid values: used the first"]


def test_empty_and_nameless_parameters_are_ignored() -> None:
    checked = from_url("https://shop.example/?gclid=&=orphan&&msclkid")
    assert (checked.user, checked.warnings) == (Identity(), [])


@pytest.mark.parametrize("url", [
    "not a url at all", "", "?", "https://", "//shop.example/?", "https://shop.example/?%",
    "https://shop.example/?gclid=%ZZ", "mailto:a@b.example?subject=gclid",
    "javascript:alert(1)", "https://shop.example/?a=%E0%A4%A",
])
def test_junk_urls_never_raise(url: str) -> None:
    checked = from_url(url)
    assert checked.user.fbc is None
    msgspec.json.decode(event_encoder.encode(checked), type=Event)


def test_a_url_that_does_not_parse_gets_a_warning_and_no_click_ids() -> None:
    checked = from_url("http://[::1/?gclid=abc")
    assert checked.user.gclid is None
    assert checked.warnings == [
        "context.page_url does not parse as a URL: no click ids read from it"]


@pytest.mark.parametrize(("value", "problem"), [
    ("%7Bgclid%7D", "has characters no click id has (spaces, braces, non-ASCII)"),
    ("%7B%7Bfbclid%7D%7D", "has characters no click id has (spaces, braces, non-ASCII)"),
    ("undefined", "is a placeholder, not an id"),
    ("null", "is a placeholder, not an id"),
    ("ab%20cd", "has characters no click id has (spaces, braces, non-ASCII)"),
    ("caf%C3%A9", "has characters no click id has (spaces, braces, non-ASCII)"),
    ("x" * 1025, "is longer than 1024 characters"),
])
def test_an_implausible_click_id_in_the_url_is_not_used(value: str, problem: str) -> None:
    checked = from_url(f"https://shop.example/?gclid={value}")
    assert checked.user.gclid is None
    assert checked.warnings == [f"context.page_url has a gclid that {problem}: not used"]


def test_the_referrer_is_read_when_the_page_url_has_no_click_ids() -> None:
    found = find_click_ids(event(page_url="https://shop.example/cart",
                                 referrer=f"https://www.shop.example/?gclid={GCLID}"))
    assert (found.event.user.gclid, found.sources) == (GCLID, {"gclid": "referrer"})


def test_the_page_url_wins_over_the_referrer() -> None:
    found = find_click_ids(event(page_url="https://shop.example/?gclid=page",
                                 referrer="https://shop.example/?gclid=ref&msclkid=m"))
    assert (found.event.user.gclid, found.event.user.msclkid) == ("page", "m")
    assert found.sources == {"gclid": "page_url", "msclkid": "referrer"}


def test_a_subdomain_referrer_counts_as_the_same_site() -> None:
    checked = extract_click_ids(event(page_url="https://shop.example.com/thanks",
                                      referrer="https://example.com/?gclid=g1"))
    assert checked.user.gclid == "g1"


def test_a_click_id_on_another_sites_referrer_is_not_used() -> None:
    # That is a click on the other site's ad; Google would reject it for this advertiser.
    checked = extract_click_ids(event(page_url="https://shop.example/",
                                      referrer="https://blog.other.example/?gclid=theirs"))
    assert checked.user.gclid is None
    assert checked.warnings == ["context.referrer is another site: its gclid was not used"]


def test_a_referrer_without_a_page_url_is_read() -> None:
    checked = extract_click_ids(event(referrer="https://shop.example/?gclid=g1"))
    assert checked.user.gclid == "g1"


# --- trust order ----------------------------------------------------------------------------

def test_explicit_identity_fields_are_never_overwritten() -> None:
    user = Identity(gclid="sender-gclid", ttclid="sender-ttclid", fbp="fb.1.1700000000000.42")
    found = find_click_ids(event(
        user, page_url="https://shop.example/?gclid=url&ttclid=url",
        properties={"gclid": "prop", "_fbp": "fb.1.1700000000001.43"}))
    assert (found.event.user.gclid, found.event.user.ttclid, found.event.user.fbp) == (
        "sender-gclid", "sender-ttclid", "fb.1.1700000000000.42")
    assert found.sources == {"gclid": "sender", "ttclid": "sender", "fbp": "sender"}
    assert found.event.warnings == []


def test_the_url_wins_over_properties() -> None:
    found = find_click_ids(event(page_url="https://shop.example/?gclid=url",
                                 properties={"gclid": "prop", "msclkid": "prop-m"}))
    assert (found.event.user.gclid, found.event.user.msclkid) == ("url", "prop-m")
    assert found.sources == {"gclid": "page_url", "msclkid": "properties"}


@pytest.mark.parametrize(("key", "field", "value"), [
    ("_fbp", "fbp", "fb.1.1700000000000.1234567890"),
    ("fbp", "fbp", "fb.2.1700000000000.1234567890"),
    ("_fbc", "fbc", f"fb.1.1700000000000.{FBCLID}"),
    ("fbc", "fbc", f"fb.1.1700000000000.{FBCLID}"),
    ("fbclid", "fbclid", FBCLID),
    ("gclid", "gclid", GCLID),
    ("gbraid", "gbraid", "GB1"),
    ("wbraid", "wbraid", "WB1"),
    ("ttclid", "ttclid", "E.C.P.x"),
    ("_ttp", "ttp", "2aBcD3eFgH4iJkL"),
    ("ScCid", "sccid", "a1b2c3"),
    ("sccid", "sccid", "a1b2c3"),
    ("_scid", "scid", "5f6b2d1a-0000-4000-8000-000000000000"),
    ("epik", "epik", "dj0yJnU9"),
    ("_epik", "epik", "dj0yJnU9"),
    ("rdt_cid", "rdt_cid", "t2_9x"),
    ("li_fat_id", "li_fat_id", "5f6b-11ee"),
    ("msclkid", "msclkid", "3f2a9c1e"),
])
def test_properties_fill_identifiers_under_field_and_cookie_names(
        key: str, field: str, value: str) -> None:
    found = find_click_ids(event(properties={key: value}))
    assert getattr(found.event.user, field) == value
    assert found.sources[field] == "properties"


def test_properties_that_are_not_strings_are_ignored() -> None:
    checked = extract_click_ids(event(properties={"gclid": 12345, "_fbp": ["x"], "ttclid": None}))
    assert (checked.user, checked.warnings) == (Identity(), [])


def test_properties_are_never_changed() -> None:
    properties = {"gclid": "prop", "_fbp": "broken", "coupon": "WINTER"}
    checked = extract_click_ids(event(properties=dict(properties)))
    assert checked.properties == properties


def test_every_click_id_field_has_a_property_key() -> None:
    assert all(where.properties for where in CLICK_IDS.values())


# --- fbc ------------------------------------------------------------------------------------

def test_fbc_is_built_from_the_url_fbclid_with_the_event_time_in_ms() -> None:
    found = find_click_ids(event(page_url=f"https://shop.example/?fbclid={FBCLID}"))
    assert found.event.user.fbc == f"fb.1.{WHEN_MS}.{FBCLID}"
    assert found.event.user.fbclid == FBCLID
    assert found.sources == {"fbclid": "page_url", "fbc": "fbclid"}
    assert found.event.warnings == []


def test_fbc_is_built_from_an_explicit_fbclid() -> None:
    checked = extract_click_ids(event(Identity(fbclid=FBCLID)))
    assert checked.user.fbc == f"fb.1.{WHEN_MS}.{FBCLID}"


def test_the_fbclid_keeps_its_case() -> None:
    checked = from_url("https://shop.example/?fbclid=AbC_dEf")
    assert checked.user.fbc == f"fb.1.{WHEN_MS}.AbC_dEf"


def test_building_fbc_is_deterministic_across_replays() -> None:
    first = from_url(f"https://shop.example/?fbclid={FBCLID}")
    assert extract_click_ids(first) == first
    assert from_url(f"https://shop.example/?fbclid={FBCLID}") == first


def test_an_explicit_fbc_is_kept_and_not_rebuilt() -> None:
    fbc = f"fb.1.1700000000000.{FBCLID}"
    checked = extract_click_ids(event(Identity(fbc=fbc),
                                      page_url=f"https://shop.example/?fbclid={FBCLID}"))
    assert (checked.user.fbc, checked.warnings) == (fbc, [])


def test_an_explicit_fbc_for_another_click_than_the_url_is_kept_with_a_warning() -> None:
    checked = extract_click_ids(event(Identity(fbc="fb.1.1700000000000.OldClick"),
                                      page_url="https://shop.example/?fbclid=NewClick"))
    assert checked.user.fbc == "fb.1.1700000000000.OldClick"
    assert checked.warnings == [
        "the fbc (from sender) is for another click than the fbclid (from page_url): "
        "kept the fbc (is the _fbc cookie stale?)"]


def test_a_broken_fbc_is_dropped_and_rebuilt_from_the_fbclid() -> None:
    checked = extract_click_ids(event(Identity(fbc=FBCLID),
                                      page_url=f"https://shop.example/?fbclid={FBCLID}"))
    assert checked.user.fbc == f"fb.1.{WHEN_MS}.{FBCLID}"
    assert checked.warnings == [
        "user.fbc is not in Meta's format fb.<n>.<creation ms>.<fbclid>: dropped"]


def test_an_fbclid_with_a_dot_cannot_form_an_fbc() -> None:
    checked = from_url("https://shop.example/?fbclid=a.b")
    assert (checked.user.fbclid, checked.user.fbc) == ("a.b", None)
    assert checked.warnings == ["fbclid cannot form a valid fbc: no fbc"]


# --- fbp, fbc formats -----------------------------------------------------------------------

@pytest.mark.parametrize("fbc", [
    f"fb.1.1700000000000.{FBCLID}",
    f"fb.0.1700000000000.{FBCLID}",
    f"fb.2.1700000000000.{FBCLID}",
    f"fb.1.1700000000000.{FBCLID}.AQYBAAEA",  # Meta parameter builder appendix
    f"fb.1.1700000000000.{FBCLID}.Ag",  # its legacy language token
])
def test_a_valid_fbc_is_kept(fbc: str) -> None:
    checked = extract_click_ids(event(Identity(fbc=fbc)))
    assert (checked.user.fbc, checked.warnings) == (fbc, [])


@pytest.mark.parametrize("fbc", [
    FBCLID, "fb.1.1700000000000.", "fb.1.abc.IwAR", "fb..1700000000000.IwAR",
    "FB.1.1700000000000.IwAR", "fb.1.1700000000000.Iw AR", "fb.1.1700000000000.a.b.c",
    "undefined", "fb.1.1700000000000.{{fbclid}}",
])
def test_a_broken_fbc_is_dropped_with_a_warning(fbc: str) -> None:
    checked = extract_click_ids(event(Identity(fbc=fbc)))
    assert checked.user.fbc is None
    assert checked.warnings == [
        "user.fbc is not in Meta's format fb.<n>.<creation ms>.<fbclid>: dropped"]


@pytest.mark.parametrize("fbp", [
    "fb.1.1700000000000.1234567890", "fb.2.1596403881668.1116446470",
    "fb.1.1700000000000.1234567890.AQYBAAEA", "fb.1.1700000000000.1234567890.Ag",
])
def test_a_valid_fbp_is_kept(fbp: str) -> None:
    checked = extract_click_ids(event(Identity(fbp=fbp)))
    assert (checked.user.fbp, checked.warnings) == (fbp, [])


@pytest.mark.parametrize("fbp", [
    "fb.1.1700000000000.abc", "fb.1.1700000000000", "1234567890", "fb.1..123", "GA1.2.3.4",
    "fb.1.1700000000000.123.toolongappendix", "undefined", "",
])
def test_a_broken_fbp_is_dropped_with_a_warning(fbp: str) -> None:
    checked = extract_click_ids(event(Identity(fbp=fbp)))
    assert checked.user.fbp is None
    assert checked.warnings == [
        "user.fbp is not in Meta's format fb.<n>.<creation ms>.<random number>: dropped"]


def test_a_broken_fbp_from_properties_is_not_used() -> None:
    checked = extract_click_ids(event(properties={"_fbp": "fb.1.x.y"}))
    assert checked.user.fbp is None
    assert checked.warnings == ["properties has a fbp that is not in Meta's format "
                                "fb.<n>.<creation ms>.<random number>: not used"]


def test_an_explicit_placeholder_click_id_is_dropped_and_filled_from_the_url() -> None:
    checked = extract_click_ids(event(Identity(gclid="undefined"),
                                      page_url=f"https://shop.example/?gclid={GCLID}"))
    assert checked.user.gclid == GCLID
    assert checked.warnings == ["user.gclid is a placeholder, not an id: dropped"]


def test_explicit_values_are_trimmed() -> None:
    assert extract_click_ids(event(Identity(gclid=f"  {GCLID} "))).user.gclid == GCLID


def test_warnings_never_quote_the_value() -> None:
    checked = extract_click_ids(event(
        Identity(fbc="fb.1.x.SecretClick", gclid="secret gclid"), ip="10.9.8.7",
        page_url="https://shop.example/?msclkid={secret}"))
    assert len(checked.warnings) == 4
    assert not any("ecret" in w or "10.9.8.7" in w for w in checked.warnings)


# --- client IP ------------------------------------------------------------------------------

@pytest.mark.parametrize("ip", ["203.0.113.7", "8.8.8.8", "2001:db8::1",
                                "2a03:2880:f12f:83:face:b00c:0:25de", "::ffff:203.0.113.7"])
def test_a_public_ipv4_or_ipv6_address_is_kept(ip: str) -> None:
    checked = extract_click_ids(event(ip=ip))
    assert (checked.context.ip, checked.warnings) == (ip, [])


@pytest.mark.parametrize("ip", ["203.0.113.300", "unknown", "1.2.3", "203.0.113.7, 10.0.0.1",
                                "::gggg", "", "203.0.113.07"])
def test_an_invalid_ip_is_dropped_with_a_warning(ip: str) -> None:
    checked = extract_click_ids(event(ip=ip))
    assert checked.context.ip is None
    assert checked.warnings == ["context.ip is not an IPv4 or IPv6 address: dropped"]


@pytest.mark.parametrize("ip", ["10.0.0.3", "172.16.5.4", "192.168.1.1", "127.0.0.1", "::1",
                                "fe80::1", "fd12:3456::1", "169.254.1.1", "0.0.0.0",
                                "::ffff:10.0.0.3"])
def test_a_proxys_own_address_is_dropped_with_a_warning(ip: str) -> None:
    checked = extract_click_ids(event(ip=ip))
    assert checked.context.ip is None
    assert checked.warnings == ["context.ip is a private, loopback or link-local address "
                                "(a proxy's, not the user's): dropped"]


def test_an_ip_with_surrounding_spaces_is_trimmed() -> None:
    assert extract_click_ids(event(ip=" 203.0.113.7 ")).context.ip == "203.0.113.7"


# --- the whole event ------------------------------------------------------------------------

def test_an_event_with_nothing_to_do_is_returned_unchanged() -> None:
    original = event(Identity(email="ada@example.com", gclid=GCLID), ip="203.0.113.7",
                     page_url="https://shop.example/thanks")
    assert extract_click_ids(original) is original


def test_earlier_warnings_are_kept() -> None:
    original = msgspec.structs.replace(event(ip="bogus"), warnings=["purchase should carry items"])
    assert extract_click_ids(original).warnings == [
        "purchase should carry items", "context.ip is not an IPv4 or IPv6 address: dropped"]


def test_an_analytics_js_track_call_gets_the_landing_click_ids() -> None:
    message = {
        "type": "track", "event": "Order Completed", "userId": "user-4821",
        "messageId": "ajs-next-1", "timestamp": "2026-11-20T10:00:00.000Z",
        "properties": {"order_id": "1001", "revenue": 129.9, "currency": "USD"},
        "context": {
            "library": {"name": "analytics.js", "version": "npm:next-1.70.0"},
            "page": {"url": f"https://shop.example/thanks?fbclid={FBCLID}&utm_source=fb",
                     "search": f"?fbclid={FBCLID}&utm_source=fb", "path": "/thanks",
                     "referrer": f"https://shop.example/?gclid={GCLID}"},
            "campaign": {"source": "fb"}, "userAgent": "Mozilla/5.0",
            "fbp": "fb.1.1700000000000.1234567890",
        },
    }
    # Holds whether or not the processor already runs this step (then it is a no-op here).
    before = canonical(message)
    checked = extract_click_ids(before)
    user = checked.user
    assert (user.fbclid, user.gclid, user.fbp) == (FBCLID, GCLID, "fb.1.1700000000000.1234567890")
    assert user.fbc == f"fb.1.{int(checked.timestamp.timestamp() * 1000)}.{FBCLID}"
    assert checked.warnings == before.warnings


text = st.text(max_size=60)
urls = st.one_of(
    text,
    st.builds(lambda host, q: f"https://{host}/?{q}",
              st.sampled_from(["shop.example", "www.shop.example", "[::1", "other.example"]),
              st.lists(st.tuples(st.sampled_from(["gclid", "fbclid", "ScCid", "x", "amp;gclid"]),
                                 text), max_size=4).map(
                  lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))),
)
loose = st.none() | text | st.integers() | st.lists(text, max_size=2)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(page_url=st.none() | urls, referrer=st.none() | urls, ip=st.none() | text,
       properties=st.dictionaries(st.sampled_from(["gclid", "_fbp", "_fbc", "fbclid", "ScCid",
                                                   "GCLID", "coupon"]), loose, max_size=4),
       fbc=st.none() | text, fbp=st.none() | text, fbclid=st.none() | text)
def test_any_input_gives_a_storable_event_and_never_raises(
        page_url: str | None, referrer: str | None, ip: str | None, properties: dict[str, Any],
        fbc: str | None, fbp: str | None, fbclid: str | None) -> None:
    original = event(Identity(fbc=fbc, fbp=fbp, fbclid=fbclid), page_url=page_url,
                     referrer=referrer, ip=ip, properties=properties)
    checked = extract_click_ids(original)
    assert event_decoder.decode(event_encoder.encode(checked)) == checked
    assert checked.properties == properties
    assert extract_click_ids(checked).user == checked.user  # a second pass changes nothing
