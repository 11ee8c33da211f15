"""Phone numbers to E.164, exactly as libphonenumber reads them, for a fraction of its cost.

`e164(text, region)` gives the E.164 form or a failure marker. phonenumbers' generic parse and
validation cost ~40-120 µs per new number (it may try every region sharing a calling code),
and real traffic has one number per customer, so a cache rarely helps across events. The
common shapes take a fast path built from phonenumbers' own metadata (~5 µs); whatever it is
not sure of is read by phonenumbers itself. Both give the same answer
(tests/pipeline/test_phone_fast.py, contrib/bench/phone.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache

import phonenumbers

# What e164() answers when it has no E.164 form to give.
NO_COUNTRY, NOT_A_NUMBER, INVALID = "no-country", "not-a-number", "invalid"


@lru_cache(maxsize=16384)
def e164(text: str, region: str | None) -> str:
    """The E.164 form, or one of the failure markers above. Cached: one event's number is read
    for the identity graph and again for each destination.

    Real traffic has one number per customer, so the cache rarely helps across events: the
    common shapes ("+44 7911 123456"; "(415) 555-0100" read in US) take the fast path below,
    ~5 µs instead of phonenumbers' ~40-120 µs (contrib/bench/phone.py); what it is not sure of
    is read by phonenumbers itself. Both give the same answer (tests/pipeline/test_phone_fast.py).
    """
    fast = _e164_fast(text, region)
    return fast if fast is not None else _e164_reference(text, region)


def _e164_reference(text: str, region: str | None) -> str:
    """phonenumbers' own reading, the definition the fast path must agree with, and what reads
    whatever it declines. Slow for what it does: a generic parse (extensions, RFC 3966, vanity
    letters), then validation that may try every region sharing the country code."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        if region is None and exc.error_type == exc.INVALID_COUNTRY_CODE:
            return NO_COUNTRY
        return NOT_A_NUMBER
    if not phonenumbers.is_valid_number(number):
        return INVALID
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


# --- phone: the fast path -----------------------------------------------------------------------
#
# phonenumbers.parse + is_valid_number, redone for inputs made only of ASCII digits and the
# separators below, with the metadata's regexes compiled once per region. Each step mirrors
# one in phonenumberutil.py (parse, _maybe_extract_country_code,
# _maybe_strip_national_prefix_carrier_code, _test_number_length, region_code_for_number,
# _number_type_helper) and is named after it.

# All of these are in libphonenumber's VALID_PUNCTUATION, and none can start an extension
# (those need a letter, "#", "~", "," or ";"), so for these shapes parse() finds no extension,
# no RFC 3966 parts and no vanity letters: it reads the digits, nothing else.
_INTERNATIONAL_SHAPE = re.compile(r"\+[0-9 ()./-]*")
_NATIONAL_SHAPE = re.compile(r"[0-9 ()./-]*")
_SEPARATORS = " ()./-"
_DIGITS_ONLY = str.maketrans("", "", "+" + _SEPARATORS)
_FAST_MAX_LENGTH = 100  # parse() rejects over 250 characters: stay well clear, decline
_MIN_NSN, _MAX_NSN = 2, 17  # phonenumbers' _MIN_LENGTH_FOR_NSN, _MAX_LENGTH_FOR_NSN
_CALLING_CODES = {str(code): code for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE}
_NON_GEO = phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY  # "001": +800, +882, …
# _test_number_length verdicts; parse() keeps a stripped national prefix only for the first two.
_POSSIBLE, _TOO_LONG, _TOO_SHORT, _LOCAL_ONLY, _INVALID_LENGTH = range(5)
# A pattern that cannot simply be OR-ed with others (backreference, inline flag, named group).
_NOT_COMBINABLE = re.compile(r"\\[1-9]|\(\?[aiLmsux]|\(\?P")


def _type_descs(metadata: phonenumbers.PhoneMetadata) -> list[phonenumbers.PhoneNumberDesc]:
    """The number types that make a number valid, as _number_type_helper tries them. Mobile
    counts only when its pattern differs from fixed line's: with the same pattern
    _number_type_helper never looks at mobile (and its possible lengths) at all."""
    descs = [
        metadata.premium_rate, metadata.toll_free, metadata.shared_cost, metadata.voip,
        metadata.personal_number, metadata.pager, metadata.uan, metadata.voicemail,
        metadata.fixed_line,
    ]
    if not metadata.same_mobile_and_fixed_line_pattern:
        descs.append(metadata.mobile)
    return [desc for desc in descs if desc is not None]


