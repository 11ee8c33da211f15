"""[consent] geoip_database: the IP's country when nothing else places the user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from tests.pipeline.test_consent import REGION_GATED
from tracklayerd.config import ConsentConfig, parse_config
from tracklayerd.errors import ConfigError
from tracklayerd.events import Context, Event, Identity
from tracklayerd.geoip import GeoIP
from tracklayerd.pipeline.consent import ConsentPolicy, DestinationConsent, decide

FR_NET, CA_NET = "203.0.113.0/24", "198.51.100.0/24"


@pytest.fixture
def database(tmp_path: Path) -> Path:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    writer.insert_network(IPSet([FR_NET]), {"country": {"iso_code": "FR"}})
    writer.insert_network(IPSet([CA_NET]), {"country": {"iso_code": "US"},
                                            "subdivisions": [{"iso_code": "CA"}]})
    path = tmp_path / "geo.mmdb"
    writer.to_db_file(str(path))
    return path


def event(ip: str | None, **user: Any) -> Event:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return Event(event="purchase", event_id="e1", timestamp=now, received_at=now, source="web",
                 user=Identity(**user), context=Context(ip=ip))


def test_lookup_gives_country_and_subdivision(database: Path) -> None:
    geoip = GeoIP(database)
    assert geoip.lookup("203.0.113.7") == ("FR", None)
    assert geoip.lookup("198.51.100.9") == ("US", "CA")
    assert geoip.lookup("192.0.2.1") == (None, None)
    assert geoip.lookup("not an ip") == (None, None)
    geoip.close()


def test_the_ip_places_a_user_nothing_else_places(database: Path) -> None:
    policy = ConsentPolicy.from_config(ConsentConfig(geoip_database=str(database),
                                                     ldu_states=["CA"]))
    french = decide(event("203.0.113.7"), "meta", REGION_GATED, policy)
    assert (french.outcome, french.rule, french.region, french.region_source) == (
        "suppressed", "no_consent_opt_in_region", "FR", "geoip")
    californian = decide(event("198.51.100.9"), "meta", REGION_GATED, policy)
    assert (californian.outcome, californian.region, californian.ldu,
            californian.ldu_state) == ("allowed", "US-CA", True, "CA")
    # What the event says wins over where the IP is.
    stated = decide(event("203.0.113.7", country="US"), "meta", REGION_GATED, policy)
    assert (stated.outcome, stated.region, stated.region_source) == ("allowed", "US", "address")
    # No GeoIP: the same French IP places no one.
    unplaced = decide(event("203.0.113.7"), "meta", REGION_GATED, ConsentPolicy())
    assert (unplaced.outcome, unplaced.region) == ("allowed", None)
    # A destination naming a category: silence from a GeoIP-placed French user is a no too.
    gated = decide(event("203.0.113.7"), "meta",
                   DestinationConsent(categories=("marketing",), platform="meta"), policy)
    assert (gated.outcome, gated.rule) == ("suppressed", "no_consent_opt_in_region")


def test_config_resolves_the_path_and_refuses_an_unusable_file(
    database: Path, tmp_path: Path
) -> None:
    config = parse_config({"consent": {"geoip_database": database.name}}, tmp_path)
    assert config.consent.geoip_database == str(database)
    (tmp_path / "junk.mmdb").write_bytes(b"not a maxmind database")
    with pytest.raises(ConfigError, match=r"consent.geoip_database: cannot open .*junk.mmdb"):
        parse_config({"consent": {"geoip_database": "junk.mmdb"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"consent\.geoip_database: cannot open"):
        parse_config({"consent": {"geoip_database": "missing.mmdb"}}, tmp_path)
