"""Country (and subdivision) of an IP address from a MaxMind DB file (GeoLite2, DB-IP, ...).

Optional: used by the consent step only when ``[consent] geoip_database`` is set, and only
for events whose region nothing else names. The file is memory-mapped and read-only; a
lookup is a tree walk in memory, so the pipeline stays free of I/O waits.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Any

import maxminddb

from tracklayerd.errors import ConfigError


class GeoIP:
    def __init__(self, path: str | Path) -> None:
        try:
            self._reader = maxminddb.open_database(str(path), maxminddb.MODE_MMAP)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise ConfigError(f"consent.geoip_database: cannot open {path}: {exc}") from None
        self.lookup = lru_cache(maxsize=8192)(self._lookup)

    def _lookup(self, ip: str) -> tuple[str | None, str | None]:
        """(ISO 3166-1 alpha-2 country, subdivision code) of `ip`; (None, None) if unknown."""
        try:
            record: Any = self._reader.get(ipaddress.ip_address(ip.strip()))
        except ValueError:
            return None, None
        if not isinstance(record, dict):
            return None, None
        country = (record.get("country") or record.get("registered_country") or {})
        code = country.get("iso_code") if isinstance(country, dict) else None
        subdivisions = record.get("subdivisions")
        sub = None
        if isinstance(subdivisions, list) and subdivisions and isinstance(subdivisions[0], dict):
            sub = subdivisions[0].get("iso_code")
        return (code if isinstance(code, str) else None), (sub if isinstance(sub, str) else None)

    def close(self) -> None:
        self._reader.close()
