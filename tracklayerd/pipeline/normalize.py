"""Identity fields as each ad platform wants them: normalized, then SHA-256 where it asks. Pure.

A platform matches on the hash of its own canonical form of a value, so one character of
difference (a space, a missing country code, "California" for "ca") is a silent non-match.
The rules are in reference/destinations.md; what each platform gets is the table in
:mod:`tracklayerd.pipeline.normalize_tables`. Where Meta's own SDK gets a rule wrong (1.4:
UK national phone numbers hashed without the country code, state names not mapped, dates
hashed with dashes) this module follows Meta's documentation instead.

Contract: nothing here raises on any text. A value that cannot be made right is dropped with
a reason, never guessed: a national-format phone number with no region to read it in is
dropped, because hashing it without its country code (as Meta's SDK does) matches no one or
the wrong one. A value that already is a SHA-256 hex digest is passed through, never hashed
twice. Reasons quote the value, so they are personal data: show them to the operator, do not
log them.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, date, datetime
from functools import cache, lru_cache
from typing import Any

import msgspec
import pycountry

from tracklayerd.events import Identity
from tracklayerd.pipeline import phone
from tracklayerd.pipeline.normalize_tables import (
    COUNTRY_ALIASES,
    DATE_FILLERS,
    EITHER_ORDER,
    GENDERS,
    GMAIL_DOMAINS,
    MONTH_FIRST,
    MONTHS,
    PLATFORMS,
    STATE_ALIASES,
    BirthDate,
    ClickId,
    Country,
    Email,
    Gender,
    Identifier,
    Phone,
    Platform,
    Rule,
    Spec,
    State,
    Text,
    Zip,
)

__all__ = [
    "PLATFORMS", "BirthDate", "ClickId", "Country", "Email", "Gender", "Hints", "Identifier",
    "Normalized", "Phone", "PreparedIdentity", "Spec", "State", "Text", "Zip", "is_sha256_hex",
    "normalize", "normalize_birth_date", "normalize_click_id", "normalize_country",
    "normalize_email", "normalize_gender", "normalize_identifier", "normalize_phone",
    "normalize_state", "normalize_text", "normalize_zip", "prepare_identity", "sha256_hex",
]


class Normalized(msgspec.Struct, frozen=True):
    """A normalized value, or None and why (reason None too: there was nothing to normalize)."""

    value: str | None
    reason: str | None = None


class Hints(msgspec.Struct, frozen=True, kw_only=True):
    # ISO 3166-1 alpha-2, uppercase: where national phone numbers, ZIPs, states and dates are
    # read. prepare_identity sets it; callers of single normalizers pass it.
    region: str | None = None
    # Birth dates after this day are impossible; None means today (UTC).
    today: date | None = None


class PreparedIdentity(msgspec.Struct):
    fields: dict[str, str | list[str]] = {}  # platform field name → value as sent
    dropped: dict[str, str] = {}  # canonical Identity field → why it was not sent


NO_HINTS = Hints()
_ABSENT = Normalized(None)


def _ok(value: str) -> Normalized:
    return Normalized(value)


def _drop(reason: str) -> Normalized:
    return Normalized(None, reason)


def _q(value: str) -> str:
    """How a reason refers to the value: by its length, never its content. Reasons are
    stored and shown to operators, and the value may be someone's email or phone."""
    return f"the value ({len(value)} characters)"


def lookup_key(value: str) -> str:
    """A lookup key that ignores case, accents, spaces and punctuation ("Québec" → "quebec")."""
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    return "".join(c for c in decomposed if c.isalnum() and not unicodedata.combining(c))


# --- email --------------------------------------------------------------------------------------

_EMAIL_SPECIALS = frozenset('()<>[]\\,;:"@')


