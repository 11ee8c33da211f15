"""Strict TOML configuration, decoded once into msgspec Structs.

Unknown keys are errors naming their path; secrets resolve at load time and are redacted
everywhere; components are tagged by ``type``. The names here are tracklayerd's public
interface: rename nothing, add freely. Every option is documented in docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from tracklayerd.errors import ConfigError
from tracklayerd.secrets import Secret, Secrets, enc_hook, make_dec_hook

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_LISTEN = "127.0.0.1:8787"
DEFAULT_DATA_DIR = "tracklayerd-data"
T = TypeVar("T")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Strict):
    listen: str = DEFAULT_LISTEN
    # Peers whose X-Forwarded-For is believed (IPs or CIDRs of your reverse proxies).
    trusted_proxies: list[str] = []
    # How long in-flight requests may take to finish after SIGTERM.
    shutdown_grace_secs: float = 10.0
    # Bearer token (or Basic password) for the introspection pages under /-/ (trace, status).
    # Unset: they answer only to loopback clients, and only without trusted_proxies.
    admin_token: Secret | None = None


class StorageConfig(_Strict):
    # Relative paths resolve against the data dir (--data-dir, $TRACKLAYERD_DATA_DIR,
    # systemd's $STATE_DIRECTORY, else ./tracklayerd-data).
    path: str = "tracklayerd.sqlite3"
    # "full" fsyncs the WAL at every commit: a 200 survives power loss. "normal" survives a
    # process crash only. Group commit makes "full" cheap (see docs/operations.md).
    synchronous: Literal["full", "normal"] = "full"
    busy_timeout_ms: int = msgspec.field(default=5000)
    # A request waits at most this long for its commit, then gets 503 + Retry-After.
    commit_timeout_secs: float = 5.0
    # Events queued for the writer beyond this answer 503 + Retry-After (backpressure).
    max_pending_events: int = 50_000
    # The WAL is checkpointed in the background (never inside a request's COMMIT) after this
    # many written rows, or 1 s after the first write since the last checkpoint.
    checkpoint_rows: int = 10_000
    # Cap on the database size; beyond it writes fail and senders get 503 (None: no cap).
    max_db_bytes: int | None = None


class _SourceBase(_Strict, tag_field="type"):
    max_event_bytes: int = 32 * 1024
    max_request_bytes: int = 500 * 1024
    max_batch_events: int = 2500
    # Source event names and message types ("identify", "page", ...) to keep; empty keeps all.
    # Others are stored as dropped with the reason, never refused to the sender.
    allow: list[str] = []

    @property
    def authenticated(self) -> bool:
        raise NotImplementedError


class HttpApiSource(_SourceBase, tag="http_api"):
    """The native ingest API (`POST /v1/events`), authenticated by a bearer token."""

    # One token, or a list during a rotation. Absent: unauthenticated (loopback only).
    token: Secrets | None = None

    @property
    def authenticated(self) -> bool:
        return self.token is not None


class SegmentSource(_SourceBase, tag="segment"):
    """The Segment HTTP Tracking API (`/v1/track`, `/v1/batch`, `/v1/t`, ...)."""

    # One write key, or a list during a rotation. Absent: any key (loopback only).
    write_key: Secrets | None = None
    # Browser origins allowed by CORS ("*" for any); empty: no CORS headers.
    cors_origins: list[str] = []
    # Clock-skew correction trusts at most this much delay between an event and its upload.
    max_event_delay_secs: float = 30 * 86400

    @property
    def authenticated(self) -> bool:
        return self.write_key is not None


class SegmentWebhookSource(_SourceBase, tag="segment_webhook"):
    """Segment's Webhooks destination (classic or Actions) posting to `/ingest/<id>`."""

    max_request_bytes: int = 4 * 1024 * 1024
    max_batch_events: int = 4000
    # Verifies X-Signature / X-Segment-Signature (HMAC-SHA1 of the body).
    shared_secret: Secret | None = None
    # Alternatively (or also accepted): the exact Authorization header value(s) to expect.
    authorization: Secrets | None = None

    @property
    def authenticated(self) -> bool:
        return self.shared_secret is not None or self.authorization is not None


