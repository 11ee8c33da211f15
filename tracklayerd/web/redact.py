"""Personal data out of JSON before it is shown: pure, total, structure-preserving.

The trace and the status page show what senders sent and what platforms were sent. Operators
need the shape and the non-personal fields to debug a mapping; they do not need a customer's
email address on their screen. :func:`redact` replaces personal values with markers such as
``"[redacted: email]"`` and keeps everything else, including SHA-256 hashes (what the
platforms are sent is already hashed, and a hash is what an operator compares).

Two kinds of rules:

* by key: a value under a key that names personal data (``email``, ``firstName``,
  ``billing_address.city``, ``date_of_birth``, ``client_ip_address`` ...), matched on the
  key's words so ``customerEmail`` and ``ship_zip`` count and ``velocity`` does not; ``name``
  only inside a person-like object (``traits``, ``user``, ``customer``, addresses), since
  elsewhere it is a product or page name;
* by value, anywhere: email addresses (also inside URLs and other text), strings that are
  an IP address or a list of them, and strings formatted like phone numbers.

It never raises on anything ``msgspec.json.decode`` can return.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

# Past this depth a subtree is replaced whole: no recursion limit is reached on hostile input.
MAX_DEPTH = 64
TOO_DEEP = "[not shown: nested too deep]"

EMAIL = "email"
PHONE = "phone"
NAME = "name"
ADDRESS = "address"
BIRTH = "date of birth"
IP = "ip"
GENDER = "gender"
SECRET = "secret"

# Keys are compared as their lowercased words joined, from the longest word suffix down:
# "billing_first_name" tries "billingfirstname", "firstname", "name".
_KEYS: dict[str, str] = {
    **dict.fromkeys(["email", "emails", "emailaddress", "mail"], EMAIL),
    **dict.fromkeys(["phone", "phones", "phonenumber", "mobile", "mobilephone",
                     "mobilenumber", "telephone", "tel", "cellphone", "homephone"], PHONE),
    **dict.fromkeys(["firstname", "lastname", "fullname", "givenname", "familyname",
                     "middlename", "surname", "username", "displayname", "maidenname"], NAME),
    **dict.fromkeys(["street", "streetaddress", "address", "addressline", "addresses",
                     "city", "zip", "zipcode", "postal", "postalcode", "postcode"], ADDRESS),
    **dict.fromkeys(["birthday", "birthdate", "dateofbirth", "dob"], BIRTH),
    **dict.fromkeys(["ip", "ipaddress", "ips", "remoteaddr", "forwardedfor", "xforwardedfor"],
                    IP),
    **dict.fromkeys(["gender", "sex"], GENDER),
    **dict.fromkeys(["password", "passwd"], SECRET),
}
# "name" is a person's name only inside one of these (by any word of the enclosing key).
_PERSON_WORDS = frozenset({
    "user", "users", "traits", "identity", "customer", "customers", "billing", "shipping",
    "address", "addresses", "contact", "contacts", "person", "profile", "buyer", "recipient",
    "member", "subscriber", "attendee", "guest",
})
# Inside a personal object (`"phone": {...}`, `"address": {...}`) every scalar is personal
# except these, which say nothing about the person on their own.
_NEUTRAL_PARTS = frozenset({
    "country", "countrycode", "state", "statecode", "province", "provincecode", "region",
    "type", "kind", "label", "primary", "default", "verified", "hashed",
})

_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# Unicode-aware (\w): "jörg@bücher.de" is an address too. "%40" is "@" escaped in a URL;
# "/", "=", "?" and "&" are legal in a local part but in practice delimit one in a URL.
_EMAIL = re.compile(
    r"[\w.!#$%'*+^`{|}~-]+(?:@|%40)[^\W_](?:[\w-]{0,61}[^\W_])?(?:\.[^\W_](?:[\w-]{0,61}"
    r"[^\W_])?)+"
)
# In running text only the international form is a safe guess ("call +1 415 555 0100").
_PHONE_IN_TEXT = re.compile(r"(?<![\w+])\+\d[\d\s().\-]{5,}\d")
_PHONE = re.compile(r"\s*(?:\+|00)?[\d(][\d\s().\-/]{5,}\d\s*")
# Formatting that makes a digit string a phone number rather than an id or an amount.
_PHONE_MARK = re.compile(r"^\s*(?:\+|00)|[\s()]|\d[-.]\d+[-.]\d")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def marker(category: str) -> str:
    return f"[redacted: {category}]"


def redact(value: Any) -> Any:
    """A copy of decoded JSON with personal data replaced; the structure is kept."""
    return _walk(value, None, False, 0)


def redact_text(text: str) -> str:
    """A string with what looks personal in it replaced (for text that is not JSON)."""
    return _by_value(text)


def key_category(key: str, in_person: bool = False) -> str | None:
    """The kind of personal data a key names, if any. `in_person`: the key is inside an
    object about a person, where a bare ``name`` is that person's name."""
    words = [w.lower() for w in _WORDS.findall(key)]
    while len(words) > 1 and words[-1].isdigit():  # address1, line_2
        words.pop()
    for start in range(len(words)):
        found = _KEYS.get("".join(words[start:]))
        if found is not None:
            return found
    if in_person and words == ["name"]:
        return NAME
    return None


