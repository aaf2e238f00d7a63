"""Tool calling through the official `openai` client against a barely trained model: calls
required, named, single or parallel, automatic or refused; every call's arguments validated
against its function's schema with `jsonschema`; the streamed calls (index, id, name, argument
fragments) reassembled equal to the whole answer's; a full agent loop. Prints what it saw."""

import json
import sys

import jsonschema
import openai

base_url, api_key, deployment = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": -100, "maximum": 100}, "b": {"type": "integer", "minimum": -100, "maximum": 100}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The forecast for a city.", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Adds two integers.", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
messages = [{"role": "user", "content": "What is 2 plus 3, and the weather in Oslo?"}]
seen = {"errors": {}}


def check_calls(message):
    """Each call: a known function, arguments valid under its schema; a list of problems."""
    problems = []
    for call in message.tool_calls or []:
        if call.function.name not in SCHEMAS:
            problems.append(f"unknown function {call.function.name}")
            continue
        try:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        except (ValueError, jsonschema.ValidationError) as error:
            problems.append(f"{call.function.name}: {type(error).__name__}: {str(error)[:200]}")
    return problems


def ask(**extra):
    options = {"model": deployment, "messages": messages, "tools": TOOLS, "max_tokens": 300, "temperature": 1.0}
    options.update(extra)
    return client.chat.completions.create(**options)


def summary(response):
    choice = response.choices[0]
    calls = choice.message.tool_calls or []
    return {
        "finish_reason": choice.finish_reason,
        "content": choice.message.content,
        "calls": [{"id": c.id, "type": c.type, "name": c.function.name, "arguments": c.function.arguments} for c in calls],
        "problems": check_calls(choice.message),
    }


seen["required"] = [summary(ask(tool_choice="required", seed=seed)) for seed in range(4)]
seen["named"] = [
    summary(ask(tool_choice={"type": "function", "function": {"name": "add"}}, seed=seed)) for seed in range(3)
]
seen["single"] = [summary(ask(tool_choice="required", parallel_tool_calls=False, seed=seed)) for seed in range(3)]
seen["auto"] = [summary(ask(seed=seed)) for seed in range(4)]
seen["none"] = [summary(ask(tool_choice="none", seed=seed, max_tokens=20)) for seed in range(2)]

# Streamed as OpenAI streams them: the first chunk of a call has its index, id and name, later
# ones argument fragments; reassembled, the same calls as the whole answer with the same seed.
for seed in range(3):
    whole = summary(ask(tool_choice="required", seed=100 + seed))
    calls = {}
    finish = None
    chunks = 0
    for chunk in ask(tool_choice="required", seed=100 + seed, stream=True):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            chunks += 1
            call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                call["id"] = delta.id
            if delta.function and delta.function.name:
                call["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
    streamed = [calls[i] for i in sorted(calls)]
    seen.setdefault("streamed", []).append(
        {
            "equal": [(c["name"], c["arguments"]) for c in streamed] == [(c["name"], c["arguments"]) for c in whole["calls"]],
            "ids": all(c["id"] and c["id"].startswith("call_") for c in streamed),
            "finish_reason": finish,
            "chunks": chunks,
            "calls": len(streamed),
            "whole": whole,
            "streamed": streamed,
        }
    )

# The agent loop: the model calls a tool, the client runs it and sends the result back, and the
# model answers in words.
first = ask(tool_choice={"type": "function", "function": {"name": "add"}}, seed=5, parallel_tool_calls=False)
call = first.choices[0].message.tool_calls[0]
arguments = json.loads(call.function.arguments)
result = arguments["a"] + arguments["b"]
conversation = messages + [
    first.choices[0].message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sum": result})},
]
final = client.chat.completions.create(
    model=deployment, messages=conversation, tools=TOOLS, tool_choice="none", max_tokens=16, temperature=0
)
seen["loop"] = {
    "call": {"name": call.function.name, "arguments": arguments},
    "result": result,
    "final": summary(final),
}

for name, extra in {
    "unknown_function": {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
    "bad_tool": {"tools": [{"type": "function", "function": {"name": "has space"}}]},
    "choice_without_tools": {"tools": None, "tool_choice": "required"},
}.items():
    options = {"model": deployment, "messages": messages, "tools": TOOLS, "max_tokens": 5}
    options.update(extra)
    options = {k: v for k, v in options.items() if v is not None}
    try:
        client.chat.completions.create(**options)
        seen["errors"][name] = "accepted"
    except openai.BadRequestError as error:
        seen["errors"][name] = {"status": error.status_code, "param": error.body.get("param")}

print(json.dumps(seen))
