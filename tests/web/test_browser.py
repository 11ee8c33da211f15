"""The status page and a trace page in a real browser: headless Chromium (Debian's package).

Chromium is driven over the DevTools protocol (a websocket, with aiohttp's client): every
console message, uncaught exception and Content-Security-Policy violation is collected while
the page loads, and the rendered DOM is inspected after the load event. The pages are served
by the app in this process, on loopback (the admin check lets loopback through without a
token), from a store the real pipeline filled.

Without Chromium the tests skip on a developer machine; in CI (env CI set; .ci/run installs
the package) they fail instead, so a missing browser never passes silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import store_of
from tests.web.test_status import fill, start

TIMEOUT_SECS = 30
DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")
# What the page would show in the console as a problem: errors of any kind, and
# security (CSP) messages at any level.
ERROR_LEVELS = frozenset({"error"})


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


class Page:
    """One tab, attached in flattened mode; what it logged since it was opened."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session
        self.problems: list[str] = []
        self.loaded = asyncio.Event()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, session=self.session, **params)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self.loaded.set()
        elif method == "Log.entryAdded":
            entry = params["entry"]
            if entry.get("level") in ERROR_LEVELS or entry.get("source") == "security":
                self.problems.append(f"{entry.get('source')}: {entry.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.problems.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.problems.append(f"uncaught: {details.get('text')} {details.get('exception')}")

    async def open(self, url: str) -> None:
        self.loaded.clear()
        result = await self.send("Page.navigate", url=url)
        assert "errorText" not in result, result
        async with asyncio.timeout(TIMEOUT_SECS):
            await self.loaded.wait()

    async def evaluate(self, expression: str) -> Any:
        # DevTools evaluation is not page script: the page's CSP (no scripts) does not apply.
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")


class Browser:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.pages: dict[str, Page] = {}

    async def read(self) -> None:
        async for message in self.ws:
            data = message.json()
            if "id" in data:
                future = self.waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(RuntimeError(f"DevTools: {data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
            elif (page := self.pages.get(data.get("sessionId", ""))) is not None:
                page.on_event(data["method"], data.get("params", {}))
        for future in self.waiting.values():
            future.set_exception(RuntimeError("the browser closed the DevTools connection"))

    async def send(self, method: str, session: str | None = None,
                   **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[number] = future
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send_json(message)
        async with asyncio.timeout(TIMEOUT_SECS):
            return await future

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"],
                                   flatten=True)
        page = self.pages[attached["sessionId"]] = Page(self, attached["sessionId"])
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        return page


@contextlib.asynccontextmanager
async def headless_chromium(profile: Path) -> AsyncIterator[Browser]:
    proc = await asyncio.create_subprocess_exec(
        chromium(), "--headless=new", "--disable-gpu", "--no-sandbox",
        "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
        "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
        f"--user-data-dir={profile}", "about:blank",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    output: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(TIMEOUT_SECS):
            while (match := DEVTOOLS.search(output[-1] if output else "")) is None:
                line = await proc.stderr.readline()
                if not line:
                    raise RuntimeError("chromium exited:\n" + "".join(output))
                output.append(line.decode(errors="replace"))

        async def keep_draining() -> None:  # a full stderr pipe would stall the browser
            assert proc.stderr is not None
            while await proc.stderr.readline():
                pass

        drain = asyncio.create_task(keep_draining())
        async with aiohttp.ClientSession() as http, http.ws_connect(
                match.group(1), max_msg_size=0) as ws:
            browser = Browser(ws)
            reader = asyncio.create_task(browser.read())
            try:
                yield browser
            finally:
                with contextlib.suppress(Exception):
                    await browser.send("Browser.close")
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


DOM_SUMMARY = """(() => {
  const ids = s => [...document.querySelectorAll(s)].map(e => e.id);
  return {
    title: document.title,
    sections: ids('section[id]'),
    destinations: ids('article[id^="destination-"]'),
    sources: ids('tr[id^="source-"]'),
    sparklines: [...document.querySelectorAll('svg.spark')].map(svg => {
      const box = svg.getBoundingClientRect();
      return {width: box.width, height: box.height,
              bars: svg.querySelectorAll('rect').length};
    }),
    deadLetters: [...document.querySelectorAll('.dead-letters a')].map(a => a.pathname),
    errors: [...document.querySelectorAll('.errors pre')].map(p => p.textContent),
    bodyFont: getComputedStyle(document.body).fontFamily,
    scripts: document.scripts.length,
  };
})()"""


async def test_status_and_trace_pages_render_in_chromium_without_console_errors(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    client, fake, clock = await start(aiohttp_client, aiohttp_server, tmp_path / "data")
    await fill(client, fake, clock)
    bad = (await store_of(client).events_for("web", ["evt-bad"]))[0]

    async with headless_chromium(tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.open(str(client.make_url("/-/status")))
        dom = await page.evaluate(DOM_SUMMARY)
        assert page.problems == []
        assert dom["title"] == "tracklayerd status"
        assert dom["sections"] == ["sources", "processing", "destinations", "dedup",
                                   "validation"]
        assert dom["destinations"] == ["destination-meta", "destination-hook"]
        assert dom["sources"] == ["source-web", "source-shop"]
        assert len(dom["sparklines"]) == 4
        for spark in dom["sparklines"]:
            # Laid out at its size, one hover target and two bars per hour.
            assert spark["width"] == 192 and spark["height"] == 44
            assert spark["bars"] == 24 * 3
        # The inline stylesheet applied (the CSP allows inline styles only).
        assert "system-ui" in dom["bodyFont"]
        assert dom["scripts"] == 0
        assert dom["deadLetters"] == [f"/-/events/{bad.id}"]
        assert any("2804001" in text and "fbtrace_id" in text for text in dom["errors"])

        # Following the dead letter's link: the browser asks for HTML, and gets the trace.
        trace = await browser.new_page()
        await trace.open(str(client.make_url(f"/-/events/{bad.id}")))
        shown = await trace.evaluate(
            "({title: document.title, h1: document.querySelector('h1').textContent,"
            " sections: [...document.querySelectorAll('section h2')].map(h => h.textContent)})")
        assert trace.problems == []
        assert shown["title"] == "tracklayerd: event trace"
        assert shown["h1"].startswith(f"Event {bad.id}: purchase")
        assert shown["sections"] == ["event", "input", "canonical", "decisions", "deliveries"]

        # The same with ?format=html, as a link from elsewhere would open it.
        again = await browser.new_page()
        await again.open(str(client.make_url(f"/-/events/{bad.id}?format=html")))
        assert await again.evaluate("document.title") == "tracklayerd: event trace"
        assert again.problems == []


async def test_the_console_check_sees_a_csp_violation(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    # The check above must not pass because nothing is ever reported: a page that breaks
    # the same CSP has to be caught.
    async def broken(request: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><title>x</title><script>console.error('boom')</script>",
            content_type="text/html",
            headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})

    app = web.Application()
    app.router.add_get("/", broken)
    server = await aiohttp_server(app)
    async with headless_chromium(tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.open(str(server.make_url("/")))
        await page.evaluate("1")  # every event sent before this answer has been read
        assert any("Content Security Policy" in p for p in page.problems), page.problems
