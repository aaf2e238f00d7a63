"""bench/console.sh: starts a factory, seeds one tenant through the API with 1,000 deployments,
10,000 jobs and audit records up to 100,000 (each governed change and each refusal is one), then
signs in to the console and times every page: the wall time of a GET on localhost, which is the
server's time plus a loopback round trip. Prints JSON: each page's p50 and p95 in milliseconds,
the seeded counts, and whether every page is under the target."""

import argparse
import concurrent.futures
import json
import statistics
import time
import urllib.parse
import urllib.request

from factory_process import Factory

parser = argparse.ArgumentParser()
parser.add_argument("--factory", required=True)
parser.add_argument("--corpus", required=True)
parser.add_argument("--port", type=int, default=18093)
parser.add_argument("--deployments", type=int, default=1000)
parser.add_argument("--jobs", type=int, default=10000)
parser.add_argument("--records", type=int, default=100000)
parser.add_argument("--target-ms", type=float, default=300.0)
args = parser.parse_args()
bench_factory = Factory(args.factory, args.port)
data, url, factory = bench_factory.data, bench_factory.url, bench_factory.cli


def call(method, path, key=None, body=None, cookie=None, headers=None):
    request = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode())
    request.add_header("content-type", "application/json")
    if key:
        request.add_header("authorization", f"Bearer {key}")
    if cookie:
        request.add_header("cookie", cookie)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def many(count, one, workers=16):
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        statuses = list(pool.map(one, range(count)))
    return statuses


keys = bench_factory.tenant_with_plays(args.corpus, ["auditor", "app"])
ENG, AUDITOR, APP = keys["engineer"], keys["auditor"], keys["app"]
(data / "model.json").write_text(json.dumps({
    "model": {"config": {"vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}},
    "tokenizer": {"vocab_size": 320},
    "train": {"seq_len": 32, "batch_size": 4, "warmup_steps": 3, "eval_every": 0, "checkpoint_every": 0, "eval_windows": 2},
}))
factory("train", "--dataset", "plays@1", "--name", "bard", "--config", str(data / "model.json"), "--max-steps", "20",
        "--wait", key=ENG)

started = time.time()
# Jobs are seeded into a factory without workers (an API process), so they stay queued, as in a
# busy cluster: the pages must list them, not run them.
bench_factory.restart("api")
made = many(args.deployments, lambda i: call(
    "POST", "/api/v1/deployments", ENG, {"name": f"d-{i:04}", "variants": [{"model": "bard@1"}]})[0])
assert all(s == 201 for s in made), {s: made.count(s) for s in set(made)}
queued = many(args.jobs, lambda i: call(
    "POST", "/api/v1/tenants/bench/jobs", ENG, {"kind": "platform.sleep", "payload": {"millis": 1}})[0])
assert all(s == 201 for s in queued), {s: queued.count(s) for s in set(queued)}
size = lambda: int(call("GET", "/api/v1/audit/checkpoint", ENG)[1].decode().split("\n")[1])
# The rest of the records: refusals, each audited (an application's key may not create a dataset).
while size() < args.records:
    missing = args.records - size()
    many(missing, lambda i: call("POST", "/api/v1/datasets", APP, {"name": f"x{i}", "classification": "internal"}))
seeded = {"deployments": args.deployments, "jobs": args.jobs, "audit_records": size(),
          "seconds": round(time.time() - started, 1)}


def session(key):
    """Signs in through the console's form; returns the session cookie."""
    with urllib.request.urlopen(f"{url}/console/sign-in") as form:
        token = form.headers["set-cookie"].split(";")[0]
    body = urllib.parse.urlencode({"api_key": key, "csrf": token.split("=", 1)[1]}).encode()
    request = urllib.request.Request(f"{url}/console/sign-in", data=body, method="POST")
    request.add_header("cookie", token)
    request.add_header("content-type", "application/x-www-form-urlencoded")

    class Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    try:
        urllib.request.build_opener(Stay).open(request)
    except urllib.error.HTTPError as reply:
        cookies = reply.headers.get_all("set-cookie")
        return next(c.split(";")[0] for c in cookies if c.startswith("factory_session=") and len(c.split(";")[0]) > 20)
    raise RuntimeError("sign-in did not redirect")


def timed(cookie, path, times=20):
    samples = []
    for _ in range(times):
        began = time.perf_counter()
        status, _ = call("GET", path, cookie=cookie)
        samples.append((time.perf_counter() - began) * 1000)
        assert status == 200, (path, status)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 1), "p95_ms": round(samples[int(0.95 * len(samples)) - 1], 1)}


engineer, auditor = session(ENG), session(AUDITOR)
any_job = json.loads(call("GET", "/api/v1/tenants/bench/jobs", ENG)[1])["jobs"][0]["id"]
pages = {
    "/console": engineer, "/console/datasets": engineer, "/console/datasets/plays": engineer,
    "/console/datasets/plays/versions/1": engineer, "/console/jobs": engineer,
    f"/console/jobs?page={args.jobs // 50 - 1}": engineer, f"/console/jobs/{any_job}": engineer,
    "/console/models": engineer, "/console/models/bard": engineer, "/console/models/bard/versions/1": engineer,
    "/console/deployments": engineer, f"/console/deployments?page={args.deployments // 50 - 1}": engineer,
    "/console/deployments/d-0500": engineer, "/console/pipelines": engineer,
    "/console/audit": auditor, "/console/audit?from=50000": auditor, "/console/audit?action=deployment.create": auditor,
    "/console/audit?principal=nobody": auditor, "/console/audit?action=dataset.create&since=2020-01-01": auditor,
    f"/console/audit/records/{args.records // 2}": auditor,
}
timings = {path: timed(cookie, path) for path, cookie in pages.items()}
slowest = max(timings.items(), key=lambda item: item[1]["p95_ms"])
print(json.dumps({"seeded": seeded, "pages": timings, "target_ms": args.target_ms,
                  "slowest": {"page": slowest[0], **slowest[1]},
                  "all_under_target": all(t["p95_ms"] < args.target_ms for t in timings.values())}, indent=1))