def _valid_email(local: str, domain: str) -> bool:
    labels = domain.split(".")
    return (
        0 < len(local) <= 64 and len(domain) <= 253 and len(labels) >= 2
        and all(c.isprintable() and not c.isspace() and c not in _EMAIL_SPECIALS for c in local)
        and not local.startswith(".") and not local.endswith(".") and ".." not in local
        and all(0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
                and all(c.isalnum() or c == "-" for c in label) for label in labels)
        and not labels[-1].isdigit()
    )


def normalize_email(value: str, spec: Email, hints: Hints = NO_HINTS) -> Normalized:
    """Trimmed and lowercase; the platform's local-part rules applied; syntax checked."""
    return _normalize_email(value, spec)


@lru_cache(maxsize=16384)
def _normalize_email(value: str, spec: Email) -> Normalized:
    # Cached (results are frozen): the identity graph and each destination read the same
    # address of an event.
    text = unicodedata.normalize("NFC", value.strip().lower())
    local, _, domain = text.rpartition("@")
    if not _valid_email(local, domain):
        return _drop(f"{_q(value)} is not an email address")
    if spec.strip_tag:
        local = local.partition("+")[0]
    if spec.alnum_local:
        local = "".join(c for c in local if c.isalnum())
    if spec.gmail_dots and domain in GMAIL_DOMAINS:
        local = local.replace(".", "")
    # Checked again: stripping a tag can leave "a." or nothing at all.
    if not _valid_email(local, domain):
        return _drop(f"{_q(value)} leaves no valid address once its local part is normalized")
    return _ok(f"{local}@{domain}")


# --- phone --------------------------------------------------------------------------------------


def normalize_phone(value: str, spec: Phone, hints: Hints = NO_HINTS) -> Normalized:
    """E.164 as libphonenumber reads it (pipeline/phone.py): "+" numbers as they are,
    national ones read in hints.region.

    A national number with no region is dropped: "020 7946 0000" is London only if we know
    the person is in the UK, and hashing "2079460000" (what Meta's SDK does) is a mis-hash.
    """
    text = value.strip()
    region = hints.region
    if region is None and text.startswith("00"):
        # 00 is the ITU international prefix: "0044 20…" says its country itself.
        text = "+" + text[2:]
    e164 = phone.e164(text, region)
    if e164 == phone.NO_COUNTRY:
        return _drop(f"{_q(value)} has no country code and no region to read it in")
    if e164 == phone.NOT_A_NUMBER:
        return _drop(f"{_q(value)} is not a phone number")
    if e164 == phone.INVALID:
        where = f" (read in {region})" if region and not text.startswith("+") else ""
        return _drop(f"{_q(value)} is not a valid phone number{where}")
    return _ok(e164 if spec.plus else e164.removeprefix("+"))


# --- free text ----------------------------------------------------------------------------------

_KEEP: dict[str, Callable[[str], bool]] = {
    "letters": lambda category: category[0] in "LM",
    "alnum": lambda category: category[0] in "LMN",
    "printable": lambda category: category not in ("Cc", "Cs"),
}
_KEPT = {"letters": "letters", "alnum": "letters or digits", "printable": "text"}


def normalize_text(value: str, spec: Text, hints: Hints = NO_HINTS) -> Normalized:
    """Names, cities, streets: lowercased (str.lower, as the browser pixels' toLowerCase; not
    casefold, which turns "ß" into "ss"), NFC so "Zoë" typed either way hashes the same."""
    text = unicodedata.normalize("NFC", value.lower() if spec.lower else value)
    keep = _KEEP[spec.keep]
    kept = "".join(
        " " if c.isspace() else c for c in text if c.isspace() or keep(unicodedata.category(c))
    )
    joined = ("" if spec.spaces == "remove" else " ").join(kept.split())
    # Again: removing a character can bring a letter and an accent together.
    result = unicodedata.normalize("NFC", joined)
    return _ok(result) if result else _drop(f"{_q(value)} has no {_KEPT[spec.keep]}")


# --- places -------------------------------------------------------------------------------------


