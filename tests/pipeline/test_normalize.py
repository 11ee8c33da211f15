"""Identity normalization and hashing per platform: golden vectors and properties.

Golden vectors live in tests/data/normalize/: fields.json exercises each normalizer,
<platform>.json runs whole identities through prepare_identity. Expected hashes are computed
here with hashlib from the plain value the vector names, never with the code under test.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracklayerd.events import Identity
from tracklayerd.pipeline.normalize import (
    PLATFORMS,
    BirthDate,
    ClickId,
    Country,
    Email,
    Gender,
    Hints,
    Identifier,
    Normalized,
    Phone,
    Spec,
    State,
    Text,
    Zip,
    is_sha256_hex,
    normalize,
    prepare_identity,
    sha256_hex,
)

DATA = Path(__file__).parent.parent / "data" / "normalize"
SPECS: dict[str, type[Any]] = {
    "email": Email, "phone": Phone, "text": Text, "state": State, "zip": Zip,
    "country": Country, "gender": Gender, "birth_date": BirthDate, "identifier": Identifier,
    "click_id": ClickId,
}
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
PARAM_BUILDER = re.compile(r"[0-9a-f]{64}\.[0-9A-Za-z]{2,8}")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load(name: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return cases


def spec_of(case: dict[str, Any]) -> Spec:
    options = dict(case.get("options", {}))
    if "codes_for" in options:
        options["codes_for"] = frozenset(options["codes_for"])
    if "fallback" in options:
        options["fallback"] = Text(**options["fallback"])
    spec: Spec = SPECS[case["normalizer"]](**options)
    return spec


def hints_of(case: dict[str, Any]) -> Hints:
    today = case.get("today")
    return Hints(region=case.get("region"), today=date.fromisoformat(today) if today else None)


def expected_value(value: Any) -> str | list[str]:
    """A vector's expected field: a plain string as sent, {"sha256": plain}, or a list."""
    if isinstance(value, list):
        return [item for v in value for item in [expected_value(v)] if isinstance(item, str)]
    if isinstance(value, dict):
        return sha(value["sha256"])
    assert isinstance(value, str)
    return value


# --- golden vectors -----------------------------------------------------------------------------

FIELD_CASES = load("fields.json")


@pytest.mark.parametrize("case", FIELD_CASES, ids=[c["name"] for c in FIELD_CASES])
def test_normalizer_golden_vector(case: dict[str, Any]) -> None:
    result = normalize(case["input"], spec_of(case), hints_of(case))
    if "output" in case:
        assert result == Normalized(case["output"])
    else:
        assert result.value is None
        assert result.reason is not None and case["dropped"] in result.reason


PLATFORM_FILES = sorted(p.stem for p in DATA.glob("*.json") if p.stem != "fields")
PLATFORM_CASES = [(p, case) for p in PLATFORM_FILES for case in load(f"{p}.json")]


@pytest.mark.parametrize(("platform", "case"), PLATFORM_CASES,
                         ids=[f"{p}: {c['name']}" for p, c in PLATFORM_CASES])
def test_platform_golden_vector(platform: str, case: dict[str, Any]) -> None:
    today = case.get("today")
    prepared = prepare_identity(
        msgspec.convert(case["identity"], Identity), platform,
        default_region=case.get("default_region"), country_hint=case.get("country_hint"),
        today=date.fromisoformat(today) if today else None,
    )
    assert prepared.fields == {k: expected_value(v) for k, v in case["fields"].items()}
    assert prepared.dropped.keys() == case["dropped"].keys()
    for field, reason in case["dropped"].items():
        assert reason in prepared.dropped[field]


def test_every_platform_in_the_table_has_golden_vectors() -> None:
    assert set(PLATFORM_FILES) == set(PLATFORMS)


def test_meta_documented_vectors_hash_to_metas_published_digests() -> None:
    # The digests printed in Meta's customer-information-parameters page (reference 1.3).
    prepared = prepare_identity(
        Identity(email="John_Smith@gmail.com", phone="(650)555-1212", country="us"), "meta"
    )
    assert prepared.fields == {
        "em": "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
        "ph": "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
        "country": "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621",
    }


# --- hashing ------------------------------------------------------------------------------------


def test_sha256_hex_is_the_lowercase_hex_digest_of_utf8() -> None:
    assert sha256_hex("zoë") == sha("zoë")


@pytest.mark.parametrize(("value", "is_hash"), [
    (sha("x"), True),
    (sha("x").upper(), False),
    (sha("x")[:63], False),
    (sha("x") + "0", False),
    (" " + sha("x"), False),
    ("d41d8cd98f00b204e9800998ecf8427e", False),  # MD5-sized: hashed like any other value
    ("g" * 64, False),
])
def test_is_sha256_hex_accepts_exactly_64_lowercase_hex(value: str, is_hash: bool) -> None:
    assert is_sha256_hex(value) is is_hash


HASHED_RULES = [
    (platform, field, rule.name)
    for platform, table in PLATFORMS.items()
    for field, rule in table.fields.items()
    if rule.hashed
]


@pytest.mark.parametrize(("platform", "field", "name"), HASHED_RULES)
def test_prehashed_value_passes_through_every_hashed_field_unhashed(
    platform: str, field: str, name: str
) -> None:
    digest = sha("already hashed by the sender")
    prepared = prepare_identity(Identity(**{field: digest.upper()}), platform)
    sent = prepared.fields[name]
    assert (sent[0] if isinstance(sent, list) else sent) == digest


