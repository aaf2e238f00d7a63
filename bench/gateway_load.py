#!/usr/bin/env python3
"""Fixed-rate load for the gateway benchmark: POSTs a chat completion to each TARGET
(URL KEY MODEL) at RATE requests/s for SECONDS, the targets' requests interleaved in the same
window, and prints each target's latency percentiles (ms) as one JSON line. Interleaving makes
the targets share the machine's moments: on a VM whose speed swings between minutes, targets
measured one after the other differed by more than a gateway's overhead.

  gateway_load.py URL KEY MODEL [URL KEY MODEL ...] [--rate 100] [--seconds 10]
"""
import argparse, asyncio, json, statistics, time

import httpx


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("target", nargs="+", help="URL KEY MODEL, repeated per target")
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--seconds", type=float, default=10)
    a = p.parse_args()
    if len(a.target) % 3:
        p.error("targets come as URL KEY MODEL triples")
    targets = [tuple(a.target[i:i + 3]) for i in range(0, len(a.target), 3)]
    latencies = [[] for _ in targets]
    errors = [0 for _ in targets]
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        async def one(index):
            url, key, model = targets[index]
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            started = time.perf_counter()
            try:
                r = await client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
                if r.status_code != 200:
                    errors[index] += 1
                    return
            except Exception:
                errors[index] += 1
                return
            latencies[index].append((time.perf_counter() - started) * 1000)

        for _ in range(20):  # warm-up
            for index in range(len(targets)):
                await one(index)
        for series in latencies:
            series.clear()
        tasks, start = [], time.perf_counter()
        total = int(a.rate * a.seconds)
        # Each target at RATE, the targets' turns spread evenly within each period.
        for i in range(total):
            for index in range(len(targets)):
                delay = start + (i + index / len(targets)) / a.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    for (url, _, _), series, failed in zip(targets, latencies, errors):
        series.sort()
        q = lambda f: round(series[min(len(series) - 1, int(f * len(series)))], 3) if series else None
        print(json.dumps({"url": url, "rate": a.rate, "requests": total, "errors": failed, "p50_ms": q(0.50),
                          "p99_ms": q(0.99), "mean_ms": round(statistics.mean(series), 3) if series else None}))


asyncio.run(main())