@cache
def _countries() -> dict[str, str]:
    index: dict[str, str] = {}
    for country in pycountry.countries:  # codes first: a code never loses to a name
        index[lookup_key(country.alpha_2)] = index[lookup_key(country.alpha_3)] = country.alpha_2
    for country in pycountry.countries:
        for attr in ("name", "official_name", "common_name"):
            if name := getattr(country, attr, None):
                index.setdefault(lookup_key(name), country.alpha_2)
    return index | COUNTRY_ALIASES


@lru_cache(maxsize=4096)
def _country_code(value: str) -> str | None:
    key = lookup_key(value)
    index = _countries()
    return index.get(key) or (index.get(key[3:]) if key.startswith("the") else None)


def normalize_country(value: str, spec: Country, hints: Hints = NO_HINTS) -> Normalized:
    """Names ("United Kingdom"), alpha-3 ("GBR") and alpha-2 → ISO 3166-1 alpha-2."""
    code = _country_code(value)
    if code is None:
        return _drop(f"{_q(value)} is not a country name or ISO 3166 code")
    return _ok(code if spec.upper else code.lower())


@cache
def _subdivisions(country: str) -> dict[str, str]:
    index: dict[str, str] = {}
    for sub in pycountry.subdivisions:
        if sub.country_code == country and sub.parent_code is None:
            suffix = sub.code.partition("-")[2]
            for key in (suffix, sub.code, sub.name):
                index[lookup_key(key)] = suffix
    return index | STATE_ALIASES.get(country, {})


def normalize_state(value: str, spec: State, hints: Hints = NO_HINTS) -> Normalized:
    """A 2-letter code where the platform wants codes ("California" → "ca"), else the name."""
    cleaned = normalize_text(value, spec.fallback)
    region = hints.region
    if region is not None and region not in spec.codes_for:
        return cleaned
    # No region: a US state name is still a US state name (the codes do not collide with
    # Canada's, the only other country in any platform's codes_for).
    for country in [region] if region else sorted(spec.codes_for):
        index = _subdivisions(country)
        # The cleaned form too, so that normalizing the output again finds the same code.
        code = index.get(lookup_key(value)) or index.get(lookup_key(cleaned.value or ""))
        if code:
            return _ok(code.lower())
    if region:
        return _drop(f"{_q(value)} is not a state or province of {region}")
    return cleaned


_US_ZIP = re.compile(r"([0-9]{5})(?:[\s-]*[0-9]{4})?")
_ZIP_PLUS_4 = re.compile(r"([0-9]{5})-[0-9]{4}")
_NOT_ZIP = {"compact": re.compile(r"[^a-z0-9]+"), "google": re.compile(r"[^A-Za-z0-9 -]+")}


def normalize_zip(value: str, spec: Zip, hints: Hints = NO_HINTS) -> Normalized:
    """US: the 5-digit ZIP (ZIP+4 cut). Elsewhere: letters and digits, per spec.style."""
    # NFKC: full-width digits (common in East Asian input) are digits.
    text = unicodedata.normalize("NFKC", value).strip()
    # In the US any 5+4 spelling is a ZIP+4; with no region only the unmistakable "94025-1234".
    us = {"US": _US_ZIP, None: _ZIP_PLUS_4}.get(hints.region)
    if us and (match := us.fullmatch(text)):
        return _ok(match.group(1))
    if hints.region == "US":
        return _drop(f"{_q(value)} is not a US ZIP code")
    if spec.style == "compact":
        result = _NOT_ZIP["compact"].sub("", text.lower())
    else:
        result = " ".join(_NOT_ZIP["google"].sub("", text).split())
    return _ok(result) if result else _drop(f"{_q(value)} has no letters or digits")


# --- person -------------------------------------------------------------------------------------


def normalize_gender(value: str, spec: Gender, hints: Hints = NO_HINTS) -> Normalized:
    gender = GENDERS.get(lookup_key(value))
    if gender is None or (gender == "n" and not spec.allow_n):
        allowed = "m, f or n" if spec.allow_n else "m or f"
        return _drop(f"{_q(value)} is not a gender this platform takes ({allowed})")
    return _ok(gender)