def _is_person_key(key: str) -> bool:
    return any(w.lower() in _PERSON_WORDS for w in _WORDS.findall(key))


def _walk(value: Any, category: str | None, in_person: bool, depth: int) -> Any:
    if depth > MAX_DEPTH:
        return TOO_DEEP
    if isinstance(value, dict):
        result: dict[Any, Any] = {}
        for key, item in value.items():
            name = key if isinstance(key, str) else str(key)
            own = key_category(name, in_person)
            if own is None and category is not None:
                own = None if _normal(name) in _NEUTRAL_PARTS else category
            shown = _unique(result, _by_value(name))
            result[shown] = _walk(item, own, _is_person_key(name), depth + 1)
        return result
    if isinstance(value, list):
        return [_walk(item, category, in_person, depth + 1) for item in value]
    if isinstance(value, bool) or value is None:
        # Presence and flags are not personal; showing them is what makes the trace useful.
        return value
    if isinstance(value, str):
        if category is not None and not _SHA256.fullmatch(value.strip()):
            return marker(category) if value else value
        return _by_value(value)
    if isinstance(value, int | float):
        return marker(category) if category is not None else value
    return _by_value(str(value))


def _by_value(text: str) -> str:
    stripped = text.strip()
    if not stripped:
        return text
    if _is_ips(stripped):
        return marker(IP)
    if _looks_like_phone(stripped):
        return marker(PHONE)
    if "@" in text or "%40" in text:
        text = _EMAIL.sub(marker(EMAIL), text)
    if "+" in text:
        text = _PHONE_IN_TEXT.sub(_phone_in_text, text)
    return text


def _phone_in_text(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return marker(PHONE) if 7 <= digits <= 15 else match.group()


def _is_ips(text: str) -> bool:
    """An IP address, or a comma-separated list of them (X-Forwarded-For)."""
    if not any(c in text for c in ".:"):
        return False
    for part in text.split(","):
        try:
            ipaddress.ip_address(part.strip())
        except ValueError:
            return False
    return True


def _looks_like_phone(text: str) -> bool:
    if not _PHONE.fullmatch(text) or _DATE.search(text) or not _PHONE_MARK.search(text):
        return False
    digits = sum(c.isdigit() for c in text)
    return 7 <= digits <= 15


def _normal(key: str) -> str:
    return "".join(w.lower() for w in _WORDS.findall(key))


def _unique(taken: dict[Any, Any], key: str) -> str:
    """Redacting two keys to the same marker must not drop one of them."""
    if key not in taken:
        return key
    n = 2
    while f"{key} #{n}" in taken:
        n += 1
    return f"{key} #{n}"
