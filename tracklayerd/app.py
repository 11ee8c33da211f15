"""Composition root: wires config, store, ingest, processor and web. No business logic."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from tracklayerd import memory, sdnotify
from tracklayerd.config import WEBHOOK_SOURCES, Config, HttpApiSource, SegmentSource
from tracklayerd.destinations.registry import create_destinations
from tracklayerd.errors import StartupError
from tracklayerd.ingest.common import ClientAddress
from tracklayerd.ingest.http_api import NativeIngest
from tracklayerd.ingest.segment import SegmentIngest
from tracklayerd.ingest.webhooks import WebhookIngest
from tracklayerd.metrics import Metrics, counted_ingest
from tracklayerd.processor import Pipeline, Processor
from tracklayerd.scheduler import Clock, Scheduler
from tracklayerd.store import create_store
from tracklayerd.store.base import Store
from tracklayerd.web import errors
from tracklayerd.web.health import healthz, readyz_handler
from tracklayerd.web.metrics import metrics_handler
from tracklayerd.web.status import status_handler
from tracklayerd.web.trace import lookup_handler, trace_handler

log = logging.getLogger("tracklayerd")

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
PROCESSOR = web.AppKey("processor", Processor)
SCHEDULER = web.AppKey("scheduler", Scheduler)
METRICS = web.AppKey("metrics", Metrics)


def create_app(
    config: Config, data_dir: Path, *, start_processor: bool = True,
    clock: Clock | None = None,
) -> web.Application:
    """The whole service. `start_processor=False` leaves the processor and the scheduler to
    the caller (tests drive them with run_until_idle and an injected clock)."""
    max_request = max([s.max_request_bytes for s in config.sources.values()], default=1 << 20)
    app = web.Application(client_max_size=max_request)
    app[CONFIG] = config
    store = create_store(config.storage, data_dir, on_migrating=_extend_start_timeout)
    destinations = create_destinations(config)
    metrics = app[METRICS] = Metrics(config)
    scheduler = Scheduler(store, list(destinations.values()), clock=clock, metrics=metrics)
    processor = Processor(store, Pipeline(config, destinations), on_processed=scheduler.wake,
                          clock=scheduler.clock.now, metrics=metrics)

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        metrics.watch_commits(store)
        app[STORE] = store
        yield
        await store.close()

    async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SCHEDULER] = scheduler
        if start_processor:
            scheduler.start()
        yield
        # In-flight sends get the grace period; what does not finish is sent again later.
        await scheduler.stop(config.server.shutdown_grace_secs)
        for destination in destinations.values():
            if destination.id not in scheduler.workers:
                await destination.close()

    async def processor_ctx(app: web.Application) -> AsyncIterator[None]:
        app[PROCESSOR] = processor
        if start_processor:
            processor.start()
        yield
        await processor.stop()

    app.cleanup_ctx.extend([store_ctx, scheduler_ctx, processor_ctx])

    client_address = ClientAddress(config.server.trusted_proxies)
    timeout = config.storage.commit_timeout_secs
    routes: list[web.RouteDef] = []
    native_sources = {
        sid: src for sid, src in config.sources.items() if isinstance(src, HttpApiSource)
    }
    if native_sources:
        native = NativeIngest(native_sources, store, commit_timeout_secs=timeout,
                              client_address=client_address)
        routes.append(web.post("/v1/events", counted_ingest(metrics, native.handle)))
    segment_sources = {
        sid: src for sid, src in config.sources.items() if isinstance(src, SegmentSource)
    }
    if segment_sources:
        routes += SegmentIngest(segment_sources, store, commit_timeout_secs=timeout,
                                client_address=client_address, metrics=metrics).routes()
    webhook_sources = {
        sid: src for sid, src in config.sources.items() if isinstance(src, WEBHOOK_SOURCES)
    }
    if webhook_sources:
        routes += WebhookIngest(webhook_sources, store, commit_timeout_secs=timeout,
                                client_address=client_address, metrics=metrics).routes()
    routes += [
        web.get("/healthz", healthz),
        web.get("/-/events/{id}", trace_handler(store)),
        web.get("/-/events", lookup_handler(store)),
        web.get("/-/status", status_handler(config, store, scheduler, "html")),
        web.get("/-/status.json", status_handler(config, store, scheduler, "json")),
        web.get("/readyz", readyz_handler(store)),
        web.get("/metrics", metrics_handler(metrics, store, scheduler)),
    ]
    errors.install(app, routes)
    return app


async def serve(
    config: Config, host: str, port: int, data_dir: Path,
    on_listening: Callable[[str, int], None] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting, finish in-flight work and return."""
    app = create_app(config, data_dir)
    grace = config.server.shutdown_grace_secs
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=grace)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        bound_host, bound_port = runner.addresses[0][:2]
        log.info("listening on http://%s:%d (data in %s)", _fmt_host(bound_host), bound_port,
                 data_dir)
        if on_listening is not None:
            on_listening(bound_host, bound_port)

        memory.tune_collector()
        memory.tune_allocator()

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sdnotify.notify("READY=1")
        watchdog = _start_watchdog(app)
        await stop.wait()
        log.info("stopping: no new connections; finishing in-flight requests and commits")
        sdnotify.notify("STOPPING=1")
        if watchdog is not None:
            watchdog.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()
    log.info("stopped cleanly")


# How long systemd should wait for a start that upgrades the store: migration 8 takes
# ~35 s per million deliveries, beyond the default 90 s TimeoutStartSec from ~2M on.
MIGRATION_START_TIMEOUT_SECS = 4 * 3600


def _extend_start_timeout(from_version: int, to_version: int) -> None:
    """Before a schema upgrade: tell systemd this start takes longer, instead of it killing
    the upgrade (rolled back) at TimeoutStartSec and starting it again, forever."""
    del from_version, to_version
    sdnotify.notify(f"EXTEND_TIMEOUT_USEC={MIGRATION_START_TIMEOUT_SECS * 1_000_000}")


def _start_watchdog(app: web.Application) -> asyncio.Task[None] | None:
    interval = sdnotify.watchdog_interval()
    if interval is None:
        return None

    async def ping() -> None:
        while True:
            # Only a healthy writer earns a ping; otherwise systemd restarts us.
            if app[STORE].healthy():
                sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    return asyncio.create_task(ping(), name="tracklayerd-watchdog")


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