def _any_type_by_length(
    metadata: phonenumbers.PhoneMetadata,
) -> dict[int, re.Pattern[str]] | None:
    """For each NSN length, one regex that fully matches iff some number type matches: a type
    counts for the lengths its possible_length lists (all lengths when it lists none, as
    _is_number_matching_desc reads it); a type with no pattern never matches. None: a pattern
    that cannot be combined (there are none in phonenumbers 9.0; declined if one appears)."""
    by_length: dict[int, re.Pattern[str]] = {}
    compiled: dict[str, re.Pattern[str]] = {}  # lengths with the same types share one regex
    descs = _type_descs(metadata)
    for length in range(_MIN_NSN, _MAX_NSN + 1):
        patterns: list[str] = []
        for desc in descs:
            pattern = desc.national_number_pattern
            if pattern and (not desc.possible_length or length in desc.possible_length):
                if _NOT_COMBINABLE.search(pattern):
                    return None
                if pattern not in patterns:
                    patterns.append(pattern)
        if patterns:
            combined = "|".join(f"(?:{p})" for p in patterns)
            by_length[length] = compiled.setdefault(combined, re.compile(combined))
    return by_length


@dataclass(frozen=True, slots=True)
class _Numbering:
    """One region's (or one non-geographic calling code's) metadata, compiled for the fast
    path. Patterns are compiled without flags, as phonenumbers compiles them."""

    country_code: int
    country_code_text: str
    international_prefix: re.Pattern[str] | None  # None: parse()'s "NonMatch"
    national_prefix: re.Pattern[str] | None  # national_prefix_for_parsing
    transform_rule: str | None  # national_prefix_transform_rule
    leading_digits: re.Pattern[str] | None
    general: re.Pattern[str] | None  # general_desc's pattern: "viable" in parse()
    general_lengths: tuple[int, ...]
    local_only_lengths: tuple[int, ...]
    any_type: dict[int, re.Pattern[str]]

    def is_viable(self, number: str) -> bool:
        """_match_national_number(number, general_desc): the pattern only, lengths unread."""
        return self.general is not None and self.general.fullmatch(number) is not None

    def length_verdict(self, length: int) -> int:
        """_test_number_length against the general description, in its order of checks."""
        if length in self.local_only_lengths:
            return _LOCAL_ONLY
        if self.general_lengths[0] == length:
            return _POSSIBLE
        if self.general_lengths[0] > length:
            return _TOO_SHORT
        if self.general_lengths[-1] < length:
            return _TOO_LONG
        return _POSSIBLE if length in self.general_lengths[1:] else _INVALID_LENGTH

    def is_valid(self, nsn: str) -> bool:
        """_number_type_helper(nsn) != UNKNOWN: the general description (lengths and pattern)
        matches, and so does some number type."""
        length = len(nsn)
        if self.general is None or (self.general_lengths and length not in self.general_lengths):
            return False
        any_type = self.any_type.get(length)
        return (
            any_type is not None
            and self.general.fullmatch(nsn) is not None
            and any_type.fullmatch(nsn) is not None
        )


def _compile_unless_none(pattern: str | None) -> re.Pattern[str] | None:
    return None if pattern is None else re.compile(pattern)


