"""The phone fast path against phonenumbers itself: same E.164 or same failure, always.

`_e164_fast` re-implements phonenumbers.parse + is_valid_number for the common shapes and
returns None where it declines; `_e164_reference` is the plain phonenumbers reading (and the
fallback). Every check here is "fast == reference" wherever the fast path answers, plus checks
that it does answer for the shapes real traffic has, and declines the ones it must not read.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from tracklayerd.pipeline import phone
from tracklayerd.pipeline.normalize import Hints, Phone, normalize_phone
from tracklayerd.pipeline.phone import _e164_fast, _e164_reference
from tracklayerd.pipeline.phone import e164 as _e164

REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)
NON_GEO_CODES = sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)
CALLING_CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
TYPES = [
    PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE, PhoneNumberType.SHARED_COST, PhoneNumberType.VOIP,
    PhoneNumberType.PERSONAL_NUMBER, PhoneNumberType.PAGER, PhoneNumberType.UAN,
    PhoneNumberType.VOICEMAIL,
]
SEPARATORS = " -./()"
DIGITS = "0123456789"


def agrees(text: str, region: str | None) -> bool:
    """The fast path declines, or says exactly what phonenumbers says."""
    fast = _e164_fast(text, region)
    return fast is None or fast == _e164_reference(text, region)


def mismatch(text: str, region: str | None) -> str:
    return (f"{text!r} in {region}: fast {_e164_fast(text, region)!r}, "
            f"reference {_e164_reference(text, region)!r}")


def with_separators(digits: str, rnd: random.Random) -> str:
    """The digits with a separator (or two) here and there, as people type them."""
    out: list[str] = []
    for digit in digits:
        out.append(digit)
        if rnd.random() < 0.3:
            out.append(rnd.choice(SEPARATORS) * rnd.choice((1, 1, 2)))
    return "".join(out).strip(SEPARATORS) if rnd.random() < 0.5 else "".join(out)


def mutations(digits: str, rnd: random.Random) -> Iterator[str]:
    """One digit dropped, one added, the last changed, the first changed."""
    at = rnd.randrange(len(digits))
    yield digits[:at] + digits[at + 1:]
    at = rnd.randrange(len(digits) + 1)
    yield digits[:at] + rnd.choice(DIGITS) + digits[at:]
    yield digits[:-1] + rnd.choice(DIGITS.replace(digits[-1], ""))
    yield rnd.choice(DIGITS.replace(digits[0], "")) + digits[1:]


def examples_of(region: str) -> list[phonenumbers.PhoneNumber]:
    if region.isdigit():  # a non-geographic calling code, e.g. 800
        found = phonenumbers.example_number_for_non_geo_entity(int(region))
        return [found] if found is not None else []
    numbers = (phonenumbers.example_number_for_type(region, kind) for kind in TYPES)
    return [number for number in numbers if number is not None]


# --- differential: every region's example numbers, their forms and near misses --------------


@pytest.mark.parametrize("region", REGIONS + [str(code) for code in NON_GEO_CODES])
def test_example_numbers_and_their_mutations_agree_with_phonenumbers(region: str) -> None:
    rnd = random.Random(region)
    own = None if region.isdigit() else region
    checks: list[tuple[str, str | None]] = []
    answered = 0
    for number in examples_of(region):
        international = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
        e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
        national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
        national_digits = "".join(c for c in national if c.isdigit())
        other = rnd.choice(REGIONS)
        must_answer = [(international, own), (e164, None), (e164, other)]
        if own is not None:
            must_answer.append((national, own))
        for text, where in must_answer:
            assert _e164_fast(text, where) is not None, f"declined {text!r} in {where}"
            answered += 1
        checks += must_answer
        checks += [(national, other), (national, None)]
        checks += [(with_separators(national_digits, rnd), own)]
        # The country code without "+": after an international prefix, or bare.
        checks += [("00" + e164[1:], other), ("011" + e164[1:], "US"), (e164[1:], own or other)]
        for mutated in mutations(e164[1:], rnd):
            checks += [("+" + with_separators(mutated, rnd), rnd.choice([None, other]))]
        if national_digits:
            for mutated in mutations(national_digits, rnd):
                checks += [(with_separators(mutated, rnd), own or other)]
    for text, where in checks:
        assert agrees(text, where), mismatch(text, where)
    assert answered or not examples_of(region)


@pytest.mark.parametrize("region", ["GB", "US", "DE", "FR", "IT", "ES", "NL", "AU", "BR", "IN"])
def test_random_numbers_near_valid_ones_agree(region: str) -> None:
    """Many valid-looking numbers: each type's example with its tail redrawn."""
    rnd = random.Random(f"tail {region}")
    for number in examples_of(region):
        e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
        national = "".join(c for c in phonenumbers.format_number(
            number, PhoneNumberFormat.NATIONAL) if c.isdigit())
        for _ in range(40):
            keep = rnd.randrange(2, len(e164))
            tail = "".join(rnd.choice(DIGITS) for _ in range(len(e164) - keep))
            text = with_separators(e164[:keep] + tail, rnd)
            assert agrees(text, None), mismatch(text, None)
            if national:
                keep = rnd.randrange(1, len(national))
                tail = "".join(rnd.choice(DIGITS) for _ in range(len(national) - keep))
                text = with_separators(national[:keep] + tail, rnd)
                assert agrees(text, region), mismatch(text, region)


