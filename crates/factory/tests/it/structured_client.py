"""Structured outputs through the official `openai` client: every answer to a set of schemas,
whole and streamed, sampled from a barely trained model, is checked with `jsonschema`; the
SDK's `parse` with a Pydantic model; unsupported schema features refused by name. Prints what it
saw as JSON for the Rust test to assert on."""

import json
import sys

import jsonschema
import openai
import pydantic

base_url, api_key, deployment = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
messages = [{"role": "user", "content": "Describe a person as JSON."}]


def strict(properties, required=None):
    return {
        "type": "object",
        "properties": properties,
        "required": required if required is not None else list(properties),
        "additionalProperties": False,
    }


SCHEMAS = {
    "nested": strict(
        {
            "name": {"type": "string"},
            "address": strict({"city": {"type": "string", "maxLength": 16}, "zip": {"type": "integer"}}),
        }
    ),
    "arrays": strict(
        {
            "scores": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4},
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}, "maxItems": 2},
        }
    ),
    "enums": strict({"colour": {"enum": ["red", "green", "blue"]}, "size": {"type": "string", "enum": ["S", "M", "L"]}}),
    "required": strict(
        {"id": {"type": "integer"}, "note": {"type": "string", "maxLength": 12}, "flag": {"type": "boolean"}},
        required=["id"],
    ),
    "bounds": strict(
        {
            "age": {"type": "integer", "minimum": 18, "maximum": 65},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "level": {"type": "integer", "minimum": -3, "maximum": 3},
        }
    ),
    "any_of": strict(
        {
            "value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 100}, {"type": "null"}, strict({"ok": {"type": "boolean"}})]},
        }
    ),
}

seen = {"answers": {}, "errors": {}}
for name, schema in SCHEMAS.items():
    response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    results = []
    for seed in range(3):
        whole = client.chat.completions.create(
            model=deployment, messages=messages, max_tokens=200, temperature=1.0, seed=seed, response_format=response_format
        )
        text = whole.choices[0].message.content
        streamed = ""
        for chunk in client.chat.completions.create(
            model=deployment,
            messages=messages,
            max_tokens=200,
            temperature=1.0,
            seed=seed,
            response_format=response_format,
            stream=True,
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                streamed += chunk.choices[0].delta.content
        for form, answer in (("whole", text), ("streamed", streamed)):
            try:
                jsonschema.validate(json.loads(answer), schema)
                valid = True
            except (ValueError, jsonschema.ValidationError) as error:
                valid = f"{type(error).__name__}: {error}"[:300]
            results.append({"form": form, "text": answer, "valid": valid, "finish_reason": whole.choices[0].finish_reason})
        results.append({"form": "stream_equals_whole", "valid": streamed == text, "text": streamed})
    seen["answers"][name] = results

# Any JSON object.
obj = client.chat.completions.create(
    model=deployment, messages=messages, max_tokens=200, temperature=1.0, seed=7, response_format={"type": "json_object"}
)
try:
    seen["json_object"] = isinstance(json.loads(obj.choices[0].message.content), dict)
except ValueError as error:
    seen["json_object"] = f"{error}: {obj.choices[0].message.content}"


# The SDK's parse with a Pydantic model (strict: every field required, no others).
class Address(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=16)
    floor: int = pydantic.Field(ge=0, le=40)


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    adult: bool
    address: Address


parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
parsed = parse(model=deployment, messages=messages, max_tokens=200, temperature=1.0, seed=1, response_format=Person)
person = parsed.choices[0].message.parsed
seen["parsed"] = person.model_dump() if person is not None else None

# What cannot be enforced is refused, naming the keyword and the parameter.
for name, format in {
    "unsupported": {"type": "json_schema", "json_schema": {"name": "u", "schema": {"type": "array", "uniqueItems": True}}},
    "no_schema": {"type": "json_schema", "json_schema": {"name": "n"}},
    "bad_type": {"type": "yaml"},
}.items():
    try:
        client.chat.completions.create(model=deployment, messages=messages, max_tokens=5, response_format=format)
        seen["errors"][name] = "accepted"
    except openai.BadRequestError as error:
        seen["errors"][name] = {"status": error.status_code, "param": error.body.get("param"), "message": error.message}

print(json.dumps(seen))
