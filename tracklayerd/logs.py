"""Logging setup: one line per notable thing, text or JSON, never PII or secrets."""

from __future__ import annotations

import logging
import sys
import time

import msgspec
from aiohttp.web_protocol import RequestPayloadError


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


class _UndecodableBodyFilter(logging.Filter):
    """aiohttp logs an undecodable request body (corrupt gzip) as an unhandled ERROR after
    tracklayerd has already answered 400; nothing there needs an operator."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, RequestPayloadError)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would record client IPs; it stays off.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiosqlite logs every statement with its parameters at DEBUG: hashes of emails and
    # phones, event ids. Never, at any level.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    logging.getLogger("aiohttp.server").addFilter(_UndecodableBodyFilter())
