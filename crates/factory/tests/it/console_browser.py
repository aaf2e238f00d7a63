"""Drives a real headless Chromium through the DevTools protocol against the console of a running
factory, and prints what it saw as JSON. Two errands:

    console_browser.py walk URL OUT KEYS_JSON   for each key (by role): sign in through the form,
        walk the pages the navigation offers, save a screenshot of each under OUT, record what each
        page showed, the session cookie's flags, every console error and every request that left
        the factory's origin, and the accessibility audit's findings (axe-core, when AXE_JS names
        its script); then sign out.
    console_browser.py work URL OUT PLAN_JSON   do the console's work as its users do: upload a
        dataset, watch a run's curves grow and cancel it, move an alias through its confirmation,
        chat in the playground, check a model's signature and lineage, read a pipeline's timeline,
        then, as an auditor, search the log and verify a record in the browser (and see a tampered
        one fail).
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

errand, url, out, plan = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), json.loads(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
AXE = os.environ.get("AXE_JS")


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

    def errors(self):
        """Exceptions and console errors the pages logged."""
        return [
            event["params"] for event in self.events
            if event.get("method") == "Runtime.exceptionThrown"
            or (event.get("method") == "Log.entryAdded" and event["params"]["entry"]["level"] == "error")
        ]

    def foreign_requests(self):
        """Requests the pages made anywhere but the factory."""
        return sorted({
            event["params"]["request"]["url"] for event in self.events
            if event.get("method") == "Network.requestWillBeSent"
            and not event["params"]["request"]["url"].startswith((url, "data:", "about:"))
        })

    async def wait_for(self, expression, seconds=30):
        """Polls `expression` until it is truthy; returns its value (or the last one seen)."""
        value = None
        for _ in range(int(seconds * 10)):
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        return value

    async def submit(self, expression):
        """Submits a form (or clicks what submits one) and waits for the next page."""
        await self.evaluate(expression)
        await asyncio.sleep(0.3)
        await self.settle()

    async def text(self):
        return await self.evaluate("document.querySelector('main').innerText")

    async def sign_in(self, key):
        await self.send("Network.clearBrowserCookies")
        await self.go("/console/sign-in")
        await self.submit(
            f"document.getElementById('api_key').value = {json.dumps(key)};"
            "document.querySelector('form[action=\"/console/sign-in\"]').submit()")

    async def sign_out(self):
        await self.submit("document.querySelector('form.sign-out').submit()")

    async def set_file(self, selector, path):
        root = (await self.send("DOM.getDocument"))["root"]["nodeId"]
        node = (await self.send("DOM.querySelector", nodeId=root, selector=selector))["nodeId"]
        await self.send("DOM.setFileInputFiles", nodeId=node, files=[path])

    async def axe(self):
        """The accessibility audit's serious and critical findings on this page."""
        if not AXE:
            return None
        await self.evaluate(pathlib.Path(AXE).read_text())
        found = await self.evaluate(
            "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations"
            ".filter(v => ['serious', 'critical'].includes(v.impact))"
            ".map(v => ({id: v.id, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)})))")
        return found

    async def shot(self, name, width):
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                        mobile=width < 700)
        data = (await self.send("Page.captureScreenshot", format="png"))["data"]
        path = out / f"{name}-{width}.png"
        path.write_bytes(base64.b64decode(data))
        return path.stat().st_size


