"""bench/batch.sh: starts a factory on a fresh data directory, trains and deploys a small model,
then sends REQUESTS chat requests as one batch, and the same requests one by one at the
concurrency the batch keeps outstanding; and measures interactive latency idle and while a batch
runs. Prints JSON."""

import argparse
import asyncio
import io
import json
import statistics
import time

import openai

from factory_process import Factory

parser = argparse.ArgumentParser()
parser.add_argument("--factory", required=True)
parser.add_argument("--corpus", required=True)
parser.add_argument("--requests", type=int, default=10000)
parser.add_argument("--batch-concurrency", type=int, default=16)
parser.add_argument("--tokens", type=int, default=16)
parser.add_argument("--port", type=int, default=18091)
args = parser.parse_args()
CONCURRENCY = 2 * args.batch_concurrency
bench_factory = Factory(args.factory, args.port, {
    "FACTORY_BATCH__CONCURRENCY": str(args.batch_concurrency), "FACTORY_SERVING__MAX_BATCH": "32"})
data, url = bench_factory.data, bench_factory.url
factory = bench_factory.cli


keys = bench_factory.tenant_with_plays(args.corpus, ["app"])
APP, ENG = keys["app"], keys["engineer"]
(data / "model.json").write_text(json.dumps({
    "model": {"config": {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}},
    "tokenizer": {"vocab_size": 512},
    "train": {"steps": 30, "seq_len": 64, "batch_size": 4, "eval_every": 0, "checkpoint_every": 0}}))
factory("train", "--dataset", "plays@1", "--name", "bard", "--config", str(data / "model.json"), "--wait", key=ENG)
factory("deploy", "create", "chat", "--variant", "bard@1", key=ENG)
args.base_url, args.key, args.deployment = f"{url}/v1", APP, "chat"
client = openai.OpenAI(base_url=args.base_url, api_key=args.key, max_retries=0, timeout=600)
WORDS = "now is the winter of our discontent made glorious summer by this sun of york".split()


def body(i):
    prompt = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(8))
    return {"model": args.deployment, "messages": [{"role": "user", "content": prompt}], "max_tokens": args.tokens,
            "temperature": 0, "ignore_eos": True}


def sdk(i):
    """The same request as the SDK takes it: fields it does not know go in extra_body."""
    request = body(i)
    extra = {"ignore_eos": request.pop("ignore_eos")}
    return {**request, "extra_body": extra}


def run_batch(count):
    lines = "\n".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i)})
                      for i in range(count))
    started = time.perf_counter()
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(lines.encode())), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.25)
        batch = client.batches.retrieve(batch.id)
    seconds = time.perf_counter() - started
    tokens = 0
    if batch.output_file_id:
        for line in client.files.content(batch.output_file_id).text.splitlines():
            tokens += json.loads(line)["response"]["body"]["usage"]["completion_tokens"]
    return seconds, batch, tokens


async def one_by_one(count, concurrency):
    aclient = openai.AsyncOpenAI(base_url=args.base_url, api_key=args.key, max_retries=5, timeout=600)
    queue = iter(range(count))
    failures, tokens = 0, 0

    async def worker():
        nonlocal failures, tokens
        for i in queue:
            try:
                answer = await aclient.chat.completions.create(**sdk(i))
                tokens += answer.usage.completion_tokens
            except openai.APIError:
                failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, failures, tokens


def interactive_latencies(samples=20):
    latencies = []
    for i in range(samples):
        started = time.perf_counter()
        client.chat.completions.create(**sdk(i))
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


client.chat.completions.create(**sdk(0))  # the model loads
idle = interactive_latencies()
batch_seconds, batch, batch_tokens = run_batch(args.requests)
direct_seconds, failures, direct_tokens = asyncio.run(one_by_one(args.requests, CONCURRENCY))

# Interactive latency while a batch keeps the engine full.
# (Large enough to outlast the interactive requests several times over.)
busy_body = lambda i: {**body(i), "max_tokens": 128}
lines = "\n".join(json.dumps({"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions", "body": busy_body(i)})
                  for i in range(20000))
uploaded = client.files.create(file=("busy.jsonl", io.BytesIO(lines.encode())), purpose="batch")
busy = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
while client.batches.retrieve(busy.id).status == "validating":
    time.sleep(0.05)
time.sleep(1.0)
during = interactive_latencies()
still_running = client.batches.retrieve(busy.id).status == "in_progress"
if still_running:
    client.batches.cancel(busy.id)

counts = batch.request_counts
print(json.dumps({
    "requests": args.requests,
    "batch": {"seconds": round(batch_seconds, 2), "status": batch.status, "completed": counts.completed,
              "failed": counts.failed, "requests_per_s": round(counts.completed / batch_seconds, 1),
              "tokens_per_s": round(batch_tokens / batch_seconds, 1)},
    "one_by_one": {"seconds": round(direct_seconds, 2), "concurrency": CONCURRENCY, "failed": failures,
                   "requests_per_s": round((args.requests - failures) / direct_seconds, 1),
                   "tokens_per_s": round(direct_tokens / direct_seconds, 1)},
    "batch_over_one_by_one_throughput": round(direct_seconds / batch_seconds, 3),
    "interactive_p50_s": {"idle": round(idle, 4), "during_batch": round(during, 4),
                          "batch_still_running": still_running, "during_over_idle": round(during / idle, 2)},
}, indent=1))
server.terminate()
server.wait()