_TIME = re.compile(r"(?:[T\s]+\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}:?\d{2})?)$",
                   re.IGNORECASE)
_TOKEN = re.compile(r"\d+|[^\W\d_]+")


def _date_parts(text: str, region: str | None) -> tuple[int, int, int] | str:
    """(year, month, day), or why not."""
    if len(text) == 8 and text.isdecimal():
        return int(text[:4]), int(text[4:6]), int(text[6:])
    numbers: list[int] = []
    widths: list[int] = []
    named: list[int] = []  # a month written as a word
    for token in _TOKEN.findall(text):
        if token.isdecimal():
            numbers.append(int(token))
            widths.append(len(token))
        elif token.lower() in MONTHS:
            named.append(MONTHS[token.lower()])
        elif token.lower() not in DATE_FILLERS:
            return "is not a date"
    if len(numbers) + len(named) != 3 or len(named) > 1 or not set(widths) <= {1, 2, 4}:
        return "is not a date"
    if widths.count(4) != 1:
        return "has no four-digit year"
    year = numbers[widths.index(4)]
    if named:
        (day,) = (n for n, width in zip(numbers, widths, strict=True) if width != 4)
        return year, named[0], day
    if widths[0] == 4:
        return year, numbers[1], numbers[2]  # ISO order; nobody writes year-day-month
    if widths[2] != 4:
        return "is not a date"
    first, second = numbers[0], numbers[1]
    if first == second or first > 12:
        return year, second, first
    if second > 12:
        return year, first, second
    if region is None or region in EITHER_ORDER:
        return "is ambiguous (day or month first?) without a country to read it in"
    return (year, first, second) if region in MONTH_FIRST else (year, second, first)


def normalize_birth_date(
    value: str, spec: BirthDate, hints: Hints = NO_HINTS
) -> Normalized:
    """YYYYMMDD from ISO, US (M/D/Y where the region writes it so), day-first and named-month
    dates; an impossible, future or pre-1900 date is dropped (Meta: "year 1900..current")."""
    parts = _date_parts(_TIME.sub("", value.strip()), hints.region)
    if isinstance(parts, str):
        return _drop(f"{_q(value)} {parts}")
    try:
        born = date(*parts)
    except ValueError:
        return _drop(f"{_q(value)} is not a real date")
    if born.year < 1900 or born > (hints.today or datetime.now(UTC).date()):
        return _drop(f"{_q(value)} is not a plausible birth date")
    return _ok(born.strftime("%Y%m%d"))


def normalize_identifier(
    value: str, spec: Identifier, hints: Hints = NO_HINTS
) -> Normalized:
    text = value.strip().lower() if spec.lower else value.strip()
    if spec.max_length is not None and len(text) > spec.max_length:
        return _drop(f"is longer than {spec.max_length} characters")
    return _ok(text) if text else _drop("is blank")


def normalize_click_id(value: str, spec: ClickId, hints: Hints = NO_HINTS) -> Normalized:
    text = value.strip()
    return _ok(text) if text else _drop("is blank")


_NORMALIZERS: dict[type[Any], Callable[[str, Any, Hints], Normalized]] = {
    Email: normalize_email, Phone: normalize_phone, Text: normalize_text,
    State: normalize_state, Zip: normalize_zip, Country: normalize_country,
    Gender: normalize_gender, BirthDate: normalize_birth_date,
    Identifier: normalize_identifier, ClickId: normalize_click_id,
}


def normalize(value: str, spec: Spec, hints: Hints = NO_HINTS) -> Normalized:
    """The normalizer `spec` names, with its options."""
    return _NORMALIZERS[type(spec)](value, spec, hints)