async def walk(tab, keys):
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
        # Every page the navigation offers this key (what it may open), and the first page each
        # list links to.
        nav = await tab.evaluate("[...document.querySelectorAll('header nav a')].map(a => a.getAttribute('href'))")
        role_seen["nav"] = nav
        paths = list(nav)
        for path in nav:
            await tab.go(path)
            first = await tab.evaluate("document.querySelector('main tbody a')?.getAttribute('href')")
            if first and first not in paths:
                paths.append(first)
        for path in paths:
            await tab.go(path)
            name = f"{role}{path.replace('/', '-')}"
            role_seen["pages"][path] = {
                "path": await tab.evaluate("location.pathname"),
                "heading": await tab.evaluate("document.querySelector('h1')?.textContent"),
                "text": await tab.text(),
                "unlabelled": await tab.evaluate(
                    "[...document.querySelectorAll('input:not([type=hidden]), button, select, textarea')]"
                    ".filter(e => !(e.labels?.length || e.textContent.trim() || e.getAttribute('aria-label'))).length"),
                "screenshots": [await tab.shot(name, 1280), await tab.shot(name, 390)],
                "accessibility": await tab.axe(),
            }
        # Keyboard: the first Tab reaches the skip link.
        await tab.go("/console")
        await tab.send("Input.dispatchKeyEvent", type="keyDown", key="Tab", code="Tab", windowsVirtualKeyCode=9)
        await tab.send("Input.dispatchKeyEvent", type="keyUp", key="Tab", code="Tab", windowsVirtualKeyCode=9)
        role_seen["first_tab"] = await tab.evaluate("document.activeElement?.textContent?.trim()")
        role_seen["stolen_cookie"] = session and session["value"]
        await tab.sign_out()
        role_seen["signed_out_lands_on"] = await tab.evaluate("location.pathname")
        await tab.go("/console/datasets")
        role_seen["after_sign_out"] = await tab.evaluate("location.pathname")
        role_seen["errors"] = tab.errors()
        role_seen["foreign_requests"] = tab.foreign_requests()
        seen[role] = role_seen
    return seen


