"""The command line: thin. Health is an exit code; user errors are one message, no traceback."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click
import msgspec

from tracklayerd import __version__, threads
from tracklayerd.config import (
    DEFAULT_DATA_DIR,
    Config,
    check_bind_safety,
    default_config,
    load_config,
    parse_listen,
    redacted,
)
from tracklayerd.errors import ConfigError, DestinationError, TracklayerdError

log = logging.getLogger("tracklayerd")
T = TypeVar("T")

UNAUTHENTICATED_BANNER = """\
*************************************************************************
* tracklayerd is running as a LOCAL DEV MIRROR with NO AUTHENTICATION:   *
* any token or write key is accepted on %-31s *
* Give it a config with tokens before exposing it (docs/configuration.md) *
*************************************************************************"""


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    threads.share_gil_with_store_threads()  # every command with a store runs through here
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows lacks it
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


class UsageFailure(click.ClickException):
    """A config or usage problem of preview, replay or send-test. Exit status 2 (click's
    usage errors), because 1 means "refused" or "not delivered" there."""

    exit_code = 2


def _data_dir(option: str | None) -> Path:
    if option:
        return Path(option)
    state = os.environ.get("STATE_DIRECTORY")  # systemd StateDirectory=
    if state:
        return Path(state.split(":")[0])
    return Path(DEFAULT_DATA_DIR)


def _load(config_path: str | None) -> Config:
    if config_path is None:
        return default_config()
    return load_config(config_path)


@click.group(invoke_without_command=True)
@click.version_option(__version__, "--version", prog_name="tracklayerd")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", envvar="TRACKLAYERD_LOG_LEVEL", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              envvar="TRACKLAYERD_LOG_FORMAT", show_default=True)
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_format: str) -> None:
    """tracklayerd: the self-hosted delivery layer for conversion events."""
    from tracklayerd.logs import setup_logging

    setup_logging(log_level, log_format)
    if ctx.invoked_subcommand is None:
        # ctx.invoke skips option processing, so the environment is read here.
        ctx.invoke(serve, config_path=os.environ.get("TRACKLAYERD_CONFIG") or None,
                   data_dir=os.environ.get("TRACKLAYERD_DATA_DIR") or None)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              envvar="TRACKLAYERD_CONFIG", help="TOML config file (none: local dev mirror).")
@click.option("--listen", help="HOST:PORT to listen on (overrides [server] listen).")
@click.option("--data-dir", envvar="TRACKLAYERD_DATA_DIR", type=click.Path(file_okay=False),
              help="Where relative storage paths live [default: $STATE_DIRECTORY or "
                   "./tracklayerd-data].")
def serve(config_path: str | None = None, listen: str | None = None,
          data_dir: str | None = None) -> None:
    """Run the ingest server, processor and delivery in one process."""
    from tracklayerd.app import serve as serve_app

    try:
        config = _load(config_path)
        host, port = parse_listen(listen or config.server.listen, "--listen")
        check_bind_safety(config, host)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    directory = _data_dir(data_dir)
    if config.unauthenticated_sources():
        shown = f"{host}:{port}" if config.embedded_default else ", ".join(
            config.unauthenticated_sources())
        for line in UNAUTHENTICATED_BANNER.splitlines():
            log.warning(line.replace("%-31s", f"{shown:<31}"))
    try:
        run_async(serve_app(config, host, port, directory))
    except TracklayerdError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              envvar="TRACKLAYERD_CONFIG")
@click.option("--show", is_flag=True, help="Print the effective config (secrets redacted).")
def check(config_path: str, show: bool) -> None:
    """Validate a config file; exit status 0 when it is valid."""
    try:
        config = load_config(config_path)
        host, _ = parse_listen(config.server.listen, "server.listen")
        check_bind_safety(config, host)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if show:
        click.echo(msgspec.json.format(msgspec.json.encode(redacted(config))).decode())
    click.echo(
        f"{config_path}: ok ({len(config.sources)} source(s), "
        f"{len(config.destinations)} destination(s))"
    )
    for source_id in config.unauthenticated_sources():
        click.echo(f"warning: source {source_id} has no credentials (loopback only)", err=True)
    problems = run_async(_healthchecks(config))
    for dest_id, problem in problems:
        click.echo(f"error: destination {dest_id}: {problem}", err=True)
    if problems:
        raise SystemExit(1)


async def _healthchecks(config: Config) -> list[tuple[str, str]]:
    """Every destination's own check (credentials, ids, endpoint), without sending."""
    from tracklayerd.destinations.registry import create_destinations

    problems = []
    for dest_id, destination in create_destinations(config).items():
        try:
            await destination.healthcheck()
        except DestinationError as exc:
            problems.append((dest_id, str(exc)))
        finally:
            await destination.close()
    return problems


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              envvar="TRACKLAYERD_CONFIG", help="TOML config file (for the store's location).")
@click.option("--data-dir", envvar="TRACKLAYERD_DATA_DIR", type=click.Path(file_okay=False))
@click.option("--user-id", "user_ids", multiple=True, help="A user id (repeatable).")
@click.option("--email", "emails", multiple=True, help="An email address (repeatable).")
@click.option("--anonymous-id", "anonymous_ids", multiple=True,
              help="An anonymous id (repeatable).")
