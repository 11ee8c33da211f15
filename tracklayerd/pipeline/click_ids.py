"""Click IDs and browser identifiers: fill in what the sender left out, drop what is broken. Pure.

Sources, most trusted first: what the sender set explicitly on the identity (never
overwritten), the query strings of ``context.page_url`` and then ``context.referrer``, then
top-level ``properties`` keys (cookie names such as ``_fbp`` included). A Meta ``fbc`` is
built from an ``fbclid`` when the sender had no ``_fbc`` cookie to give.

Nothing here raises on bad input: a value that is obviously broken is dropped and the
event gets a warning, because a malformed click id can cost more than a missing one
(Google rejects the whole conversion row with ``UNPARSEABLE_GCLID``; Meta reports invalid
match keys). Warnings never quote the value: they are grouped and counted across events,
and click ids and IPs are personal data.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec

from tracklayerd.events import Context, Event, Identity

Origin = Literal["sender", "page_url", "referrer", "properties", "fbclid"]

# Identity fields are Str1k: a longer value would make the stored event undecodable.
MAX_LENGTH = 1024


@dataclass(frozen=True)
class Where:
    """Where one identifier may be found besides the identity itself (names match any case)."""

    # Query parameters the platform appends to the landing URL. Cookies never travel in URLs,
    # so fbc, fbp, ttp and scid have none.
    url: tuple[str, ...]
    # Top-level property keys: the field's own name and the browser cookie's name, so a
    # snippet can forward cookies as it reads them.
    properties: tuple[str, ...]


CLICK_IDS: dict[str, Where] = {
    "fbc": Where(url=(), properties=("fbc", "_fbc")),
    "fbp": Where(url=(), properties=("fbp", "_fbp")),
    "fbclid": Where(url=("fbclid",), properties=("fbclid",)),
    "gclid": Where(url=("gclid",), properties=("gclid",)),
    "gbraid": Where(url=("gbraid",), properties=("gbraid",)),
    "wbraid": Where(url=("wbraid",), properties=("wbraid",)),
    "ttclid": Where(url=("ttclid",), properties=("ttclid",)),
    "ttp": Where(url=(), properties=("ttp", "_ttp")),
    # Snapchat appends `ScCid`; matching ignores case, so `sccid` works too.
    "sccid": Where(url=("ScCid",), properties=("ScCid",)),
    "scid": Where(url=(), properties=("scid", "_scid")),
    "epik": Where(url=("epik",), properties=("epik", "_epik")),
    "rdt_cid": Where(url=("rdt_cid",), properties=("rdt_cid",)),
    "li_fat_id": Where(url=("li_fat_id",), properties=("li_fat_id",)),
    "msclkid": Where(url=("msclkid",), properties=("msclkid",)),
}

# Meta's formats (reference 1.3): fbc = fb.<subdomain index>.<creation ms>.<fbclid>, fbp =
# fb.<subdomain index>.<creation ms>.<random number>. Values from Meta's parameter builder
# carry one more segment, its "appendix" (8 base64url characters, or a legacy 2-character
# language token), which Meta accepts as is. Like the parameter builder's own cookie check,
# the fbclid part may not contain dots: five segments at most.
_APPENDIX = r"(?:\.(?:[A-Za-z0-9_-]{8}|[A-Za-z0-9]{2}))?"
FBC_FORMAT = re.compile(r"fb\.[0-9]+\.[0-9]+\.[^.\s]+" + _APPENDIX)
FBP_FORMAT = re.compile(r"fb\.[0-9]+\.[0-9]+\.[0-9]+" + _APPENDIX)
# What unset JavaScript variables and unrendered templates send instead of an id.
PLACEHOLDERS = frozenset({"undefined", "null", "none", "nan", "false", "true", "0",
                          "[object object]"})
# No platform's click id contains these; a value that does is a placeholder or a mangled URL.
_NOT_IN_IDS = re.compile(r"[^\x21-\x7e]|[{}\[\]<>\"'`\\|^]")


def _token_problem(value: str) -> str | None:
    if not value:
        return "is empty"
    if len(value) > MAX_LENGTH:
        return f"is longer than {MAX_LENGTH} characters"
    if value.casefold() in PLACEHOLDERS:
        return "is a placeholder, not an id"
    if _NOT_IN_IDS.search(value):
        return "has characters no click id has (spaces, braces, non-ASCII)"
    return None


def _format_problem(pattern: re.Pattern[str], shape: str) -> Callable[[str], str | None]:
    def problem(value: str) -> str | None:
        if _token_problem(value) is not None or not pattern.fullmatch(value):
            return f"is not in Meta's format {shape}"
        return None
    return problem


# Field → what is wrong with a value (None: plausible). Only Meta documents a format; the
# other platforms' ids are opaque, so only what no id can be is refused.
CHECKS: dict[str, Callable[[str], str | None]] = {
    name: _token_problem for name in CLICK_IDS
} | {
    "fbc": _format_problem(FBC_FORMAT, "fb.<n>.<creation ms>.<fbclid>"),
    "fbp": _format_problem(FBP_FORMAT, "fb.<n>.<creation ms>.<random number>"),
}


def click_id_problem(field: str, value: str) -> str | None:
    """What is wrong with a value for an Identity click-id field, or None if it is plausible."""
    return CHECKS[field](value)


# Not the user's address: a proxy or load balancer forwarded its own. The ranges Meta's
# parameter builder refuses as a client IP (private, loopback, link-local), plus the
# unspecified and multicast addresses, which no client has. Documentation ranges pass.
_NOT_PUBLIC = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
    "0.0.0.0/32", "224.0.0.0/4", "::/128", "::1/128", "fe80::/10", "fc00::/7", "ff00::/8",
))


@lru_cache(maxsize=4096)
def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The parsed address, None if it is none. Cached: parsing costs ~20 µs, and one
    event's IP is read by several steps and destinations."""
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def canonical_ip(value: str) -> str | None:
    """The address in its canonical text form ("2001:DB8::1" → "2001:db8::1"); None if
    it is no IPv4 or IPv6 address."""
    address = _address(value)
    return None if address is None else str(address)


