"""A real browser for the tests: Debian's headless Chromium driven through the DevTools
protocol, over tornado's websocket client (tornado comes with luigi: no new dependency).

:meth:`Chromium.visit` opens a page, waits for its load event and for every image to
settle, evaluates a JavaScript expression in it and returns the value together with
every error the page raised: console errors, uncaught exceptions, and the browser's
own error entries (a resource that failed to load, a content-security-policy
violation). A test asserts on both.

Without a `chromium` on PATH the session fixture fails with one line saying how to
install it (CI's `.ci/run` installs it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["INSTALL_HINT", "Chromium", "PageVisit", "chromium_executable", "IMAGES_SETTLED"]

INSTALL_HINT = ("chromium not found: the report tests open pages in a real headless Chromium; install it with "
                "`apt-get update && apt-get install -y chromium` (as root)")

#: Wait until every image has loaded or failed, then list them: [{id, src, width, height}].
IMAGES_SETTLED = """await Promise.all(Array.from(document.images).map(i => i.complete ? null :
    new Promise(done => { i.addEventListener('load', done); i.addEventListener('error', done); })));
const images = Array.from(document.images).map(i => ({id: (i.closest('figure') || {}).id || '',
    src: i.getAttribute('src').slice(0, 30), width: i.naturalWidth, height: i.naturalHeight}));"""

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--no-first-run", "--no-default-browser-check", "--mute-audio",
          "--remote-debugging-port=0"]


def chromium_executable() -> str:
    """The browser's path; the test fails in one line (how to install it) when there is none."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


@dataclass
class PageVisit:
    url: str
    value: object          # what the expression returned (JSON-like)
    errors: list[str]      # console errors, exceptions, failed loads, policy violations


class _DevTools:
    """One websocket to the browser; commands to pages go through flat sessions."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    async def _message(self) -> dict:
        text = await self.ws.read_message()
        if text is None:
            raise RuntimeError("the browser closed the DevTools connection")
        return json.loads(text)

    async def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        call = {"id": next(self.ids), "method": method, "params": params or {}}
        if session:
            call["sessionId"] = session
        await self.ws.write_message(json.dumps(call))
        while True:
            msg = await self._message()
            if msg.get("id") == call["id"]:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    async def wait_for(self, method: str, session: str) -> dict:
        while True:
            for k, event in enumerate(self.events):
                if event.get("method") == method and event.get("sessionId") == session:
                    return self.events.pop(k)
            self.events.append(await self._message())


def _errors(events: list[dict], session: str) -> list[str]:
    found = []
    for e in events:
        if e.get("sessionId") != session:
            continue
        p = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            found.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif e.get("method") == "Runtime.exceptionThrown":
            details = p.get("exceptionDetails", {})
            found.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            found.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
    return found


class Chromium:
    """A headless Chromium for the length of a `with` block (one browser, one tab per visit)."""

    def __init__(self, profile_dir: Path, timeout_s: float = 60.0):
        self.profile_dir = Path(profile_dir)
        self.timeout_s = timeout_s
        self.loop = asyncio.new_event_loop()
        self.proc = None
        self.devtools = None

    def __enter__(self) -> Chromium:
        from tornado.websocket import websocket_connect

        self.profile_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([chromium_executable(), *_FLAGS, f"--user-data-dir={self.profile_dir}",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"chromium did not open its DevTools port (exit status {self.proc.returncode})")
            time.sleep(0.05)
        port, path = port_file.read_text().split()

        async def connect():   # inside the loop: tornado binds the connection to the running loop
            return await websocket_connect(f"ws://127.0.0.1:{port}{path}", max_message_size=256 << 20)
        ws = self._run(connect())
        self.devtools = _DevTools(ws)
        return self

    def __exit__(self, *exc) -> None:
        if self.devtools is not None:
            try:
                self._run(self.devtools.send("Browser.close"), timeout_s=5)
            except Exception:
                pass

            async def close():   # inside the loop, as the connection was made
                self.devtools.ws.close()
            self._run(close(), timeout_s=5)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.loop.close()

    def _run(self, coro, timeout_s: float | None = None):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout_s or self.timeout_s))

    def visit(self, url: str, body: str) -> PageVisit:
        """Open `url` in a new tab, wait for its load event, run the JavaScript function body
        `body` (async; it returns a JSON-like value) and close the tab."""
        return self._run(self._visit(url, body))

    async def _visit(self, url: str, body: str) -> PageVisit:
        dt = self.devtools
        target = (await dt.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session = (await dt.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        try:
            for domain in ("Runtime", "Log", "Page"):
                await dt.send(f"{domain}.enable", session=session)
            navigated = await dt.send("Page.navigate", {"url": url}, session=session)
            if navigated.get("errorText"):
                return PageVisit(url, None, [f"navigation: {navigated['errorText']}"])
            await dt.wait_for("Page.loadEventFired", session)
            result = await dt.send("Runtime.evaluate", {"expression": f"(async () => {{ {body} }})()",
                                                        "awaitPromise": True, "returnByValue": True}, session=session)
            if "exceptionDetails" in result:
                raise RuntimeError(f"the test's script failed in {url}: {result['exceptionDetails']}")
            value = result.get("result", {}).get("value")
            await dt.send("Runtime.evaluate", {"expression": "0"}, session=session)  # flush pending events
            return PageVisit(url, value, _errors(dt.events, session))
        finally:
            dt.events = [e for e in dt.events if e.get("sessionId") != session]
            await dt.send("Target.closeTarget", {"targetId": target})