def forget(config_path: str | None, data_dir: str | None, user_ids: tuple[str, ...],
           emails: tuple[str, ...], anonymous_ids: tuple[str, ...]) -> None:
    """Erase a person (a deletion request): identity links, stored events, raw inbox rows.

    Everything linked to the given identifiers is removed; the report says how much.
    """
    from tracklayerd.pipeline.identity import hash_email
    from tracklayerd.store import create_store

    if not (user_ids or emails or anonymous_ids):
        raise click.UsageError("give at least one --user-id, --email or --anonymous-id")
    try:
        config = _load(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    store = create_store(config.storage, _data_dir(data_dir))
    normalized = [e.strip().lower() for e in emails]
    hashes = [h for e in normalized if (h := hash_email(e))]

    async def run() -> None:
        await store.open()
        try:
            report = await store.forget(user_ids=user_ids, anonymous_ids=anonymous_ids,
                                        emails=normalized, email_hashes=hashes)
        finally:
            await store.close()
        click.echo(f"removed {report.identity_nodes} identity link(s), {report.events} "
                   f"event(s), {report.deliveries} delivery row(s), {report.inbox_rows} raw "
                   "inbox row(s)")

    try:
        run_async(run())
    except TracklayerdError as exc:
        raise click.ClickException(str(exc)) from None


def _load_required(config_path: str) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise UsageFailure(str(exc)) from None


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              envvar="TRACKLAYERD_CONFIG")
@click.option("--source", "source_id",
              help="The source whose format the event is in [default: the only source].")
@click.option("--destination", "destination_id", required=True,
              help="The destination to preview (any mode).")
@click.argument("event_file", metavar="[FILE|-]", type=click.File("rb"), default="-")
def preview(config_path: str, source_id: str | None, destination_id: str,
            event_file: BinaryIO) -> None:
    """Print the request body a destination would get for one event (from FILE or stdin).

    stdout: exactly that body, and a newline. stderr: warnings and match quality. Exit
    status 0: it would be sent; 1: it would be refused or dropped; 2: a usage or config error.
    """
    from tracklayerd import delivery_tools as tools

    config = _load_required(config_path)
    if source_id is None:
        if len(config.sources) != 1:
            raise UsageFailure(f"give --source: the config has {len(config.sources)} sources "
                               f"({', '.join(sorted(config.sources)) or 'none'})")
        source_id = next(iter(config.sources))
    try:
        result = tools.preview(config, source_id, destination_id, event_file.read())
    except tools.UsageProblem as exc:
        raise UsageFailure(str(exc)) from None
    for note in result.notes:
        click.echo(note, err=True)
    if result.body is None:
        click.echo(f"not sent: {result.refused}", err=True)
        click.get_current_context().exit(1)
    click.echo(result.body)  # bytes: written as they are


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              envvar="TRACKLAYERD_CONFIG")
@click.option("--data-dir", envvar="TRACKLAYERD_DATA_DIR", type=click.Path(file_okay=False),
              help="As for serve: where a relative storage path lives.")
@click.option("--destination", "destination_id", required=True)
@click.option("--status", "statuses", multiple=True, default=("dead",), show_default=True,
              type=click.Choice(["dead", "retrying", "observed", "delivered", "suppressed"]),
              help="Re-queue deliveries in this status (repeatable).")
@click.option("--since", help="Only events received since: ISO 8601, or 30m, 24h, 7d.")
@click.option("--rebuild", is_flag=True,
              help="Encode the stored events again with the current config.")
@click.option("--force", is_flag=True,
              help="Send again what the destination accepted already (--status delivered or "
                   "suppressed, and dead ones whose event id was delivered since).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def replay(config_path: str, data_dir: str | None, destination_id: str,
           statuses: tuple[str, ...], since: str | None, rebuild: bool, force: bool,
           yes: bool) -> None:
    """Queue a destination's dead (or other) deliveries again; the server sends them.

    Same event ids, and the same payloads unless --rebuild.
    """
    from tracklayerd import delivery_tools as tools
    from tracklayerd.store import create_store

    config = _load_required(config_path)
    statuses = tuple(dict.fromkeys(statuses))
    try:
        since_ts = None if since is None else tools.parse_since(since, time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    try:
        notes = tools.replay_notes(config, destination_id, statuses, force)
    except tools.UsageProblem as exc:
        raise UsageFailure(str(exc)) from None
    directory = _data_dir(data_dir)
    path = tools.store_path(config, directory)
    if not path.exists():
        raise UsageFailure(f"no store at {path}: give the config and --data-dir the server uses")
    for note in notes:
        click.echo(note, err=True)
    store = create_store(config.storage, directory)

    async def run() -> int:
        await store.open()
        try:
            total = await store.count_deliveries(destination_id, statuses, since_ts, force)
            click.echo(f"{tools.deliveries(total)} of {destination_id} in status "
                       f"{' or '.join(statuses)}" + (f" since {since}" if since else ""))
            if not total:
                return 0
            if not yes:
                click.confirm("re-queue them?", abort=True, err=True)
            with click.progressbar(length=total, label="re-queueing", file=sys.stderr) as bar:
                return await tools.requeue_all(store, destination_id, statuses, since_ts,
                                               rebuild, force, total, bar.update)
        finally:
            await store.close()

    try:
        count = run_async(run())
    except TracklayerdError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(tools.replay_summary(count, destination_id))


@cli.command("send-test")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              envvar="TRACKLAYERD_CONFIG")
@click.option("--destination", "destination_id", required=True)
@click.option("--test-event-code", help="Overrides the destination's test_event_code (Meta).")
@click.option("--live", is_flag=True,
              help="Send even without a test event code: it counts as a real conversion.")