def _compile(metadata: phonenumbers.PhoneMetadata | None) -> _Numbering | None:
    """The fast path's form of `metadata`; None (decline) for anything it does not mirror."""
    if metadata is None or metadata.country_code is None or metadata.general_desc is None:
        return None
    general = metadata.general_desc
    if not general.possible_length:  # _test_number_length would index an empty tuple
        return None
    for_parsing = metadata.national_prefix_for_parsing
    prefix = re.compile(for_parsing) if for_parsing else None
    rule = metadata.national_prefix_transform_rule or None
    if rule is not None and (prefix is None or prefix.groups == 0):
        return None  # phonenumbers would raise IndexError, or never use the rule
    any_type = _any_type_by_length(metadata)
    if any_type is None:
        return None
    return _Numbering(
        country_code=metadata.country_code,
        country_code_text=str(metadata.country_code),
        # "is not None", as phonenumbers tests them: an empty pattern would match everywhere.
        international_prefix=_compile_unless_none(metadata.international_prefix),
        national_prefix=prefix,
        transform_rule=rule,
        leading_digits=_compile_unless_none(metadata.leading_digits),
        general=(
            re.compile(general.national_number_pattern) if general.national_number_pattern
            else None
        ),
        general_lengths=tuple(general.possible_length),
        local_only_lengths=tuple(general.possible_length_local_only),
        any_type=any_type,
    )


@cache
def _region_numbering(region: str) -> _Numbering | None:
    return _compile(phonenumbers.PhoneMetadata.metadata_for_region(region, None))


@cache
def _non_geo_numbering(country_code: int) -> _Numbering | None:
    return _compile(phonenumbers.PhoneMetadata.metadata_for_nongeo_region(country_code, None))


def _numbering_of(country_code: int, region: str) -> _Numbering | None:
    """metadata_for_region_or_calling_code, compiled: "001" means a non-geographic code."""
    if region == _NON_GEO:
        return _non_geo_numbering(country_code)
    return _region_numbering(region)


def _main_numbering(country_code: int) -> _Numbering | None:
    """What parse() reads the rest of a number with once it has its country code: the
    metadata of the code's main region (the first listed; US for +1, GB for +44), even when
    the hint was another region sharing the code (GG, JE, CA…)."""
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[country_code]
    return _numbering_of(country_code, regions[0])


@cache
def _sharing(country_code: int) -> tuple[_Numbering, ...] | None:
    """Every region on `country_code`, in phonenumbers' order; None if one is declined."""
    numberings: list[_Numbering] = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[country_code]:
        numbering = _numbering_of(country_code, region)
        if numbering is None or numbering.country_code != country_code:
            return None
        numberings.append(numbering)
    return tuple(numberings)


def _split_country_code(digits: str) -> tuple[int, str]:
    """_extract_country_code: the shortest known code among the first 1-3 digits, and the
    rest; (0, digits) if none (codes never start with 0)."""
    if digits[:1] != "0":
        for size in (1, 2, 3):
            code = _CALLING_CODES.get(digits[:size]) if size <= len(digits) else None
            if code is not None:
                return code, digits[size:]
    return 0, digits


def _strip_national_prefix(number: str, numbering: _Numbering) -> str:
    """_maybe_strip_national_prefix_carrier_code: drop (or, with a transform rule, rewrite)
    the national prefix, unless that turns a viable number into one that is not. The carrier
    code it may capture is not part of E.164 and is dropped."""
    prefix = numbering.national_prefix
    if not number or prefix is None:
        return number
    match = prefix.match(number)
    if match is None:
        return number
    rule = numbering.transform_rule
    if rule is None or match.groups()[-1] is None:
        # No rule, or the rule's group did not take part: the prefix is simply removed
        # ("0" in GB; "1" before a NANP area code).
        stripped = number[match.end():]
    else:
        # E.g. GG "([25-9]\d{5})$|0|180020" → "1481\1": a 6-digit local number gains its area
        # code; AR inserts the mobile 9. The same re.sub phonenumbers makes.
        stripped = prefix.sub(rule, number, count=1)
    if numbering.is_viable(number) and not numbering.is_viable(stripped):
        return number
    return stripped


def _is_valid_number(country_code: int, nsn: str) -> bool | None:
    """is_valid_number: valid in the number's region, which is the only one on the code, or
    else found by walking the regions sharing it in order: one with leading_digits decides if
    they match the start of the number (it must then be valid there, a later region is not
    tried); one without is the number's region if the number is valid there. None: declined."""
    sharing = _sharing(country_code)
    if sharing is None:
        return None
    if len(sharing) == 1:
        return sharing[0].is_valid(nsn)
    for numbering in sharing:
        if numbering.leading_digits is not None:
            if numbering.leading_digits.match(nsn):
                return numbering.is_valid(nsn)
        elif numbering.is_valid(nsn):
            return True
    return False