def ip_problem(value: str) -> str | None:
    """What is wrong with a client IP, or None if it is a usable IPv4 or IPv6 address."""
    address = _address(value)
    if address is None:
        return "is not an IPv4 or IPv6 address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in _NOT_PUBLIC if network.version == address.version):
        return "is a private, loopback or link-local address (a proxy's, not the user's)"
    return None


@dataclass(frozen=True)
class ClickIds:
    """The event with its identifiers filled in, and where each one it now carries came from."""

    event: Event
    sources: dict[str, Origin]


def extract_click_ids(event: Event) -> Event:
    """The event with click ids, browser ids and client IP filled in or dropped when broken.

    Explicit identity fields are never overwritten, only dropped (with a warning) when
    obviously broken; ``properties`` is never changed. Returns the same object when nothing
    changes.
    """
    return find_click_ids(event).event


def find_click_ids(event: Event) -> ClickIds:
    """:func:`extract_click_ids`, also saying where each click id came from."""
    found = _Found()
    found.from_identity(event.user)
    found.from_urls(event.context.page_url, event.context.referrer)
    found.from_properties(event.properties)
    found.complete_fbc(event)
    changes: dict[str, Any] = {f: found.values.get(f) for f in CLICK_IDS
                               if found.values.get(f) != getattr(event.user, f)}
    context = _checked_ip(event.context, found.warnings)
    if not changes and not found.warnings and context is event.context:
        return ClickIds(event, found.sources)
    user: Identity = msgspec.structs.replace(event.user, **changes) if changes else event.user
    return ClickIds(
        msgspec.structs.replace(event, user=user, context=context,
                                warnings=[*event.warnings, *found.warnings]),
        found.sources,
    )


