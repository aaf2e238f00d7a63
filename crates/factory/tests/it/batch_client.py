"""The Batch API through the official `openai` client: a file of requests uploaded, run as a
batch, its output and error files read back and compared with the same requests asked one by
one; a file that does not validate; a batch cancelled while it runs; files listed and deleted;
and the refusals, by field. Prints what it saw."""

import io
import json
import sys
import time

import openai

base_url, api_key, deployment = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
seen = {"errors": {}}
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def jsonl(lines):
    return io.BytesIO(("\n".join(json.dumps(line) for line in lines) + "\n").encode())


def request(custom_id, content, **extra):
    body = {"model": deployment, "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    body.update(extra)
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def wait(batch_id, timeout=240):
    statuses = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        batch = client.batches.retrieve(batch_id)
        if not statuses or statuses[-1] != batch.status:
            statuses.append(batch.status)
        if batch.status in TERMINAL:
            return batch, statuses
        time.sleep(0.2)
    raise SystemExit(f"batch {batch_id} did not finish: {statuses}")


def lines_of(file_id):
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def refused(name, call):
    try:
        call()
        seen["errors"][name] = {"status": 200}
    except openai.APIStatusError as error:
        param = error.body.get("param") if isinstance(error.body, dict) else None
        seen["errors"][name] = {"status": error.status_code, "param": param}


# A batch of greedy requests (each also asked directly, to compare), sampled ones with seeds,
# a structured one, and two the server refuses per request.
prompts = ["Now is the winter", "of our discontent", "made glorious summer", "by this sun of York"]
good = [request(f"greedy-{i}", p, temperature=0) for i, p in enumerate(prompts)]
good += [request(f"seeded-{i}", p, temperature=1.0, seed=7) for i, p in enumerate(prompts)]
good.append(
    request(
        "structured",
        "Give a JSON object.",
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "o", "strict": True, "schema": {
            "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}}},
    )
)
bad = [request("bad-bias", "x", logit_bias={"not-a-token": 1}), request("bad-penalty", "x", presence_penalty=9)]
uploaded = client.files.create(file=("requests.jsonl", jsonl(good + bad)), purpose="batch")
seen["file"] = {"id": uploaded.id, "purpose": uploaded.purpose, "bytes": uploaded.bytes, "filename": uploaded.filename}
seen["file_listed"] = uploaded.id in [f.id for f in client.files.list().data]
seen["file_retrieved"] = client.files.retrieve(uploaded.id).bytes == uploaded.bytes
batch = client.batches.create(
    input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "nightly"}
)
seen["created"] = {"status": batch.status, "metadata": batch.metadata, "endpoint": batch.endpoint}
done, statuses = wait(batch.id)
seen["statuses"] = statuses
seen["counts"] = {"total": done.request_counts.total, "completed": done.request_counts.completed,
                  "failed": done.request_counts.failed}
seen["timestamps"] = all(t is not None for t in [done.in_progress_at, done.finalizing_at, done.completed_at])
output = lines_of(done.output_file_id)
errors = lines_of(done.error_file_id)
seen["output_ids"] = sorted(line["custom_id"] for line in output)
seen["error_lines"] = {line["custom_id"]: {"status": line["response"]["status_code"],
                                           "param": line["response"]["body"]["error"].get("param")} for line in errors}
by_id = {line["custom_id"]: line for line in output}
same = {}
for line in good:
    if line["custom_id"].startswith("structured"):
        continue
    direct = client.chat.completions.create(**line["body"])
    answered = by_id.get(line["custom_id"], {}).get("response", {}).get("body", {})
    same[line["custom_id"]] = answered.get("choices", [{}])[0].get("message", {}).get("content") == direct.choices[0].message.content
seen["same_as_direct"] = same
structured = by_id.get("structured", {}).get("response", {}).get("body", {})
try:
    seen["structured"] = json.loads(structured["choices"][0]["message"]["content"])
except (KeyError, ValueError) as error:
    seen["structured"] = f"{type(error).__name__}: {structured}"
seen["listed"] = batch.id in [b.id for b in client.batches.list(limit=100).data]

# A file whose lines do not validate: the batch fails, naming each bad line.
invalid = jsonl([request("a", "x"), {"custom_id": "b"}, request("a", "x")])
invalid_file = client.files.create(file=("invalid.jsonl", invalid), purpose="batch")
failed_batch = client.batches.create(input_file_id=invalid_file.id, endpoint="/v1/chat/completions", completion_window="24h")
failed, _ = wait(failed_batch.id)
seen["failed"] = {"status": failed.status,
                  "errors": [[e.code, e.line] for e in (failed.errors.data if failed.errors else [])]}

# A long batch cancelled while it runs: it ends cancelled with what it answered.
long = [request(f"long-{i}", "Now is the winter", max_tokens=900, ignore_eos=True, temperature=1.0) for i in range(400)]
long_file = client.files.create(file=("long.jsonl", jsonl(long)), purpose="batch")
running = client.batches.create(input_file_id=long_file.id, endpoint="/v1/chat/completions", completion_window="24h")
deadline = time.time() + 60
while client.batches.retrieve(running.id).status == "validating" and time.time() < deadline:
    time.sleep(0.05)
try:
    cancelling = client.batches.cancel(running.id)
except openai.APIStatusError as error:
    raise SystemExit(f"the long batch could not be cancelled: {error.status_code} {error.body}")
cancelled, cancel_statuses = wait(running.id)
answered = lines_of(cancelled.output_file_id)
seen["cancelled"] = {"first": cancelling.status, "status": cancelled.status, "total": cancelled.request_counts.total,
                     "completed": cancelled.request_counts.completed, "lines": len(answered),
                     "cancelled_at": cancelled.cancelled_at is not None}
refused("cancel_finished", lambda: client.batches.cancel(batch.id))

# Refusals, by field.
refused("purpose", lambda: client.files.create(file=("x.jsonl", jsonl([request("a", "x")])), purpose="fine-tune"))
refused("endpoint", lambda: client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"))
refused("window", lambda: client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="1h"))
refused("no_file", lambda: client.batches.create(input_file_id="file_0000", endpoint="/v1/chat/completions", completion_window="24h"))
refused("no_batch", lambda: client.batches.retrieve("batch_0000"))

# Deleting a file: gone from the list and from retrieval.
seen["deleted"] = client.files.delete(invalid_file.id).deleted
refused("deleted_file", lambda: client.files.retrieve(invalid_file.id))
seen["batch_id"] = batch.id
seen["output_file_id"] = done.output_file_id
print(json.dumps(seen))
