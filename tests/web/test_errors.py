"""Errors are short JSON answers: unknown paths and methods, HTTP errors, crashes."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tracklayerd.web import errors


async def client_for(routes: list[web.RouteDef]) -> TestClient[Any, Any]:
    app = web.Application()
    errors.install(app, routes)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("secret detail: ada@example.com")


async def too_many(request: web.Request) -> web.Response:
    raise web.HTTPTooManyRequests(headers={"Retry-After": "7", "X-Internal": "no"})


async def test_a_known_path_with_another_method_is_405_with_allow() -> None:
    client = await client_for([web.post("/v1/events", ok), web.put("/v1/events", ok)])
    resp = await client.get("/v1/events")
    assert resp.status == 405
    assert set(resp.headers["Allow"].split(",")) == {"POST", "PUT"}
    body = await resp.json()
    assert body["success"] is False and body["code"] == "method_not_allowed"
    assert (await client.post("/v1/events")).status == 200
    await client.close()


async def test_an_unknown_path_is_404_for_every_method() -> None:
    client = await client_for([web.post("/v1/events", ok)])
    for method in ("GET", "POST", "DELETE", "PATCH"):
        resp = await client.request(method, "/v1/nope")
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"
    await client.close()


async def test_a_crash_is_a_generic_500_and_never_shows_its_text(caplog: Any) -> None:
    client = await client_for([web.get("/boom", crash)])
    resp = await client.get("/boom")
    assert resp.status == 500
    text = await resp.text()
    assert "secret" not in text and "Traceback" not in text
    assert (await resp.json())["code"] == "internal"
    assert any("unhandled error serving GET /boom" in r.getMessage() for r in caplog.records)
    await client.close()


async def test_an_http_error_keeps_only_the_headers_a_client_needs() -> None:
    client = await client_for([web.get("/busy", too_many)])
    resp = await client.get("/busy")
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    assert "X-Internal" not in resp.headers
    assert (await resp.json())["code"] == "too_many_requests"
    await client.close()