class RudderstackWebhookSource(_SourceBase, tag="rudderstack_webhook"):
    """RudderStack's Webhook destination posting to `/ingest/<id>`."""

    max_request_bytes: int = 4 * 1024 * 1024
    max_batch_events: int = 4000
    # The header RudderStack is configured to send, and its expected value(s).
    header: str = "Authorization"
    secret: Secrets | None = None

    @property
    def authenticated(self) -> bool:
        return self.secret is not None


Source = HttpApiSource | SegmentSource | SegmentWebhookSource | RudderstackWebhookSource
SOURCE_TYPES: dict[str, type[Source]] = {
    "http_api": HttpApiSource,
    "segment": SegmentSource,
    "segment_webhook": SegmentWebhookSource,
    "rudderstack_webhook": RudderstackWebhookSource,
}
WEBHOOK_SOURCES = (SegmentWebhookSource, RudderstackWebhookSource)


class MappingMatch(_Strict):
    # Source event names (track); a string or a list.
    event: str | list[str] = []
    # Message types: track, identify, page, screen, group, alias.
    type: str | list[str] = []
    # Property conditions: dotted path inside properties → required value.
    properties: dict[str, Any] = {}


class Mapping(_Strict):
    """One rule turning source events into a canonical event (docs/mappings.md)."""

    match: MappingMatch
    case_sensitive: bool = False
    # Paths inside properties, first present wins; empty: the built-in defaults.
    value: list[str] = []
    currency: list[str] = []
    order_id: list[str] = []
    items: list[str] = []


class PipelineConfig(_Strict):
    # Segment e-commerce v2/v1, B2B and GA4 names → canonical names, after your [mappings].
    builtin_mappings: bool = True


# Click IDs and browser ids go stale: a platform attributes a conversion to a click only within
# its attribution window, so an older one is not borrowed (docs/identity.md).
DEFAULT_IDENTITY_WINDOWS_DAYS = {
    "fbc": 7.0, "fbclid": 7.0, "ttclid": 28.0, "sccid": 28.0, "rdt_cid": 28.0, "epik": 30.0,
    "li_fat_id": 30.0, "gclid": 90.0, "gbraid": 90.0, "wbraid": 90.0, "msclkid": 90.0,
}


class IdentityConfig(_Strict):
    # Link identifiers seen together (identify, alias, track) and enrich later conversions.
    enabled: bool = True
    # How far back an identifier may be borrowed from an earlier event of the same person.
    lookback_days: float = 90.0
    # Shorter windows per identifier kind; merged over the defaults above.
    windows_days: dict[str, float] = {}
    # Links not seen for this long are deleted.
    retention_days: float = 180.0
    # A person with more linked identifiers than this is not grown further: a shared id
    # (a test account, a kiosk's anonymous id) must not glue strangers together.
    max_identifiers_per_person: int = 50
    # Country (ISO 3166-1 alpha-2) to read national phone numbers in when the event names
    # none. Unset: such numbers are dropped, never guessed.
    default_region: str | None = None

    def window_secs(self, kind: str) -> float:
        days = self.windows_days.get(kind, DEFAULT_IDENTITY_WINDOWS_DAYS.get(kind))
        return min(days if days is not None else self.lookback_days, self.lookback_days) * 86400


class DedupConfig(_Strict):
    """Business deduplication across sources (docs/dedup.md)."""

    enabled: bool = True
    # Canonical events deduplicated by order id; every other event by its event id.
    order_events: list[str] = msgspec.field(default_factory=lambda: ["purchase", "refund"])
    # How long a repeat counts as a duplicate: orders, and everything else.
    order_window_secs: float = 7 * 86400.0
    event_window_secs: float = 48 * 3600.0


class ConsentConfig(_Strict):
    """Region policy for consent-gated destinations (docs/consent.md)."""

    # Where a missing consent means "no": ISO 3166-1 alpha-2 countries, "CC-SUB"
    # subdivisions ("CA-QC"), and "EEA" / "EU" for those groups of countries.
    opt_in_regions: list[str] = msgspec.field(default_factory=lambda: ["EEA", "GB", "CH"])
    # Whether an event from an unknown place is treated as from an opt-in region.
    unknown_region: Literal["opt_in", "opt_out"] = "opt_out"
    # Categories every ad-platform destination requires when it sets no `consent` itself.
    ad_categories: list[str] = []
    # US states (2-letter codes) whose users get the platforms' limited-data-use flags.
    ldu_states: list[str] = []
    # A MaxMind DB file (GeoLite2-Country/City, DB-IP lite, ...): the user's region from
    # context.ip when the event names none. Relative paths resolve against the config file.
    geoip_database: str | None = None