def _finish(country_code: int, national: str, numbering: _Numbering | None) -> str | None:
    """parse() from the country code on (national prefix, NSN length checks), then
    is_valid_number and E.164. The NSN keeps its leading zeros: parse() records them as the
    "Italian leading zero" and national_significant_number puts them back."""
    if numbering is None:
        return None
    if len(national) < _MIN_NSN:
        return NOT_A_NUMBER  # TOO_SHORT_NSN
    stripped = _strip_national_prefix(national, numbering)
    # Keep the stripped form only if its length is possible (or too long) for the region:
    # otherwise the original may be a valid short number.
    if numbering.length_verdict(len(stripped)) in (_POSSIBLE, _TOO_LONG):
        national = stripped
    if not _MIN_NSN <= len(national) <= _MAX_NSN:
        return NOT_A_NUMBER  # TOO_SHORT_NSN / TOO_LONG
    valid = _is_valid_number(country_code, national)
    if valid is None:
        return None
    return f"+{country_code}{national}" if valid else INVALID


def _read_national(digits: str, region: str) -> str | None:
    """parse(digits, region) for a number not written with "+"."""
    home = _region_numbering(region)
    if home is None:
        return None
    # The region's international prefix ("00" in GB, "011" in US) introduces a country
    # code, unless a 0 follows it (codes never start with 0).
    idd = home.international_prefix
    if idd is not None and (match := idd.match(digits)) and digits[match.end():][:1] != "0":
        rest = digits[match.end():]
        if len(rest) <= _MIN_NSN:
            return NOT_A_NUMBER  # TOO_SHORT_AFTER_IDD
        country_code, national = _split_country_code(rest)
        if country_code == 0:
            return NOT_A_NUMBER  # INVALID_COUNTRY_CODE with a region: "not a number"
        return _finish(country_code, national, _main_numbering(country_code))
    # The region's own code written without "+" ("447911123456" in GB) counts as a country
    # code if the number is not viable with it but is without it, or is too long with it.
    code = home.country_code_text
    if digits.startswith(code):
        without = _strip_national_prefix(digits[len(code):], home)
        if (
            (not home.is_viable(digits) and home.is_viable(without))
            or home.length_verdict(len(digits)) == _TOO_LONG
        ):
            return _finish(home.country_code, without, _main_numbering(home.country_code))
    return _finish(home.country_code, digits, home)


def _e164_fast(text: str, region: str | None) -> str | None:
    """What _e164_reference returns, for "+<digits>" and national digits with the usual
    separators; None when the input is anything else (letters, extensions, "tel:", other
    characters), for the reference to read."""
    if len(text) > _FAST_MAX_LENGTH:
        return None
    if text.startswith("+"):
        if _INTERNATIONAL_SHAPE.fullmatch(text) is None:
            return None
        digits = text.translate(_DIGITS_ONLY)
        if len(digits) < 3:
            return NOT_A_NUMBER  # "+" needs 3 digits to be a viable number at all
        country_code, national = _split_country_code(digits)
        if country_code == 0:
            # Unknown code after "+": parse() retries without the "+", reading the digits in
            # the region (its international prefix, its own code). With no region that
            # fails as "no country"; with one, leave it to phonenumbers.
            return NO_COUNTRY if region is None else None
        # With "+" and a known code the hint region plays no part, known to phonenumbers or not.
        return _finish(country_code, national, _main_numbering(country_code))
    if _NATIONAL_SHAPE.fullmatch(text) is None:
        return None
    digits = text.translate(_DIGITS_ONLY)
    # _is_viable_phone_number on the text from the first to the last digit: 3 digits with
    # any separators, or exactly 2 digits side by side.
    if not (len(digits) >= 3 or (len(digits) == 2 and len(text.strip(_SEPARATORS)) == 2)):
        return NOT_A_NUMBER
    if region is None:
        return NO_COUNTRY
    if region not in phonenumbers.SUPPORTED_REGIONS:
        # parse() reads national numbers only in regions it has metadata for (uppercase
        # ISO codes; not "001"): for any other the hint is as good as none, but the failure
        # is reported as INVALID_COUNTRY_CODE with a region given, i.e. "not a number".
        return NOT_A_NUMBER
    return _read_national(digits, region)
