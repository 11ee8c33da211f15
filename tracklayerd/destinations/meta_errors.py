"""Meta Graph API answers → outcomes: the one table (reference/destinations.md §1.7).

Graph errors often arrive as HTTP 400 even when they are throttling, so the HTTP status says
little: the decision is taken on ``error.code`` / ``error.error_subcode`` / ``is_transient``
and the status is only the fallback for codes the table does not know.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec

from tracklayerd.destinations.base import (
    CONFIG_PAUSE_SECS,
    Outcome,
    Rejected,
    Reply,
    RetryLater,
    outcome_for_status,
)

# Meta publishes no Retry-After for throttling; its limits are counted over rolling windows of
# minutes, so a retry after the scheduler's first backoff step (seconds) would only be throttled
# again and count against the quota.
THROTTLED_AFTER_SECS = 60.0

# Meta's words are kept, but not without bound: they end up in every dead letter of the batch.
_MAX_MESSAGE_CHARS = 1000


class GraphError(msgspec.Struct, kw_only=True):
    message: str = ""
    type: str | None = None
    code: int | None = None
    error_subcode: int | None = None
    is_transient: bool | None = None
    error_user_title: str | None = None
    error_user_msg: str | None = None
    fbtrace_id: str | None = None


class _Envelope(msgspec.Struct):
    error: GraphError


class Kind(enum.Enum):
    TRANSIENT = "transient"  # may succeed later: retry with the scheduler's backoff
    THROTTLED = "throttled"  # rate limited: retry, after THROTTLED_AFTER_SECS at least
    # The request was refused for its content; with up to 1,000 events one bad event refuses
    # them all, so the scheduler splits the batch to find it.
    BAD_BATCH = "bad_batch"
    # Nothing in this destination's config can work (token, permissions, pixel id) until the
    # operator fixes it. The events are not at fault, so they are not dead-lettered: the
    # destination pauses (CONFIG_PAUSE_SECS, then the circuit breaker's doubling pauses) with
    # what to fix as the reason, and sends them once the config is fixed, within the horizon.
    CONFIG = "config"


@dataclass(frozen=True, slots=True)
class Rule:
    kind: Kind
    hint: str = ""  # what the operator must do; prefixed to Meta's words


_TOKEN = Rule(Kind.CONFIG, "access token invalid or expired: create a new system-user token "
              "(Events Manager → dataset → Settings → Conversions API → Generate access token) "
              "and update access_token")
_PERMISSION = Rule(Kind.CONFIG, "permission denied: the token's system user needs the dataset "
                   "(pixel) assigned with full control in Business Settings")

# (code, subcode) → rule; (code, None) applies to every subcode of that code not listed.
ERROR_TABLE: dict[tuple[int, int | None], Rule] = {
    (1, None): Rule(Kind.TRANSIENT),  # unknown error; RudderStack retries it (§1.7)
    (2, None): Rule(Kind.TRANSIENT),  # service temporarily unavailable
    (4, None): Rule(Kind.THROTTLED),  # application request limit reached
    (17, None): Rule(Kind.THROTTLED),  # user request limit reached
    (32, None): Rule(Kind.THROTTLED),  # page-level rate limit
    (613, None): Rule(Kind.THROTTLED),  # calls exceeded the rate limit
    # 80000-80014: "too many calls to this ad account" family (Marketing API throttling).
    **{(code, None): Rule(Kind.THROTTLED) for code in range(80000, 80015)},
    # Temporary, limit or policy-ish codes that RudderStack retries (§1.7).
    (341, None): Rule(Kind.TRANSIENT),
    (368, None): Rule(Kind.TRANSIENT),
    (5000, None): Rule(Kind.TRANSIENT),
    (21009, None): Rule(Kind.TRANSIENT),
    (100, 2804003): Rule(Kind.BAD_BATCH, "an event is older than Meta accepts (7 days; 62 for "
                         "physical_store)"),
    (100, 2804009): Rule(Kind.BAD_BATCH, "a Purchase has no value or currency"),
    (100, 33): Rule(Kind.CONFIG, "the dataset (pixel) does not exist or this token may not use "
                    "it: check pixel_id and that the token's system user has the dataset"),
    (100, None): Rule(Kind.BAD_BATCH),  # invalid parameter: some event in the request
    (190, None): _TOKEN,
    # Graph API error handling page: 102 is an expired session, 10 and 200-299 permissions.
    (102, None): _TOKEN,
    (10, None): _PERMISSION,
    **{(code, None): _PERMISSION for code in range(200, 300)},
}

# Code 100 is mostly about the events, but a wrong app_secret also answers 100, with this in
# its message; splitting the batch down to single events would dead-letter all of them slowly.
_APPSECRET_PROOF = Rule(Kind.CONFIG, "appsecret_proof rejected: app_secret is not the secret of "
                        "the app the access token belongs to (fix it or remove app_secret)")

_envelope_decoder = msgspec.json.Decoder(_Envelope)


def parse_error(body: str) -> GraphError | None:
    """The Graph error in a reply body; None when the body is not Meta's error envelope."""
    try:
        return _envelope_decoder.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def rule_for(error: GraphError) -> Rule | None:
    if error.code is None:
        return None
    if error.code == 100 and "appsecret_proof" in error.message:
        return _APPSECRET_PROOF
    return ERROR_TABLE.get((error.code, error.error_subcode)) or ERROR_TABLE.get((error.code, None))


def describe(error: GraphError) -> str:
    """Meta's words, verbatim: "Meta <code>/<subcode>: <message> (<user msg>) fbtrace_id=<id>"."""
    code = "?" if error.code is None else str(error.code)
    if error.error_subcode is not None:
        code += f"/{error.error_subcode}"
    text = f"Meta {code}: {error.message[:_MAX_MESSAGE_CHARS]}"
    if error.error_user_msg:
        text += f" ({error.error_user_msg[:_MAX_MESSAGE_CHARS]})"
    if error.fbtrace_id:
        text += f" fbtrace_id={error.fbtrace_id}"
    return text


def outcome_for_error(reply: Reply, error: GraphError, scrub: str = "") -> Outcome:
    """The outcome for every event of a request Meta answered with ``error``.

    ``scrub``: a secret that must not appear in the reason even if Meta echoes it.
    """
    reason = describe(error)
    if scrub:
        reason = reason.replace(scrub, "***")
    rule = rule_for(error)
    if error.is_transient or (rule is not None and rule.kind is Kind.TRANSIENT):
        return RetryLater(reason=reason, after_secs=reply.retry_after_secs, reply=reply)
    if rule is None:
        return outcome_for_status(reply, reason)
    if rule.hint:
        reason = f"{rule.hint}. {reason}"
    if rule.kind is Kind.THROTTLED:
        after = reply.retry_after_secs
        return RetryLater(reason=reason, reply=reply,
                          after_secs=THROTTLED_AFTER_SECS if after is None else after)
    if rule.kind is Kind.CONFIG:
        return RetryLater(reason=reason, after_secs=CONFIG_PAUSE_SECS, reply=reply)
    return Rejected(reason=reason, whole_batch=rule.kind is Kind.BAD_BATCH, reply=reply)