async def work(tab, plan):
    seen = {}
    tab.events.clear()
    await tab.sign_in(plan["engineer"])

    # Upload a dataset version with the progress bar, then open the version it made.
    await tab.go("/console/datasets/plays")
    await tab.set_file("#upload-file", plan["upload"])
    await tab.evaluate("document.getElementById('upload-format').value = 'jsonl';"
                       "document.getElementById('upload-text-column').value = 'text';"
                       "document.querySelector('#upload button[type=submit]').click()")
    status = await tab.wait_for(
        "(t => /Version|Refused|failed/.test(t) && t)(document.getElementById('upload-status').textContent)")
    seen["upload"] = {"status": status, "progress": await tab.evaluate("document.getElementById('upload-progress').value"),
                      "shot": await tab.shot("work-upload", 1280)}
    await tab.submit("document.querySelector('#upload-status a').click()")
    seen["version_page"] = {
        "path": await tab.evaluate("location.pathname"), "text": await tab.text(),
        "plots": await tab.evaluate("document.querySelectorAll('figure svg.plot rect').length"),
        "shots": [await tab.shot("work-dataset-version", 1280), await tab.shot("work-dataset-version", 390)],
    }

    # A run's curves grow while it trains, without a reload; then cancel it from its page.
    await tab.go(f"/console/jobs/{plan['run']}")
    await tab.evaluate("window.sameDocument = true")
    count = "(document.querySelector('svg[data-curve^=loss] polyline')?.getAttribute('points') || '').split(' ').filter(Boolean).length"
    first = await tab.wait_for(count, 60)
    grown = await tab.wait_for(f"(n => n > {first or 0} && n)({count})", 60)
    seen["run"] = {"first": first, "grown": grown, "same_document": await tab.evaluate("window.sameDocument === true"),
                   "latest": await tab.evaluate("document.querySelector('[data-latest=loss]').textContent"),
                   "log": await tab.evaluate("document.getElementById('run-log').textContent"),
                   "shot": await tab.shot("work-run", 1280)}
    await tab.submit("document.querySelector('form[action$=\"/cancel\"]').submit()")
    seen["run"]["after_cancel"] = await tab.text()

    # Move an alias: review it, then confirm it.
    await tab.go("/console/models/bard")
    await tab.submit("document.getElementById('alias-name').value = 'production';"
                     "document.getElementById('alias-version').value = '2';"
                     "document.querySelector('form[action$=\"/aliases/confirm\"]').submit()")
    seen["alias"] = {"confirm": await tab.text(), "shot": await tab.shot("work-alias-confirm", 1280)}
    await tab.submit("document.getElementById('confirm-move').click()")
    seen["alias"]["after"] = await tab.text()
    seen["alias"]["path"] = await tab.evaluate("location.pathname")

    # A version's signature (verified as the page is made) and its lineage graph.
    await tab.go("/console/models/bard/versions/2")
    seen["model_version"] = {
        "signature": await tab.evaluate("document.getElementById('signature-status').textContent"),
        "lineage_links": await tab.evaluate("[...document.querySelectorAll('svg.lineage a')].map(a => a.getAttribute('href'))"),
        "text": await tab.text(), "shot": await tab.shot("work-model-version", 1280),
    }

    # Chat in the playground: the answer streams in.
    await tab.go("/console/deployments/chat")
    await tab.evaluate("document.getElementById('playground-prompt').value = 'To be, or not to be';"
                       "document.querySelector('#playground button[type=submit]').click()")
    done = await tab.wait_for("document.getElementById('playground-answer').dataset.done === 'true'", 60)
    seen["playground"] = {
        "done": done, "answer": await tab.evaluate("document.getElementById('playground-answer').textContent"),
        "stats": await tab.evaluate("document.getElementById('playground-stats').textContent"),
        "shots": [await tab.shot("work-deployment", 1280), await tab.shot("work-deployment", 390)],
    }
    await tab.go("/console/deployments/chat")
    seen["deployment"] = {"text": await tab.text(), "plots": await tab.evaluate("document.querySelectorAll('svg.plot').length")}

    # A deployment with drift monitors and feedback.
    await tab.go("/console/deployments/watched")
    seen["watched"] = await tab.text()
    await tab.shot("work-deployment-watched", 1280)

    # A deployment a pipeline's canary analysis ran on, with its evidence opened.
    await tab.go("/console/deployments/canaried")
    await tab.evaluate("document.querySelectorAll('article.canary details').forEach(d => d.open = true)")
    seen["canaried"] = await tab.text()
    await tab.shot("work-deployment-canary", 1280)

    # A pipeline's runs as timelines.
    await tab.go(f"/console/pipelines/{plan['pipeline']}")
    seen["pipeline"] = {"text": await tab.text(),
                        "bars": await tab.evaluate("document.querySelectorAll('svg.timeline rect').length"),
                        "shot": await tab.shot("work-pipeline", 1280)}
    await tab.sign_out()

    # An auditor searches the log, opens a record and verifies it in the browser.
    await tab.sign_in(plan["auditor"])
    await tab.go("/console/audit?action=model.alias")
    seen["audit_search"] = await tab.text()
    await tab.submit("document.querySelector('main tbody a').click()")
    verify = "document.getElementById('verify-result').textContent"
    clicked = "document.getElementById('verify-result').textContent = ''; document.getElementById('verify-button').click()"
    await tab.evaluate(clicked)
    verified = await tab.wait_for(verify)
    steps = await tab.evaluate("[...document.querySelectorAll('#verify-steps li')].map(li => li.textContent)")
    shot = await tab.shot("work-audit-record", 1280)
    await tab.evaluate("""const r = document.getElementById('verify-record');
        r.value = r.value.replace('"decision":"allow"', '"decision":"deny"')""")
    await tab.evaluate(clicked)
    tampered = await tab.wait_for(verify)
    await tab.go(await tab.evaluate("location.pathname"))
    await tab.evaluate("const k = document.getElementById('verify-key'); k.value = k.value.slice(0, -2) + (k.value.endsWith('AA') ? 'AB' : 'AA')")
    await tab.evaluate(clicked)
    wrong_key = await tab.wait_for(verify)
    seen["audit_record"] = {"path": await tab.evaluate("location.pathname"), "verified": verified, "steps": steps,
                            "tampered": tampered, "wrong_key": wrong_key, "shot": shot}
    await tab.go("/console/datasets/plays/versions/1")
    seen["auditor_rows"] = await tab.text()
    await tab.sign_out()
    seen["errors"] = tab.errors()
    seen["foreign_requests"] = tab.foreign_requests()
    return seen


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
            for domain in ["Page", "Runtime", "Log", "Network", "DOM"]:
                await tab.send(f"{domain}.enable")
            seen = await (walk(tab, plan) if errand == "walk" else work(tab, plan))
            pump.cancel()
        print(json.dumps(seen))
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(profile, ignore_errors=True)


asyncio.run(main())
