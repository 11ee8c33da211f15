"""Secret values from config: inline strings, environment variables or files, always redacted.

A secret is written in TOML as a plain string (local use only), ``{ env = "NAME" }`` or
``{ file = "/path" }``. It resolves once, at config load, into a :class:`Secret` whose repr,
str and encoded form never contain the value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REDACTED = "***"


def as_bytes(text: str) -> bytes:
    """Bytes of a str that came off the wire; undecodable bytes survive, nothing raises."""
    return text.encode("utf-8", "surrogateescape")


class Secret:
    """A resolved secret. Use :meth:`reveal` at the one place the value is needed."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str) -> None:
        self._value = value
        self.origin = origin

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison with a presented credential (any bytes, never raises)."""
        return hmac.compare_digest(self._value.encode(), as_bytes(candidate))

    def describe(self) -> str:
        """Where the secret came from, never its value (for `/-/config` and `check`)."""
        return f"{REDACTED} ({self.origin})"

    def __repr__(self) -> str:
        return f"Secret({self.origin})"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._value.encode()).digest())


class Secrets(tuple[Secret, ...]):
    """One or several secrets (e.g. write keys kept during a rotation)."""

    def matches(self, candidate: str) -> bool:
        # Check every key so the time taken does not tell which one matched.
        found = False
        for secret in self:
            found |= secret.matches(candidate)
        return found

    def __repr__(self) -> str:
        return f"Secrets({', '.join(s.origin for s in self)})"


def resolve(obj: Any, base_dir: Path) -> Secret:
    """Turn one TOML secret reference into a Secret; ValueError says what is wrong."""
    if isinstance(obj, str):
        if not obj:
            raise ValueError("secret is empty")
        return Secret(obj, "inline")
    if isinstance(obj, dict):
        keys = set(obj)
        if keys == {"env"} and isinstance(obj["env"], str):
            name = obj["env"]
            value = os.environ.get(name)
            if not value:
                raise ValueError(f"environment variable {name} is not set or empty")
            return Secret(value, f"env {name}")
        if keys == {"file"} and isinstance(obj["file"], str):
            path = Path(obj["file"])
            if not path.is_absolute():
                path = base_dir / path
            try:
                value = path.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
            if not value:
                raise ValueError(f"secret file {path} is empty")
            return Secret(value, f"file {path}")
    raise ValueError('expected a string, { env = "NAME" } or { file = "PATH" }')


def make_dec_hook(base_dir: Path) -> Callable[[type, Any], Any]:
    """A msgspec dec_hook that resolves Secret and Secrets fields relative to base_dir."""

    def dec_hook(typ: type, obj: Any) -> Any:
        if typ is Secret:
            return resolve(obj, base_dir)
        if typ is Secrets:
            items: Iterable[Any] = obj if isinstance(obj, list) else [obj]
            resolved = Secrets(resolve(item, base_dir) for item in items)
            if not resolved:
                raise ValueError("at least one secret is required")
            return resolved
        raise NotImplementedError(f"unsupported type {typ!r}")

    return dec_hook


def enc_hook(obj: Any) -> Any:
    """A msgspec enc_hook that redacts secrets when config is shown."""
    if isinstance(obj, Secret):
        return obj.describe()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")