def send_test(config_path: str, destination_id: str, test_event_code: str | None,
              live: bool) -> None:
    """Send one test identify + purchase (fake data, 1.00 USD) straight to a destination.

    Prints the platform's HTTP status and body. Exit status 0 when it was delivered.
    """
    from tracklayerd import delivery_tools as tools

    config = _load_required(config_path)
    try:
        destination, notes = tools.send_test_destination(config, destination_id,
                                                         test_event_code, live)
    except tools.UsageProblem as exc:
        raise UsageFailure(str(exc)) from None
    for note in notes:
        click.echo(note, err=True)
    result = run_async(tools.send_test(destination, tools.send_test_events(time.time())))
    for note in result.notes:
        click.echo(note, err=True)
    for line in result.lines:
        click.echo(line)
    if not result.delivered:
        click.get_current_context().exit(1)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              envvar="TRACKLAYERD_CONFIG")
@click.option("--data-dir", envvar="TRACKLAYERD_DATA_DIR", type=click.Path(file_okay=False),
              help="As for serve: where a relative storage path lives.")
@click.option("--since", help="Events received since: ISO 8601, or 30m, 24h, 7d [default: "
                              "the first].")
@click.option("--until", help="Events received before: ISO 8601, or 30m, 24h, 7d ago "
                              "[default: now].")
@click.option("--destination", "destination_id", help="One destination [default: all].")
@click.option("--against", type=click.Path(exists=True, dir_okay=False),
              help="An export to reconcile with (CSV with a header, or NDJSON).")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "csv"]),
              default="table", show_default=True)
def report(config_path: str, data_dir: str | None, since: str | None, until: str | None,
           destination_id: str | None, against: str | None, output_format: str) -> None:
    """The parallel-validation report: what arrived, was deduplicated, suppressed, sent or
    observed, per destination and event; with --against, a reconciliation with an export.

    Exit status 0: done, and with --against everything matches; 1: the reconciliation found
    differences; 2: a usage, config, export or store problem.
    """
    from tracklayerd import delivery_tools as tools
    from tracklayerd import report as reporting
    from tracklayerd.store import create_store

    config = _load_required(config_path)
    now = time.time()
    window: list[float | None] = []
    for name, text in (("--since", since), ("--until", until)):
        try:
            window.append(None if text is None else tools.parse_since(text, now))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=name) from None
    since_ts, until_ts = window
    if since_ts is not None and until_ts is not None and since_ts >= until_ts:
        raise click.BadParameter("the window is empty: --since must be before --until",
                                 param_hint="--until")
    if destination_id is not None and destination_id not in config.destinations:
        known = ", ".join(sorted(config.destinations)) or "none"
        raise UsageFailure(f"no destination {destination_id!r} in the config "
                           f"(configured: {known})")
    try:
        rows = None if against is None else reporting.read_export(against)
    except reporting.ExportError as exc:
        raise UsageFailure(f"--against {against}: {exc}") from None
    directory = _data_dir(data_dir)
    path = tools.store_path(config, directory)
    if not path.exists():
        raise UsageFailure(f"no store at {path}: give the config and --data-dir the server uses")
    store = create_store(config.storage, directory)

    async def run() -> tuple[reporting.Report, reporting.Reconciliation | None]:
        await store.open()
        try:
            made = await reporting.build_report(store, since=since_ts, until=until_ts,
                                                destination=destination_id)
            rec = None if rows is None else await reporting.compare(
                store, rows, since=since_ts, until=until_ts, destination=destination_id)
            return made, rec
        finally:
            await store.close()

    try:
        made, rec = run_async(run())
    except TracklayerdError as exc:
        raise UsageFailure(str(exc)) from None
    click.echo(reporting.render(made, rec, output_format, against), nl=False)
    if rec is not None and not rec.matches:
        click.get_current_context().exit(1)


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"tracklayerd {__version__}")


def main() -> None:
    try:
        cli(prog_name="tracklayerd")
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
