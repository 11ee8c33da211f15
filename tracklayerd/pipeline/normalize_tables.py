"""What each platform wants done to each identity field: the data behind normalize.py.

One table, :data:`PLATFORMS`: platform key → canonical :class:`~tracklayerd.events.Identity`
field → :class:`Rule` (the platform's own field name, which normalizer with which options,
whether it is SHA-256 hashed). A field a platform does not take is absent from its row.

Field names with a dot are nested objects in the platform's payload (``address_info.city``
is ``{"address_info": {"city": ...}}``); the destination module builds the nesting.

Evidence is reference/destinations.md. Where that reference marks a rule unconfirmed, the
entry says so: change the entry, not the code, when a platform confirms otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# --- normalizer options (each type names one normalizer in normalize.py) ---------------------


@dataclass(frozen=True, slots=True)
class Email:
    # Google: dots in a gmail.com/googlemail.com local part are not significant.
    gmail_dots: bool = False
    # Reddit: a "+tag" is dropped, on every domain.
    strip_tag: bool = False
    # Reddit: only letters and digits are kept in the local part, on every domain.
    alnum_local: bool = False


@dataclass(frozen=True, slots=True)
class Phone:
    # E.164 with "+" (Google, TikTok, Reddit, Klaviyo) or digits only (Meta, Snap, Pinterest).
    plus: bool = True


@dataclass(frozen=True, slots=True)
class Text:
    """Free text: names, cities, streets, and state names that have no code."""

    lower: bool = True
    # letters: letters and combining marks (accents kept); alnum: also digits;
    # printable: everything but control characters.
    keep: Literal["letters", "alnum", "printable"] = "letters"
    # remove: "New York" → "newyork"; single: runs of whitespace become one space.
    spaces: Literal["remove", "single"] = "remove"


@dataclass(frozen=True, slots=True)
class State:
    # Countries whose subdivision names become their 2-letter codes (ISO 3166-2 suffix, which
    # for the US is the ANSI/USPS code). Elsewhere the name is kept, cleaned as `fallback`.
    codes_for: frozenset[str] = frozenset({"US"})
    fallback: Text = Text()


@dataclass(frozen=True, slots=True)
class Zip:
    # compact: lowercase, letters and digits only (Meta: "no spaces, no dash");
    # google: as written, less "." and "~" and extra spaces (GA4 user-provided data).
    style: Literal["compact", "google"] = "compact"


@dataclass(frozen=True, slots=True)
class Country:
    # ISO 3166-1 alpha-2: lowercase for the hashed fields, uppercase where sent as a code.
    upper: bool = False


@dataclass(frozen=True, slots=True)
class Gender:
    # Pinterest also takes "n" (non-binary); everyone else only "m" and "f".
    allow_n: bool = False


@dataclass(frozen=True, slots=True)
class BirthDate:
    """Any common date spelling → YYYYMMDD (the only format any platform documents)."""


@dataclass(frozen=True, slots=True)
class Identifier:
    lower: bool = False
    max_length: int | None = None


@dataclass(frozen=True, slots=True)
class ClickId:
    """Sent exactly as received (trimmed): click ids and cookies are case-sensitive."""


Spec = Email | Phone | Text | State | Zip | Country | Gender | BirthDate | Identifier | ClickId


@dataclass(frozen=True, slots=True)
class Rule:
    name: str  # the platform's field name
    spec: Spec
    hashed: bool
    as_list: bool = False  # the platform's schema has an array here


@dataclass(frozen=True, slots=True)
class Platform:
    fields: dict[str, Rule]
    # Meta's capi-param-builder appends ".XXXXXXXX" to hashes; Meta takes them as they are.
    param_builder_suffix: bool = False


def hashed(name: str, spec: Spec, *, as_list: bool = False) -> Rule:
    return Rule(name, spec, hashed=True, as_list=as_list)


def clear(name: str, spec: Spec, *, as_list: bool = False) -> Rule:
    return Rule(name, spec, hashed=False, as_list=as_list)


# Meta's documented rules (1.3): lowercase, no punctuation, no spaces, accents kept. Meta's
# own param builder also removes spaces inside names, so "Mary Ann" → "maryann".
META_TEXT = Text()
GOOGLE_NAME = Text(keep="letters", spaces="single")  # "remove digits and symbols"
GOOGLE_STREET = Text(keep="alnum", spaces="single")  # "remove symbols", digits stay
LOWER_ONLY = Text(keep="printable", spaces="single")  # Pinterest names: "lowercase"
DISPLAY = Text(lower=False, keep="printable", spaces="single")  # shown to people: case kept
NORTH_AMERICA = frozenset({"US", "CA"})

PLATFORMS: dict[str, Platform] = {
    "meta": Platform(
        param_builder_suffix=True,
        fields={
            "email": hashed("em", Email()),
            "phone": hashed("ph", Phone(plus=False)),
            "first_name": hashed("fn", META_TEXT),
            "last_name": hashed("ln", META_TEXT),
            "city": hashed("ct", META_TEXT),
            # Meta documents codes for US states only; other states keep their cleaned name.
            "state": hashed("st", State()),
            # UK: Meta says "area, district and sector" but its example (m11ae) is the whole
            # postcode, as the Pixel hashes it from a form; the whole postcode it is.
            "zip": hashed("zp", Zip()),
            "country": hashed("country", Country()),
            "date_of_birth": hashed("db", BirthDate()),
            "gender": hashed("ge", Gender()),
            # Hashing is "recommended"; the SDK sends it raw, the reference says hash it like
            # the Pixel does. Trim+lowercase is what Meta's param builder does to it.
            "external_id": hashed("external_id", Identifier(lower=True)),
            "fbc": clear("fbc", ClickId()),
            "fbp": clear("fbp", ClickId()),
        },
    ),
    # Google Ads names; GA4 user_data and Data Manager take the same values under their own
    # names (sha256_email_address, address[].city, ...; email_address, address.region_code).
    "google": Platform(
        fields={
            # Docs: gmail dots only. The +tag stays: Google's sample strips it on every domain,
            # its own docstring and the docs do not (reference 2.3).
            "email": hashed("hashed_email", Email(gmail_dots=True)),
            "phone": hashed("hashed_phone_number", Phone(plus=True)),
            "first_name": hashed("address_info.hashed_first_name", GOOGLE_NAME),
            "last_name": hashed("address_info.hashed_last_name", GOOGLE_NAME),
            "street": hashed("address_info.hashed_street_address", GOOGLE_STREET),
            "city": clear("address_info.city", GOOGLE_NAME),
            # Google Ads: "State code of the address".
            "state": clear("address_info.state", State(NORTH_AMERICA, GOOGLE_NAME)),
            "zip": clear("address_info.postal_code", Zip("google")),
            # Case is not documented; ISO codes are uppercase and Data Manager's region_code is.
            "country": clear("address_info.country_code", Country(upper=True)),
            "gclid": clear("gclid", ClickId()),
            "gbraid": clear("gbraid", ClickId()),
            "wbraid": clear("wbraid", ClickId()),
        },
    ),
    "tiktok": Platform(
        fields={
            "email": hashed("email", Email()),
            "phone": hashed("phone", Phone(plus=True)),
            # Unconfirmed: Segment lowercases, RudderStack only trims; trimming keeps the id.
            "external_id": hashed("external_id", Identifier()),
            # Unconfirmed (newer docs list the fields, not their rules): what Segment does.
            "first_name": hashed("first_name", Text(keep="printable")),
            "last_name": hashed("last_name", Text(keep="printable")),
            "zip": hashed("zip_code", Zip()),
            "city": clear("city", Text(keep="alnum")),
            "state": clear("state", State(frozenset(), Text(keep="alnum"))),
            "country": clear("country", Country()),
            "ttclid": clear("ttclid", ClickId()),
            "ttp": clear("ttp", ClickId()),
        },
    ),
    "snapchat": Platform(
        fields={
            "email": hashed("em", Email(), as_list=True),
            "phone": hashed("ph", Phone(plus=False), as_list=True),
            # Unconfirmed beyond email/phone: Meta's rules, which Snap's v3 API mirrors.
            "first_name": hashed("fn", META_TEXT),
            "last_name": hashed("ln", META_TEXT),
            "city": hashed("ct", META_TEXT),
            "state": hashed("st", State()),
            "zip": hashed("zp", Zip()),
            "country": hashed("country", Country()),
            "date_of_birth": hashed("db", BirthDate()),
            "gender": hashed("ge", Gender()),
            "external_id": hashed("external_id", Identifier(lower=True)),  # unconfirmed: Segment
            "sccid": clear("sc_click_id", ClickId()),
            "scid": clear("sc_cookie1", ClickId()),
        },
    ),
    "pinterest": Platform(
        fields={
            "email": hashed("em", Email(), as_list=True),
            "phone": hashed("ph", Phone(plus=False), as_list=True),
            "first_name": hashed("fn", LOWER_ONLY, as_list=True),
            "last_name": hashed("ln", LOWER_ONLY, as_list=True),
            "city": hashed("ct", META_TEXT, as_list=True),
            "state": hashed("st", State(NORTH_AMERICA), as_list=True),
            # "Digits only" would turn "SW1A 1AA" into "11"; US ZIPs are digits anyway.
            "zip": hashed("zp", Zip(), as_list=True),
            "country": hashed("country", Country(), as_list=True),
            "date_of_birth": hashed("db", BirthDate(), as_list=True),
            "gender": hashed("ge", Gender(allow_n=True), as_list=True),
            "external_id": hashed("external_id", Identifier(), as_list=True),  # rule unconfirmed
            "epik": clear("click_id", ClickId()),
        },
    ),
    "reddit": Platform(
        fields={
            "email": hashed("email", Email(strip_tag=True, alnum_local=True)),
            "phone": hashed("phone_number", Phone(plus=True)),
            "external_id": hashed("external_id", Identifier()),  # rule unconfirmed
            "rdt_cid": clear("click_id", ClickId()),
        },
    ),
    "linkedin": Platform(
        fields={
            "email": hashed("SHA256_EMAIL", Email()),
            "li_fat_id": clear("LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID", ClickId()),
            # userInfo is plain text matched on names: case kept.
            "first_name": clear("userInfo.firstName", DISPLAY),
            "last_name": clear("userInfo.lastName", DISPLAY),
            "country": clear("userInfo.countryCode", Country(upper=True)),  # case unconfirmed
            "external_id": clear("externalIds", Identifier(), as_list=True),  # unconfirmed
        },
    ),
    "microsoft": Platform(
        fields={
            "email": hashed("em", Email()),
            "phone": hashed("ph", Phone(plus=False)),  # "digits only"; with country code
            "external_id": clear("externalId", Identifier()),
            "anonymous_id": clear("anonymousId", Identifier()),
            "msclkid": clear("msclkid", ClickId()),
        },
    ),
    # Klaviyo keeps a profile people read: plain values, names and places as written.
    "klaviyo": Platform(
        fields={
            "email": clear("email", Email()),
            "phone": clear("phone_number", Phone(plus=True)),
            "external_id": clear("external_id", Identifier(max_length=255)),
            "anonymous_id": clear("anonymous_id", Identifier()),
            "first_name": clear("first_name", DISPLAY),
            "last_name": clear("last_name", DISPLAY),
            "street": clear("location.address1", DISPLAY),
            "city": clear("location.city", DISPLAY),
            "state": clear("location.region", DISPLAY),
            "zip": clear("location.zip", DISPLAY),
            "country": clear("location.country", DISPLAY),
        },
    ),
}

# --- reference data ---------------------------------------------------------------------------

GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})

# Names ISO 3166 (pycountry) does not carry, keyed as normalize._key spells them.
COUNTRY_ALIASES: dict[str, str] = {
    "uk": "GB", "greatbritain": "GB", "britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northernireland": "GB", "america": "US", "russia": "RU", "turkey": "TR",
    "holland": "NL", "southkorea": "KR", "northkorea": "KP", "ivorycoast": "CI",
    "czechrepublic": "CZ", "vatican": "VA", "burma": "MM", "swaziland": "SZ",
    "macedonia": "MK", "capeverde": "CV", "eastimor": "TL", "uae": "AE",
}

# Subdivision names ISO 3166-2 spells differently from common use.
STATE_ALIASES: dict[str, dict[str, str]] = {
    "US": {"washingtondc": "DC"},
    "CA": {"newfoundland": "NL", "pei": "PE", "yukonterritory": "YT"},
}

# Gender spellings → m / f / n, keyed as normalize._key spells them ("Non-binary" → "nonbinary").
GENDERS: dict[str, str] = {
    **dict.fromkeys(["m", "male", "man", "boy", "mr", "he", "him", "masculine",
                     "mann", "mannlich", "homme", "masculin", "hombre", "masculino"], "m"),
    **dict.fromkeys(["f", "female", "woman", "girl", "mrs", "ms", "miss", "she", "her",
                     "feminine", "frau", "weiblich", "femme", "feminin", "mujer",
                     "femenino"], "f"),
    **dict.fromkeys(["n", "nonbinary", "nb", "enby", "x"], "n"),
}

MONTHS: dict[str, int] = {
    name: number
    for number, names in enumerate(
        [("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"),
         ("may",), ("june", "jun"), ("july", "jul"), ("august", "aug"),
         ("september", "sep", "sept"), ("october", "oct"), ("november", "nov"),
         ("december", "dec")],
        start=1,
    )
    for name in names
}

# Words a written date may carry besides its month ("16th of February 1997").
DATE_FILLERS = frozenset({"st", "nd", "rd", "th", "of"})

# Where "02/03/1990" is February 3rd. Everywhere else we know of writes the day first;
# Canada writes both, so there a date with both parts ≤ 12 is ambiguous.
MONTH_FIRST = frozenset({"US", "PR", "GU", "VI", "AS", "MP", "UM", "PH", "FM", "MH", "PW"})
EITHER_ORDER = frozenset({"CA"})
