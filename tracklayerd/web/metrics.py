"""``GET /metrics``: the Prometheus exposition (docs/metrics.md), admin-only like ``/-/``.

Its series name sources, destinations and event types, and how busy the shop is: that is the
admin's to see. Prometheus sends the admin token with ``authorization`` in its scrape config.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from tracklayerd.metrics import DestinationWorkers, Metrics
from tracklayerd.store.base import Store
from tracklayerd.web.auth import admin_only


def metrics_handler(metrics: Metrics, store: Store, scheduler: DestinationWorkers) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        body, content_type = await metrics.exposition(
            store, scheduler, ",".join(request.headers.getall("Accept", [])))
        # Set as a header: the content type carries version and escaping parameters, which
        # web.Response(content_type=...) refuses.
        return web.Response(body=body, headers={"Content-Type": content_type})

    return admin_only(handle)