# --- hypothesis ---------------------------------------------------------------------------------

SEPARATOR = st.sampled_from(["", "", "", " ", "-", ".", "/", "(", ")", "  ", " - "])


@st.composite
def spaced(draw: st.DrawFn, digits: str) -> str:
    """`digits` with separators drawn between (and around) them."""
    parts = [draw(SEPARATOR)]
    for digit in digits:
        parts += [digit, draw(SEPARATOR)]
    return "".join(parts)


DIGIT_STRINGS = st.text(alphabet=DIGITS, min_size=0, max_size=16)
ANY_CODE = st.one_of(
    st.sampled_from(CALLING_CODES).map(str), st.text(alphabet=DIGITS, min_size=1, max_size=3)
)
INTERNATIONAL = st.builds(
    lambda code, rest: "+" + code + rest,
    ANY_CODE,
    st.text(alphabet=DIGITS, min_size=4, max_size=14).flatmap(spaced),
)
NATIONAL = DIGIT_STRINGS.flatmap(spaced)
# Prefixes that change how a national string is read: national prefixes, international
# prefixes, a country code without "+".
PREFIXED = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(["0", "1", "00", "011", "0044", "44", "1 ", "8 10", "0 ", "9"]),
    NATIONAL,
)
SOME_REGION = st.one_of(
    st.none(), st.sampled_from(REGIONS), st.sampled_from(["AQ", "XX", "gb", "001", ""])
)


@settings(deadline=None, max_examples=400)
@given(text=INTERNATIONAL, region=SOME_REGION)
@example(text="+44 7700 912345", region=None)
@example(text="+1 (415) 555-0100", region="CA")
@example(text="+0044 20 7946 0000", region="GB")  # retried without "+": declined
@example(text="+999 1234", region=None)
def test_international_numbers_agree(text: str, region: str | None) -> None:
    assert agrees(text, region), mismatch(text, region)


@settings(deadline=None, max_examples=400)
@given(text=st.one_of(NATIONAL, PREFIXED), region=SOME_REGION)
@example(text="07700 900123", region="GB")
@example(text="(415) 555-0100", region="US")
@example(text="00 33 6 12 34 56 78", region="GB")
@example(text="1 2", region="GB")
@example(text="12", region=None)
@example(text="", region="DE")
def test_national_numbers_agree(text: str, region: str | None) -> None:
    assert agrees(text, region), mismatch(text, region)
    assert _e164_fast(text, region) is not None  # only digits and separators: always read


# --- the fast path does take the common shapes --------------------------------------------------


