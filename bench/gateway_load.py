#!/usr/bin/env python3
"""Fixed-rate load for the gateway benchmark: POSTs a chat completion at RATE requests/s for
SECONDS to URL and prints latency percentiles (ms) as one JSON line. The same tool and rate are
used against the upstream directly, through the factory and through LiteLLM, so the differences
are the gateways' overheads.

  gateway_load.py URL KEY MODEL [--rate 100] [--seconds 10]
"""
import argparse, asyncio, json, statistics, time

import httpx


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("key")
    p.add_argument("model")
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--seconds", type=float, default=10)
    a = p.parse_args()
    body = {"model": a.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    latencies, errors = [], 0
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        async def one():
            nonlocal errors
            started = time.perf_counter()
            try:
                r = await client.post(a.url, json=body, headers={"Authorization": f"Bearer {a.key}"})
                if r.status_code != 200:
                    errors += 1
                    return
            except Exception:
                errors += 1
                return
            latencies.append((time.perf_counter() - started) * 1000)

        for _ in range(20):  # warm-up
            await one()
        latencies.clear()
        tasks, start = [], time.perf_counter()
        total = int(a.rate * a.seconds)
        for i in range(total):
            delay = start + i / a.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    latencies.sort()
    q = lambda f: round(latencies[min(len(latencies) - 1, int(f * len(latencies)))], 3) if latencies else None
    print(json.dumps({"url": a.url, "rate": a.rate, "requests": total, "errors": errors,
                      "p50_ms": q(0.50), "p99_ms": q(0.99), "mean_ms": round(statistics.mean(latencies), 3) if latencies else None}))


asyncio.run(main())
