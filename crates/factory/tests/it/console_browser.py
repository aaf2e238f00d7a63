"""Drives a real headless Chromium through the DevTools protocol against the console of a running
factory: for each key (by role), signs in through the form, walks the pages, saves a screenshot of
each under OUT, records what each page showed, the session cookie's flags, every console error and
every request that left the factory's origin, then signs out. Prints what it saw as JSON.

    console_browser.py URL OUT KEYS_JSON        (KEYS_JSON: {"engineer": "fk_...", ...})
"""

import asyncio
import base64
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import websockets

url, out, keys = sys.argv[1], pathlib.Path(sys.argv[2]), json.loads(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)


class Tab:
    """One page target, spoken to over its DevTools websocket."""

    def __init__(self, socket):
        self.socket, self.next_id, self.events, self.waiting = socket, 0, [], {}

    async def pump(self):
        async for message in self.socket:
            message = json.loads(message)
            if "id" in message and message["id"] in self.waiting:
                self.waiting.pop(message["id"]).set_result(message)
            else:
                self.events.append(message)

    async def send(self, method, **params):
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = future
        await self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def settle(self):
        """Waits until the document has loaded (after a navigation or a form's submission)."""
        for _ in range(100):
            await asyncio.sleep(0.05)
            if await self.evaluate("document.readyState") == "complete":
                return
        raise RuntimeError("the page did not load")

    async def go(self, path):
        await self.send("Page.navigate", url=url + path)
        await asyncio.sleep(0.1)
        await self.settle()

    async def shot(self, name, width):
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                        mobile=width < 700)
        data = (await self.send("Page.captureScreenshot", format="png"))["data"]
        path = out / f"{name}-{width}.png"
        path.write_bytes(base64.b64decode(data))
        return path.stat().st_size


async def main():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    profile = tempfile.mkdtemp()
    process = subprocess.Popen(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = pathlib.Path(profile) / "DevToolsActivePort"
        for _ in range(200):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        port = port_file.read_text().split()[0]
        targets = json.loads(subprocess.check_output(["curl", "-s", f"http://127.0.0.1:{port}/json/list"]))
        page = next(target for target in targets if target["type"] == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=64 << 20) as socket:
            tab = Tab(socket)
            pump = asyncio.create_task(tab.pump())
            for domain in ["Page", "Runtime", "Log", "Network"]:
                await tab.send(f"{domain}.enable")
            seen = {}
            for role, key in keys.items():
                await tab.send("Network.clearBrowserCookies")
                tab.events.clear()
                role_seen = {"pages": {}}
                await tab.go("/console")
                role_seen["unsigned_lands_on"] = await tab.evaluate("location.pathname")
                await tab.evaluate(
                    f"document.getElementById('api_key').value = {json.dumps(key)};"
                    "document.querySelector('form[action=\"/console/sign-in\"]').submit()")
                await asyncio.sleep(0.2)
                await tab.settle()
                role_seen["signed_in_lands_on"] = await tab.evaluate("location.pathname")
                cookies = (await tab.send("Network.getCookies"))["cookies"]
                session = next((c for c in cookies if c["name"] == "factory_session"), None)
                role_seen["cookie"] = session and {"httpOnly": session["httpOnly"], "sameSite": session.get("sameSite")}
                # Every page the navigation offers this key (what it may open).
                nav = await tab.evaluate("[...document.querySelectorAll('header nav a')].map(a => a.getAttribute('href'))")
                role_seen["nav"] = nav
                for path in nav:
                    await tab.go(path)
                    name = f"{role}{path.replace('/', '-')}"
                    role_seen["pages"][path] = {
                        "path": await tab.evaluate("location.pathname"),
                        "heading": await tab.evaluate("document.querySelector('h1')?.textContent"),
                        "text": await tab.evaluate("document.querySelector('main').innerText"),
                        "unlabelled": await tab.evaluate(
                            "[...document.querySelectorAll('input:not([type=hidden]), button')]"
                            ".filter(e => !(e.labels?.length || e.textContent.trim() || e.getAttribute('aria-label'))).length"),
                        "screenshots": [await tab.shot(name, 1280), await tab.shot(name, 390)],
                    }
                # Keyboard: the first Tab reaches the skip link.
                await tab.send("Input.dispatchKeyEvent", type="keyDown", key="Tab", code="Tab", windowsVirtualKeyCode=9)
                await tab.send("Input.dispatchKeyEvent", type="keyUp", key="Tab", code="Tab", windowsVirtualKeyCode=9)
                role_seen["first_tab"] = await tab.evaluate("document.activeElement?.textContent?.trim()")
                role_seen["stolen_cookie"] = session and session["value"]
                await tab.evaluate("document.querySelector('form.sign-out').submit()")
                await asyncio.sleep(0.2)
                await tab.settle()
                role_seen["signed_out_lands_on"] = await tab.evaluate("location.pathname")
                await tab.go("/console/datasets")
                role_seen["after_sign_out"] = await tab.evaluate("location.pathname")
                role_seen["errors"] = [
                    event["params"] for event in tab.events
                    if event.get("method") == "Runtime.exceptionThrown"
                    or (event.get("method") == "Log.entryAdded" and event["params"]["entry"]["level"] == "error")
                ]
                role_seen["foreign_requests"] = sorted({
                    event["params"]["request"]["url"] for event in tab.events
                    if event.get("method") == "Network.requestWillBeSent"
                    and not event["params"]["request"]["url"].startswith((url, "data:", "about:"))
                })
                seen[role] = role_seen
            pump.cancel()
        print(json.dumps(seen))
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(profile, ignore_errors=True)


asyncio.run(main())