# --- hashing ------------------------------------------------------------------------------------

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ANY_CASE_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# Meta capi-param-builder output: "<sha256>.ABcDEFGh" (legacy: two characters).
_PARAM_BUILDER = re.compile(r"[0-9a-fA-F]{64}\.(?:[0-9A-Za-z]{8}|[0-9A-Za-z]{2})")


def sha256_hex(normalized: str) -> str:
    # surrogatepass: a lone surrogate must not raise; prepare_identity drops such values first.
    return hashlib.sha256(normalized.encode("utf-8", "surrogatepass")).hexdigest()


def is_sha256_hex(value: str) -> bool:
    """Exactly 64 lowercase hex characters: what every platform takes as an already-made hash."""
    return _SHA256_HEX.fullmatch(value) is not None


# --- per platform -------------------------------------------------------------------------------

_NOT_PERSONAL = (Identifier, ClickId)  # opaque ids: may legitimately look like a hash


def _prepare(raw: object, rule: Rule, platform: str, table: Platform, hints: Hints) -> Normalized:
    if not isinstance(raw, str):
        return _drop("is not text")
    value = raw.strip()
    if not value:
        return _ABSENT
    if not value.isascii() and any(unicodedata.category(c) == "Cs" for c in value):
        return _drop("is not valid Unicode text")
    if rule.hashed:
        if table.param_builder_suffix and _PARAM_BUILDER.fullmatch(value):
            return _ok(value)
        if _ANY_CASE_SHA256.fullmatch(value):  # hashed by the sender: never hash twice
            return _ok(value.lower())
    elif not isinstance(rule.spec, _NOT_PERSONAL) and _ANY_CASE_SHA256.fullmatch(value):
        return _drop(f"is a SHA-256 hash, and {platform} takes {rule.name} in clear")
    result = normalize(value, rule.spec, hints)
    if rule.hashed and result.value is not None:
        return _ok(sha256_hex(result.value))
    return result


@lru_cache(maxsize=32768)
def _prepare_text(raw: str, rule: Rule, platform: str, hints: Hints) -> Normalized:
    """_prepare for a text value. Cached (results are frozen): names, cities, countries and
    one person's identifiers repeat across events and destinations."""
    return _prepare(raw, rule, platform, PLATFORMS[platform], hints)


def region_of(*candidates: object) -> str | None:
    """The first candidate that names a country, as ISO 3166-1 alpha-2 ("United Kingdom" →
    "GB"); None when none does."""
    for candidate in candidates:
        if isinstance(candidate, str) and (code := _country_code(candidate)):
            return code
    return None


def prepare_identity(
    identity: Identity,
    platform: str,
    *,
    default_region: str | None = None,
    country_hint: str | None = None,
    today: date | None = None,
) -> PreparedIdentity:
    """The identity as `platform` takes it: its field names, normalized, hashed where it asks.

    Region for national phone numbers, ZIPs and dates: the identity's own country if it
    parses, else `country_hint` (e.g. from the IP), else `default_region` (configured).
    Never raises: a field that cannot be sent is in `dropped` with the reason.
    """
    table = PLATFORMS.get(platform)
    if table is None:
        return PreparedIdentity(dropped={
            field: f"platform {platform!r} is not known"
            for field, value in msgspec.structs.asdict(identity).items() if value is not None
        })
    hints = Hints(region=region_of(identity.country, country_hint, default_region), today=today)
    prepared = PreparedIdentity()
    for field, rule in table.fields.items():
        raw = getattr(identity, field, None)
        if raw is None:
            continue
        try:
            result = (_prepare_text(raw, rule, platform, hints) if isinstance(raw, str)
                      else _prepare(raw, rule, platform, table, hints))
        except Exception as exc:  # one bad field must not cost the event its other identifiers
            result = _drop(f"could not be normalized ({type(exc).__name__})")
        if result.value is not None:
            prepared.fields[rule.name] = [result.value] if rule.as_list else result.value
        elif result.reason is not None:
            prepared.dropped[field] = f"{field} {result.reason}"
    return prepared