@dataclass
class _Found:
    """What has been found so far; each source only fills what is still missing."""

    values: dict[str, str] = field(default_factory=dict)
    sources: dict[str, Origin] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def from_identity(self, user: Identity) -> None:
        for name in CLICK_IDS:
            value = getattr(user, name)
            if value is None:
                continue
            value = value.strip()
            if (problem := CHECKS[name](value)) is not None:
                self.warnings.append(f"user.{name} {problem}: dropped")
            else:
                self.values[name], self.sources[name] = value, "sender"

    def from_urls(self, page_url: str | None, referrer: str | None) -> None:
        urls: tuple[tuple[Origin, str | None], ...] = (
            ("page_url", page_url), ("referrer", referrer))
        for origin, url in urls:
            if not url:
                continue
            params = _query_params(url)
            if params is None:
                self.warnings.append(
                    f"context.{origin} does not parse as a URL: no click ids read from it")
                continue
            if origin == "referrer" and not _same_site(page_url, url):
                # The previous page was another site: a click id on its URL is a click on
                # that site's ad, which the platform would reject or misattribute here.
                self.warnings.extend(
                    f"context.referrer is another site: its {name} was not used"
                    for name, where in CLICK_IDS.items()
                    if name not in self.values and _all(params, where.url))
                continue
            for name, where in CLICK_IDS.items():
                if name in self.values or not (values := _all(params, where.url)):
                    continue
                if (count := len(set(values))) > 1:
                    # Browser tags read URLSearchParams.get(): the first. Taking the same one
                    # keeps the server's value equal to the pixel's (Meta flags mismatches).
                    self.warnings.append(
                        f"context.{origin} has {count} different {name} values: used the first")
                self._take(name, values[0], origin)

    def from_properties(self, properties: Mapping[str, Any]) -> None:
        if not properties:
            return
        folded: dict[str, Any] | None = None  # built once, only if an exact key misses
        for name, where in CLICK_IDS.items():
            if name in self.values:
                continue
            value = _exact(properties, where.properties)
            if value is None:
                if folded is None:
                    folded = {}
                    for key, item in properties.items():
                        if isinstance(item, str) and item.strip():
                            folded.setdefault(key.casefold(), item)
                value = _exact(folded, _folded(where.properties))
            if value is not None:
                self._take(name, value, "properties")

    def complete_fbc(self, event: Event) -> None:
        fbc, fbclid = self.values.get("fbc"), self.values.get("fbclid")
        if fbclid is None:
            return
        if fbc is None:
            fbc = build_fbc(fbclid, event)
            if CHECKS["fbc"](fbc) is None:
                self.values["fbc"], self.sources["fbc"] = fbc, "fbclid"
            else:
                self.warnings.append("fbclid cannot form a valid fbc: no fbc")
        elif not _same_click(fbc, fbclid):
            self.warnings.append(
                f"the fbc (from {self.sources['fbc']}) is for another click than the fbclid "
                f"(from {self.sources['fbclid']}): kept the fbc (is the _fbc cookie stale?)")

    def _take(self, name: str, raw: str, origin: Origin) -> None:
        value = raw.strip()
        if (problem := CHECKS[name](value)) is not None:
            where = "properties" if origin == "properties" else f"context.{origin}"
            self.warnings.append(f"{where} has a {name} that {problem}: not used")
        else:
            self.values[name], self.sources[name] = value, origin


def _checked_ip(context: Context, warnings: list[str]) -> Context:
    if context.ip is None:
        return context
    ip = context.ip.strip()
    if (problem := ip_problem(ip)) is not None:
        warnings.append(f"context.ip {problem}: dropped")
        return msgspec.structs.replace(context, ip=None)
    return context if ip == context.ip else msgspec.structs.replace(context, ip=ip)


def build_fbc(fbclid: str, event: Event) -> str:
    """Meta's fbc for a click seen on this event.

    Meta wants the creation time to be when the fbclid was first seen. The earliest sighting
    tracklayerd can vouch for without server-side state is the event itself, so it is the
    event's timestamp in ms: never after the event_time sent with it, and the same on every
    replay of the inbox, so a reprocessed event carries the same fbc. Subdomain index 1 is
    what Meta says to use when the value is built on a server.
    """
    return f"fb.1.{int(event.timestamp.timestamp() * 1000)}.{fbclid}"


def _same_click(fbc: str, fbclid: str) -> bool:
    parts = fbc.split(".")
    return len(parts) >= 4 and parts[3] == fbclid


@lru_cache(maxsize=4096)
def _query_params(url: str) -> tuple[tuple[str, str], ...] | None:
    """The URL's query parameters (names casefolded, values decoded), None if it is no URL.

    Hash-routed single-page apps keep their query after the ``#``: those parameters count,
    after the real query's. A ``+`` stays a ``+``: click ids are opaque tokens (some are
    base64), never form-encoded text, so it cannot stand for a space.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket in the host
        return None
    queries = [parts.query]
    if "?" in parts.fragment:
        queries.append(parts.fragment.split("?", 1)[1])
    params = []
    for query in queries:
        for pair in query.split("&"):
            name, _, value = pair.partition("=")
            # `&amp;` from a URL copied out of HTML leaves `amp;` on the next name.
            name = unquote(name).strip().casefold().removeprefix("amp;")
            if name and value:
                params.append((name, unquote(value)))
    return tuple(params)  # cached (a landing page's URL repeats): immutable


def _all(params: tuple[tuple[str, str], ...], names: tuple[str, ...]) -> list[str]:
    if not params:
        return []
    wanted = _folded_set(names)
    return [v for n, v in params if n in wanted and v.strip()]


@cache
def _folded(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n.casefold() for n in names)


@cache
def _folded_set(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_folded(names))


def _exact(properties: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if isinstance(value := properties.get(key), str) and value.strip():
            return value
    return None


def _same_site(page_url: str | None, referrer: str) -> bool:
    """Whether the referrer is the page's own site (unknown counts as the same).

    Without a public-suffix list, "same site" is the same host or one a subdomain of the
    other, ignoring ``www.``: strict enough never to take another site's click, at the cost
    of missing one that crossed from shop.example.com to pay.example.com.
    """
    page, ref = _host(page_url), _host(referrer)
    if page is None or ref is None:
        return True
    return page == ref or page.endswith("." + ref) or ref.endswith("." + page)


def _host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.removeprefix("www.") if host else None