class DestinationConfig(_Strict):
    """Fields every destination has; a destination type subclasses it with its own."""

    type: str
    mode: Literal["live", "observe", "off"] = "live"
    # Overrides the platform URL (tests, proxies, regional endpoints).
    endpoint: str | None = None
    # Canonical events this destination gets (e.g. ["purchase", "lead"]); empty: all. An
    # event not listed gets no delivery (refunds to a platform without refunds: leave it out).
    events: list[str] = []
    # Requests in flight at once to this destination (also its connection pool size).
    concurrency: int = 2
    # Events per request; unset: the platform's maximum. Lower it to keep requests small.
    max_batch_events: int | None = None
    # A partial batch waits up to this long for more events before it is sent.
    batch_linger_secs: float = 0.5
    # A request without an answer after this long counts as failed and is retried.
    timeout_secs: float = 10.0
    # A delivery still failing this long after its event was processed becomes a dead letter.
    retry_horizon_secs: float = 24 * 3600.0
    # Retries wait base * 2^(attempt-1), at most max, with jitter; a Retry-After wins.
    backoff_base_secs: float = 2.0
    backoff_max_secs: float = 600.0
    # After this many failed requests in a row, sending pauses (the circuit opens) for the
    # cooldown, doubling up to backoff_max_secs while the platform stays down.
    breaker_failures: int = 5
    breaker_cooldown_secs: float = 30.0
    # Consent categories this destination needs, all granted. None: [consent] ad_categories
    # for ad platforms, nothing otherwise; [] opts out of consent gating explicitly.
    consent: list[str] | None = None
    # Without consent: no delivery ("suppress"), or one without personal data ("limited").
    consent_denied: Literal["suppress", "limited"] = "suppress"


class Config(_Strict):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    sources: dict[str, Source] = {}
    destinations: dict[str, DestinationConfig] = {}
    # Canonical name → one rule, or a list of rules ([[mappings.<name>]]).
    mappings: dict[str, Mapping | list[Mapping]] = {}
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    identity: IdentityConfig = msgspec.field(default_factory=IdentityConfig)
    consent: ConsentConfig = msgspec.field(default_factory=ConsentConfig)
    dedup: DedupConfig = msgspec.field(default_factory=DedupConfig)
    # True only for the built-in dev mirror used when no config is given.
    embedded_default: bool = False

    def unauthenticated_sources(self) -> list[str]:
        return [sid for sid, src in self.sources.items() if not src.authenticated]


def _format_validation_error(exc: msgspec.ValidationError, prefix: str = "") -> str:
    message = str(exc)
    path = ""
    match = re.search(r" - at `\$(.*)`$", message)
    if match:
        path = match.group(1).lstrip(".")
        message = message[: match.start()]
    unknown = re.match(r"Object contains unknown field `(.+)`$", message)
    if unknown:
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        message = "unknown key"
    missing = re.match(r"Object missing required field `(.+)`$", message)
    if missing:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
        message = "required key is missing"
    full = ".".join(p for p in (prefix, path) if p)
    full = re.sub(r"\[(\d+)\]", r"[\1]", full)
    return f"{full}: {message}" if full else message