CLEAR_RULES = [
    (platform, field, rule.name)
    for platform, table in PLATFORMS.items()
    for field, rule in table.fields.items()
    if not rule.hashed and isinstance(rule.spec, ClickId)
]


@pytest.mark.parametrize(("platform", "field", "name"), CLEAR_RULES)
def test_click_ids_are_sent_exactly_as_received(platform: str, field: str, name: str) -> None:
    value = "Fb.1.AbC_d-E." + sha("x").upper()[:12]
    assert prepare_identity(Identity(**{field: f" {value} "}), platform).fields == {name: value}


def test_lone_surrogate_is_dropped_not_raised() -> None:
    prepared = prepare_identity(Identity(first_name="Zo\udce9"), "meta")
    assert prepared.fields == {}
    assert "is not valid Unicode text" in prepared.dropped["first_name"]


def test_value_that_is_not_text_is_dropped_not_raised() -> None:
    prepared = prepare_identity(Identity(email=5), "meta")  # type: ignore[arg-type]
    assert prepared.dropped == {"email": "email is not text"}


def test_unknown_platform_drops_every_present_field_with_the_reason() -> None:
    prepared = prepare_identity(Identity(email="a@b.co", gclid="x"), "myspace")
    assert prepared.fields == {}
    assert prepared.dropped == {
        "email": "platform 'myspace' is not known", "gclid": "platform 'myspace' is not known"
    }


# --- properties ---------------------------------------------------------------------------------

ALL_SPECS = sorted(
    {rule.spec for table in PLATFORMS.values() for rule in table.fields.values()}
    | {State(frozenset({"US", "CA"})), Gender(allow_n=True), Zip("google")},
    key=repr,
)
REGIONS = st.sampled_from([None, "US", "GB", "DE", "CA", "FR", "JP"])
# Arbitrary text, including control characters and any non-surrogate code point.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
PHONE_LIKE = st.from_regex(r"\A(\+|00)?[0-9 ().-]{6,18}\Z")
DATE_LIKE = st.builds(
    lambda d, fmt: d.strftime(fmt),
    st.dates(date(1890, 1, 1), date(2030, 12, 31)),
    st.sampled_from(["%Y-%m-%d", "%m/%d/%Y", "%d.%m.%Y", "%d %b %Y", "%B %d, %Y", "%Y%m%d"]),
)
LIKELY = {
    Email: st.emails(), Phone: PHONE_LIKE, BirthDate: DATE_LIKE,
    State: st.sampled_from(["California", "N.Y.", "Ontario", "Bavaria", "qc", "US-TX"]),
    Zip: st.from_regex(r"\A[0-9A-Za-z -]{2,10}\Z"),
    Country: st.sampled_from(["United Kingdom", "usa", "DE", "Côte d'Ivoire", "the gambia"]),
    Gender: st.sampled_from(["Male", "f", "Woman", "non-binary", "x"]),
}


def inputs_for(spec: Spec) -> st.SearchStrategy[str]:
    likely = LIKELY.get(type(spec))
    return TEXT if likely is None else st.one_of(TEXT, likely)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=repr)
@settings(deadline=None)
@given(data=st.data(), region=REGIONS)
def test_normalizer_is_idempotent(spec: Spec, data: st.DataObject, region: str | None) -> None:
    hints = Hints(region=region, today=date(2026, 6, 1))
    first = normalize(data.draw(inputs_for(spec)), spec, hints)
    if first.value is None:
        return
    again = first.value
    if isinstance(spec, Phone) and not spec.plus:
        # Digits-only output drops the "+" that says "country code first"; read without it,
        # a national parse in `region` would be a different number.
        again = "+" + again
    assert normalize(again, spec, hints) == first


@pytest.mark.parametrize("spec", ALL_SPECS, ids=repr)
@settings(deadline=None)
@given(data=st.data(), region=REGIONS)
def test_normalizer_never_raises_and_explains_every_drop(
    spec: Spec, data: st.DataObject, region: str | None
) -> None:
    result = normalize(data.draw(inputs_for(spec)), spec, Hints(region=region))
    assert (result.value is None) == (result.reason is not None)


@given(TEXT)
def test_sha256_hex_is_always_64_lowercase_hex(value: str) -> None:
    assert SHA256_HEX.fullmatch(sha256_hex(value))


REALISTIC = st.sampled_from([
    "John.Smith+x@gmail.com", "020 7946 0000", "+1 (650) 555-1212", "California", "SW1A 1AA",
    "United Kingdom", "2/16/1997", "Female", "Zoë",
    sha("x"), sha("x").upper(), sha("x") + ".ABcDEFGh",
])
IDENTITIES = st.builds(
    Identity,
    **{f.name: st.none() | TEXT | REALISTIC for f in msgspec.structs.fields(Identity)},
)


@settings(deadline=None)
@given(identity=IDENTITIES, hint=st.none() | TEXT | REGIONS, default=st.none() | REGIONS)
def test_prepare_identity_never_raises_and_hashes_every_hashed_field(
    identity: Identity, hint: str | None, default: str | None
) -> None:
    for platform, table in PLATFORMS.items():
        prepared = prepare_identity(identity, platform, country_hint=hint, default_region=default)
        rules = {rule.name: rule for rule in table.fields.values()}
        for name, sent in prepared.fields.items():
            assert rules[name].as_list is isinstance(sent, list)
            if rules[name].hashed:
                values = sent if isinstance(sent, list) else [sent]
                assert all(SHA256_HEX.fullmatch(v) or PARAM_BUILDER.fullmatch(v) for v in values)
        assert set(prepared.dropped) <= set(table.fields)
        assert not any("could not be normalized" in r for r in prepared.dropped.values())