@pytest.mark.parametrize(("text", "region", "expected"), [
    # Ofcom's drama range: libphonenumber's GB mobile pattern has no 7700 9xxxxx, so these
    # are invalid, and the fast path must say so as cheaply as it reads valid ones.
    ("+44 7700 912345", None, phone.INVALID),
    ("07700 900123", "GB", phone.INVALID),
    ("+44 7400 123456", None, "+447400123456"),
    ("+44 7911 123456", "US", "+447911123456"),
    ("+1 (415) 555-0100", None, "+14155550100"),
    ("+33 6 12 34 56 78", None, "+33612345678"),
    ("+44 20 7946 0000", None, "+442079460000"),
    ("+49 30 12345678", None, "+493012345678"),
    ("+39 06 1234 5678", None, "+390612345678"),  # Italian leading zero kept
    ("+61 4 1234 5678", None, "+61412345678"),
    ("+55 11 91234-5678", None, "+5511912345678"),
    ("+91 98765 43210", None, "+919876543210"),
    ("+44 (0) 20 7946 0000", None, "+442079460000"),  # national prefix after the code
    ("07911 123456", "GB", "+447911123456"),
    ("(415) 555-0100", "US", "+14155550100"),
    ("0044 20 7946 0000", "GB", "+442079460000"),  # GB's international prefix
    ("011 44 20 7946 0000", "US", "+442079460000"),
    ("06 12 34 56 78", "FR", "+33612345678"),
    ("0 20 7946 0000", "GG", "+442079460000"),
    ("990744", "GG", "+441481990744"),  # GG's transform rule: a local number gains 1481
    # …but once a country code is read (here GG's own 44, without "+"), the rest is read
    # with the code's main region's metadata, GB's, where no rule adds 1481.
    ("44 180020 990744", "GG", phone.INVALID),
    ("07700 900123", None, phone.NO_COUNTRY),
    ("+999 123 456", None, phone.NO_COUNTRY),
    ("+44 1", None, phone.NOT_A_NUMBER),
    ("+44 7700 91234", None, phone.INVALID),
    # A region phonenumbers has no metadata for (pycountry knows more): national numbers are
    # "not a number" there, "+" numbers read as without a region.
    ("020 7946 0000", "AQ", phone.NOT_A_NUMBER),
    ("020 7946 0000", "gb", phone.NOT_A_NUMBER),
    ("+44 20 7946 0000", "AQ", "+442079460000"),
])
def test_common_shapes_take_the_fast_path(text: str, region: str | None, expected: str) -> None:
    assert _e164_fast(text, region) == expected
    assert _e164_reference(text, region) == expected


def test_e164_answers_from_the_fast_path_without_phonenumbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(text: str, region: str | None) -> str:
        raise AssertionError("fell back to phonenumbers")

    monkeypatch.setattr(phone, "_e164_reference", refuse)
    _e164.cache_clear()
    try:
        assert _e164("+44 7911 123456", None) == "+447911123456"
        assert _e164("07911 123456", "GB") == "+447911123456"
        assert _e164("+44 7700 912345", None) == phone.INVALID
    finally:
        _e164.cache_clear()


@pytest.mark.parametrize(("text", "region"), [
    ("1-800-FLOWERS", "US"),
    ("+1 800 FLOWERS", None),
    ("+44 20 7946 0000 ext. 12", None),
    ("+44 20 7946 0000;ext=12", None),
    ("+44 20 7946 0000 x12", None),
    ("(530) 583-6985 # 12", "US"),
    ("tel:+44-20-7946-0000", None),
    ("+44-20-7946-0000;phone-context=example.com", None),
    ("Tel: +44 20 7946 0000", None),
    ("\uff0b\uff14\uff14 20 7946 0000", None),  # full-width plus and digits
    ("+44\u00a020\u00a07946\u00a00000", None),  # no-break spaces
    ("++44 20 7946 0000", None),
    ("(+44) 20 7946 0000", None),
    ("+0044 20 7946 0000", "GB"),  # no code after "+": parse retries in the region
    ("+" + "1" * 120, None),
])
def test_other_shapes_fall_back_to_phonenumbers(text: str, region: str | None) -> None:
    assert _e164_fast(text, region) is None
    _e164.cache_clear()
    assert _e164(text, region) == _e164_reference(text, region)


def test_every_region_and_calling_code_is_compiled() -> None:
    """No region is silently left to the slow path by a metadata shape the fast path does not
    mirror (a phonenumbers upgrade adding one should be looked at, not ignored)."""
    assert all(phone._region_numbering(region) is not None for region in REGIONS)
    assert all(phone._sharing(code) is not None for code in CALLING_CODES)


def test_normalize_phone_reasons_are_unchanged_and_quote_no_digits() -> None:
    spec = Phone(plus=True)
    assert normalize_phone("+44 7911 123456", spec).value == "+447911123456"
    assert normalize_phone("0044 7911 123456", spec).value == "+447911123456"
    assert normalize_phone("(415) 555-0100", Phone(plus=False), Hints(region="US")).value == (
        "14155550100"
    )
    cases = {
        ("07700 900123", None): "has no country code and no region to read it in",
        ("+44 1", None): "is not a phone number",
        ("07700 90012", "GB"): "is not a valid phone number (read in GB)",
        ("+44 7700 91234", "GB"): "is not a valid phone number",
    }
    for (text, region), reason in cases.items():
        result = normalize_phone(text, spec, Hints(region=region))
        assert result.value is None
        assert result.reason == f"the value ({len(text)} characters) {reason}"