def parse_config(data: dict[str, Any], base_dir: Path) -> Config:
    """Validate a TOML document (already parsed) into a Config, or raise ConfigError."""
    from tracklayerd.destinations.registry import destination_can_send, destination_config_type

    dec_hook = make_dec_hook(base_dir)
    data = dict(data)
    raw_sources = data.pop("sources", {})
    raw_destinations = data.pop("destinations", {})
    if "embedded_default" in data:
        raise ConfigError("embedded_default: unknown key")
    try:
        config = msgspec.convert(data, Config, strict=True, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    config.sources = _convert_components("sources", raw_sources, _source_type, dec_hook)
    config.destinations = _convert_components(
        "destinations", raw_destinations, destination_config_type, dec_hook
    )
    for dest_id, destination in config.destinations.items():
        if destination.mode == "live" and not destination_can_send(destination.type):
            # Its deliveries would wait forever: nothing could ever send them.
            raise ConfigError(
                f"destinations.{dest_id}: type {destination.type!r} has no sending "
                "implementation registered (only its config and platform); use "
                'mode = "observe" or "off"')
    if config.consent.geoip_database is not None:
        geoip = Path(config.consent.geoip_database).expanduser()
        config.consent.geoip_database = str(geoip if geoip.is_absolute() else base_dir / geoip)
        from tracklayerd.geoip import GeoIP

        GeoIP(config.consent.geoip_database).close()  # fails here, with its path, if unusable
    _check_values(config)
    return config


def _source_type(type_name: str) -> type[Source] | None:
    return SOURCE_TYPES.get(type_name)


def _convert_components(
    section: str,
    raw: Any,
    type_for: Callable[[str], type[T] | None],
    dec_hook: Callable[[type, Any], Any],
) -> dict[str, T]:
    """Decode each `[section.<id>]` table by its `type`, with errors naming the full path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a table")
    result: dict[str, T] = {}
    for component_id, table in raw.items():
        where = f"{section}.{component_id}"
        if not ID_PATTERN.match(component_id):
            raise ConfigError(f"{where}: ids are 1-64 letters, digits, '_', '-' or '.', "
                              "starting with a letter or digit")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        type_name = table.get("type")
        if not isinstance(type_name, str):
            raise ConfigError(f"{where}.type: required key is missing")
        cls = type_for(type_name)
        if cls is None:
            raise ConfigError(f"{where}.type: unknown {section[:-1]} type {type_name!r}")
        try:
            result[component_id] = msgspec.convert(table, cls, strict=True, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            raise ConfigError(_format_validation_error(exc, where)) from None
    return result


CANONICAL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _check_values(config: Config) -> None:
    identity = config.identity
    for where, value in (("identity.lookback_days", identity.lookback_days),
                         ("identity.retention_days", identity.retention_days),
                         ("identity.max_identifiers_per_person",
                          identity.max_identifiers_per_person),
                         *((f"identity.windows_days.{k}", v)
                           for k, v in identity.windows_days.items())):
        if value <= 0:
            raise ConfigError(f"{where}: must be greater than 0")
    if identity.default_region is not None:
        from tracklayerd.pipeline.normalize import region_of

        region = region_of(identity.default_region)
        if region is None or len(identity.default_region) != 2:
            raise ConfigError(f"identity.default_region: {identity.default_region!r} is not "
                              "an ISO 3166-1 alpha-2 country code (e.g. \"GB\")")
        identity.default_region = region
    _check_consent(config)
    for name, rules in config.mappings.items():
        if not CANONICAL_NAME.match(name):
            raise ConfigError(
                f"mappings.{name}: canonical names are lowercase snake_case (e.g. purchase)"
            )
        for rule in rules if isinstance(rules, list) else [rules]:
            if not rule.match.event and not rule.match.type:
                raise ConfigError(f"mappings.{name}.match: needs an event name or a type")
    parse_listen(config.server.listen, "server.listen")
    for i, proxy in enumerate(config.server.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"server.trusted_proxies[{i}]: {proxy!r} is not an IP address or CIDR"
            ) from None
    positive = {
        "storage.busy_timeout_ms": config.storage.busy_timeout_ms,
        "storage.commit_timeout_secs": config.storage.commit_timeout_secs,
        "storage.max_pending_events": config.storage.max_pending_events,
        "storage.checkpoint_rows": config.storage.checkpoint_rows,
        "storage.max_db_bytes": 1 if config.storage.max_db_bytes is None
        else config.storage.max_db_bytes,
    }
    for sid, src in config.sources.items():
        positive[f"sources.{sid}.max_event_bytes"] = src.max_event_bytes
        positive[f"sources.{sid}.max_request_bytes"] = src.max_request_bytes
        positive[f"sources.{sid}.max_batch_events"] = src.max_batch_events
    positive["dedup.order_window_secs"] = config.dedup.order_window_secs
    positive["dedup.event_window_secs"] = config.dedup.event_window_secs
    for did, dest in config.destinations.items():
        if dest.batch_linger_secs < 0:
            raise ConfigError(f"destinations.{did}.batch_linger_secs: must be 0 or more")
        for option in ("concurrency", "timeout_secs", "retry_horizon_secs",
                       "backoff_base_secs", "backoff_max_secs", "breaker_failures",
                       "breaker_cooldown_secs"):
            positive[f"destinations.{did}.{option}"] = getattr(dest, option)
        if dest.max_batch_events is not None:
            positive[f"destinations.{did}.max_batch_events"] = dest.max_batch_events
    for where, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{where}: must be greater than 0")
    if config.server.shutdown_grace_secs < 0:
        raise ConfigError("server.shutdown_grace_secs: must be 0 or more")
    owners: dict[str, str] = {}
    for sid, src in config.sources.items():
        keys = getattr(src, "token", None) or getattr(src, "write_key", None) or ()
        for secret in keys:
            other = owners.setdefault(secret.reveal(), sid)
            if other != sid:
                raise ConfigError(
                    f"sources.{sid}: the same token or write key is also used by "
                    f"sources.{other}; a key must identify one source"
                )


def _check_consent(config: Config) -> None:
    """Region codes must be real ones: a typo would silently turn a policy off."""
    from tracklayerd.pipeline.consent import opt_in_region, us_state

    consent = config.consent
    for i, entry in enumerate(consent.opt_in_regions):
        region = opt_in_region(entry)
        if region is None:
            raise ConfigError(
                f"consent.opt_in_regions[{i}]: {entry!r} is not \"EEA\", \"EU\", an ISO 3166-1 "
                "alpha-2 country code (\"GB\") or an ISO 3166-2 subdivision code (\"CA-QC\")")
        consent.opt_in_regions[i] = region
    for i, entry in enumerate(consent.ldu_states):
        state = us_state(entry)
        if state is None:
            raise ConfigError(f"consent.ldu_states[{i}]: {entry!r} is not the 2-letter code of "
                              "a US state (\"CA\")")
        consent.ldu_states[i] = state
    lists = {"consent.ad_categories": consent.ad_categories}
    for did, dest in config.destinations.items():
        if dest.consent is not None:
            lists[f"destinations.{did}.consent"] = dest.consent
    for where, categories in lists.items():
        for i, category in enumerate(categories):
            if not category.strip() or len(category) > 128:
                raise ConfigError(f"{where}[{i}]: a consent category id is 1 to 128 "
                                  "characters, not blank")


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        return parse_config(data, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def default_config() -> Config:
    """The dev mirror used when no config is given: loopback, no authentication."""
    return Config(
        sources={"default": HttpApiSource(), "segment": SegmentSource(cors_origins=["*"])},
        embedded_default=True,
    )


def parse_listen(value: str, where: str = "listen") -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 picks a free port."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value)
    if not match:
        raise ConfigError(f"{where}: expected HOST:PORT (or [IPv6]:PORT), got {value!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ConfigError(f"{where}: port {port} is out of range")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_safety(config: Config, host: str) -> None:
    """Refuse to expose unauthenticated sources beyond this machine."""
    open_sources = config.unauthenticated_sources()
    if open_sources and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host}: source(s) {', '.join(open_sources)} accept events "
            "without credentials; set a token / write_key for each source, or listen on 127.0.0.1"
        )


def redacted(config: Config) -> dict[str, Any]:
    """The config as a plain dict with every secret redacted (for `check` and `/-/config`)."""
    result: dict[str, Any] = msgspec.to_builtins(config, enc_hook=enc_hook)
    for destination in result.get("destinations", {}).values():
        if isinstance(destination.get("endpoint"), str):
            destination["endpoint"] = redacted_url(destination["endpoint"])
    return result


def redacted_url(url: str) -> str:
    """The URL with any user:password and query values hidden (they are often credentials)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(redacted)"
    netloc = (f"***@{host}{port}" if parts.username or parts.password else parts.netloc)
    query = urlencode([(key, "***") for key, _ in parse_qsl(parts.query, keep_blank_values=True)],
                      safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
