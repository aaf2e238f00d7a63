"""Unmodified use of the official `openai` package against the factory's OpenAI-compatible API.

Usage: openai_client.py BASE_URL API_KEY DEPLOYMENT [EMBEDDING_DEPLOYMENT]. Prints one JSON
object with what it saw.
"""
import json
import sys

import openai

base_url, api_key, deployment = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
seen = {}

seen["models"] = [model.id for model in client.models.list()]

completion = client.completions.create(model=deployment, prompt="ROMEO:", max_tokens=8, temperature=0)
seen["completion"] = {
    "object": completion.object,
    "text": completion.choices[0].text,
    "finish_reason": completion.choices[0].finish_reason,
    "usage": completion.usage.model_dump(),
}

messages = [{"role": "system", "content": "You speak verse."}, {"role": "user", "content": "Speak of the king."}]
chat = client.chat.completions.create(model=deployment, messages=messages, max_tokens=12, temperature=0)
seen["chat"] = {
    "object": chat.object,
    "role": chat.choices[0].message.role,
    "content": chat.choices[0].message.content,
    "finish_reason": chat.choices[0].finish_reason,
    "usage": chat.usage.model_dump(),
}

stream = client.chat.completions.create(
    model=deployment,
    messages=messages,
    max_tokens=12,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, finish, usage, chunks = [], None, None, 0
for chunk in stream:
    chunks += 1
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
seen["stream"] = {"content": "".join(pieces), "finish_reason": finish, "usage": usage, "chunks": chunks}

seeded = [
    client.chat.completions.create(model=deployment, messages=messages, max_tokens=10, temperature=1.2, seed=42)
    .choices[0]
    .message.content
    for _ in range(2)
]
seen["seeded_equal"] = seeded[0] == seeded[1]

# Penalties and logit bias, greedy so that only they change the answer.
plain = client.completions.create(model=deployment, prompt="ROMEO:", max_tokens=12, temperature=0)
penalized = client.completions.create(
    model=deployment, prompt="ROMEO:", max_tokens=12, temperature=0, frequency_penalty=2.0, presence_penalty=1.0
)
one = client.completions.create(model=deployment, prompt="ROMEO:", max_tokens=1, temperature=0, logit_bias={"70": 100})
forced = client.completions.create(model=deployment, prompt="ROMEO:", max_tokens=5, temperature=0, logit_bias={"70": 100})
seen["sampling"] = {
    "plain": plain.choices[0].text,
    "penalized": penalized.choices[0].text,
    "forced_one": one.choices[0].text,
    "forced": forced.choices[0].text,
}

# Log-probabilities: chat's content entries (whole and streamed) and the completions API's lists.
chat_lp = client.chat.completions.create(
    model=deployment, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
)
streamed_lp = []
for chunk in client.chat.completions.create(
    model=deployment, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, stream=True
):
    for choice in chunk.choices:
        if choice.logprobs and choice.logprobs.content:
            streamed_lp.extend(choice.logprobs.content)
completion_lp = client.completions.create(model=deployment, prompt="ROMEO:", max_tokens=6, temperature=0, logprobs=2)
entries = chat_lp.choices[0].logprobs.content
seen["logprobs"] = {
    "content": chat_lp.choices[0].message.content,
    "completion_tokens": chat_lp.usage.completion_tokens,
    "chat": [
        {"token": e.token, "logprob": e.logprob, "bytes": e.bytes, "top": [[t.token, t.logprob] for t in e.top_logprobs]}
        for e in entries
    ],
    "streamed": [[e.token, e.logprob] for e in streamed_lp],
    "completion_text": completion_lp.choices[0].text,
    "completion": completion_lp.choices[0].logprobs.model_dump(),
}

errors = {}
for name, extra in [
    ("bad_bias_key", {"logit_bias": {"king": 3}}),
    ("bad_bias_token", {"logit_bias": {"999999": 3}}),
    ("bad_bias_value", {"logit_bias": {"7": 101}}),
    ("bad_presence", {"presence_penalty": 2.5}),
    ("bad_frequency", {"frequency_penalty": -3}),
    ("bad_top_logprobs", {"logprobs": 21}),
]:
    try:
        client.completions.create(model=deployment, prompt="ROMEO:", max_tokens=2, **extra)
    except openai.BadRequestError as error:
        errors[name] = {"status": error.status_code, "param": error.param}
try:
    client.chat.completions.create(model="no-such-deployment", messages=messages)
except openai.NotFoundError as error:
    errors["unknown_model"] = {"status": error.status_code, "message": error.message}
try:
    client.chat.completions.create(model=deployment, messages=messages, n=99)
except openai.BadRequestError as error:
    errors["bad_n"] = {"status": error.status_code, "param": error.param}
try:
    openai.OpenAI(base_url=base_url, api_key="fk_not_a_key", max_retries=0).models.list()
except openai.AuthenticationError as error:
    errors["bad_key"] = {"status": error.status_code}
seen["errors"] = errors

# n answers to one prompt: sampled choices each with their index, greedy ones alike, a stream
# that interleaves them reassembled equal to the whole answer, the prompt counted once.
single = client.chat.completions.create(model=deployment, messages=messages, max_tokens=8, temperature=0)
# ignore_eos: each choice is 8 tokens long, so the usage must sum them (24).
many = client.chat.completions.create(
    model=deployment, messages=messages, max_tokens=8, temperature=1.0, seed=9, n=3, extra_body={"ignore_eos": True}
)
greedy = client.chat.completions.create(model=deployment, messages=messages, max_tokens=8, temperature=0, n=2)
streamed = {}
for chunk in client.chat.completions.create(
    model=deployment, messages=messages, max_tokens=8, temperature=1.0, seed=9, n=3, stream=True,
    stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
):
    for choice in chunk.choices:
        streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    if chunk.usage:
        streamed_usage = chunk.usage.model_dump()
seen["choices"] = {
    "indexes": [c.index for c in many.choices],
    "texts": [c.message.content for c in many.choices],
    "streamed": [streamed[i] for i in sorted(streamed)],
    "greedy": [c.message.content for c in greedy.choices],
    "single": single.choices[0].message.content,
    "prompt_tokens": [single.usage.prompt_tokens, many.usage.prompt_tokens, streamed_usage["prompt_tokens"]],
    "completion_tokens": [many.usage.completion_tokens, streamed_usage["completion_tokens"]],
}

# Prefix caching: a long system prompt's keys and values are reused by the next request that
# shares it, reported as cached prompt tokens; a repeated greedy request answers the same.
system = {"role": "system", "content": "You answer for the ministry, briefly and in plain words. " * 4}
conversation = [system, {"role": "user", "content": "Speak."}]
first = client.chat.completions.create(model=deployment, messages=conversation, max_tokens=6, temperature=0)
second = client.chat.completions.create(model=deployment, messages=conversation, max_tokens=6, temperature=0)
other = client.chat.completions.create(
    model=deployment, messages=[system, {"role": "user", "content": "Say more."}], max_tokens=6, temperature=0
)
seen["prefix"] = {
    "prompt_tokens": first.usage.prompt_tokens,
    "cached": [r.usage.prompt_tokens_details.cached_tokens for r in (first, second, other)],
    "same": first.choices[0].message.content == second.choices[0].message.content,
}

if len(sys.argv) > 4:
    sentences = ["The quick brown fox jumps over the lazy dog.", "Die Würde des Menschen ist unantastbar."]
    embedded = client.embeddings.create(model=sys.argv[4], input=sentences)
    seen["embeddings"] = [item.embedding for item in embedded.data]
    seen["embedding_tokens"] = embedded.usage.prompt_tokens
    single = client.embeddings.create(model=sys.argv[4], input=sentences[0], encoding_format="float")
    seen["embedding_float"] = single.data[0].embedding
    try:
        client.embeddings.create(model=deployment, input="text")
    except openai.BadRequestError as error:
        errors["embed_on_generator"] = {"status": error.status_code}

print(json.dumps(seen))
