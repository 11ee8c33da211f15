"""Docs are part of the feature: every option, command and destination has its entry."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec
import pytest

from tracklayerd.cli import cli
from tracklayerd.config import SOURCE_TYPES, Config, DestinationConfig
from tracklayerd.destinations.registry import registry

DOCS = Path(__file__).resolve().parent.parent / "docs"


def struct_fields(struct: type[msgspec.Struct]) -> set[str]:
    return {f.name for f in msgspec.structs.fields(struct)}


def config_option_names() -> set[str]:
    names: set[str] = set()
    for section in ("server", "storage", "pipeline", "identity", "consent", "dedup"):
        field = next(f for f in msgspec.structs.fields(Config) if f.name == section)
        names |= struct_fields(field.type)
    for source_type in SOURCE_TYPES.values():
        names |= struct_fields(source_type)
    names |= struct_fields(DestinationConfig)
    return names


@pytest.mark.parametrize("name", sorted(config_option_names()))
def test_every_config_option_is_documented(name: str) -> None:
    text = (DOCS / "configuration.md").read_text()
    assert f"`{name}`" in text, f"config option {name!r} is missing from docs/configuration.md"


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_cli_command_and_option_is_documented(command: str) -> None:
    text = (DOCS / "configuration.md").read_text()
    assert f"tracklayerd {command}" in text
    for param in cli.commands[command].params:
        if isinstance(param, click.Option):
            flag = max(param.opts, key=len)
            assert flag in text, f"{command} {flag} is missing from docs/configuration.md"


@pytest.mark.parametrize("type_name", registry().types())
def test_every_destination_type_has_a_page_and_an_example(type_name: str) -> None:
    page = DOCS / "destinations" / f"{type_name}.md"
    assert page.exists(), f"docs/destinations/{type_name}.md is missing"
    config_type = registry().config_type(type_name)
    assert config_type is not None
    text = page.read_text()
    for name in struct_fields(config_type) - struct_fields(DestinationConfig):
        assert f"`{name}`" in text, f"{type_name} option {name!r} is not on its page"
    examples = (DOCS.parent / "contrib").glob("*.toml")
    assert any(f'type = "{type_name}"' in p.read_text() for p in examples)


@pytest.mark.parametrize("type_name", sorted(SOURCE_TYPES))
def test_every_source_type_is_documented(type_name: str) -> None:
    text = (DOCS / "configuration.md").read_text()
    assert f'"{type_name}"' in text


def _section(text: str, heading: str) -> str:
    """The text under a `## heading`, up to the next `## ` heading."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def _first_column(section: str) -> set[str]:
    """The backticked names in the first column of the Markdown table rows of a section."""
    names: set[str] = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells and cells[0].startswith("`"):
            names.add(cells[0].strip("`"))
    return names


def test_every_contract_is_in_the_contracts_table() -> None:
    from tracklayerd.pipeline.contracts import CONTRACTS

    table = _first_column(_section((DOCS / "events.md").read_text(), "Contracts"))
    missing = sorted(set(CONTRACTS) - table)
    assert not missing, (
        f"canonical events missing from the Contracts table in docs/events.md: {missing}"
    )


def test_every_builtin_canonical_name_is_in_mappings_md() -> None:
    from tracklayerd.pipeline.mapping import BUILTIN_RULES

    table = _first_column(_section((DOCS / "mappings.md").read_text(), "Built-in mappings"))
    missing = sorted({rule.canonical for rule in BUILTIN_RULES} - table)
    assert not missing, f"built-in canonical names missing from docs/mappings.md: {missing}"
