"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler

from tracklayerd.errors import StoreUnavailable
from tracklayerd.ingest.common import json_response
from tracklayerd.store.base import Store

READY_TIMEOUT_SECS = 2.0


async def healthz(request: web.Request) -> web.Response:
    return json_response(200, {"status": "ok"})


def readyz_handler(store: Store) -> Handler:
    async def readyz(request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECS):
                await store.check_writable()
        except (StoreUnavailable, TimeoutError) as exc:
            reason = str(exc) or "store did not commit in time"
            return json_response(503, {"status": "unavailable", "reason": reason},
                                 headers={"Retry-After": "1"})
        return json_response(200, {"status": "ready"})

    return readyz
