"""Structured output through the real clients, on SmolLM2 (real weights): OpenAI's
`response_format` (json_object, json_schema) and Ollama's `format` ("json", a schema), streamed
and not. Every generation must parse, and validate against its schema (Python `jsonschema`).

Per schema: 20 generations at temperature 0.8, five each way (/v1 and /api, streamed and not).
"""
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import ollama
import openai
import pytest

from conftest import serve, stop

SCHEMAS = {
    "nested object": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20},
                               "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "array of items": {
        "type": "object",
        "properties": {"colors": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                  "minItems": 1, "maxItems": 4}},
        "required": ["colors"],
        "additionalProperties": False,
    },
    "enums": {
        "type": "object",
        "properties": {"mood": {"enum": ["happy", "sad", "neutral"]},
                       "weather": {"type": "string", "enum": ["sunny", "rainy"]}},
        "required": ["mood", "weather"],
        "additionalProperties": False,
    },
    "bounded numbers": {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120},
                       "score": {"type": "number", "minimum": 0, "maximum": 1},
                       "active": {"type": "boolean"}},
        "required": ["age", "score", "active"],
        "additionalProperties": False,
    },
    "required and optional": {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 30},
                       "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                       "note": {"type": "string", "maxLength": 10}},
        "required": ["title", "year"],
        "additionalProperties": False,
    },
    "array of objects with refs": {
        "type": "object",
        "$defs": {"step": {"type": "object",
                           "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9},
                                          "do": {"type": "string", "maxLength": 15}},
                           "required": ["n", "do"], "additionalProperties": False}},
        "properties": {"steps": {"type": "array", "items": {"$ref": "#/$defs/step"},
                                 "minItems": 1, "maxItems": 3}},
        "required": ["steps"],
        "additionalProperties": False,
    },
}
PROMPT = "Describe something of your choice. Answer in JSON."
PER_WAY = 5
MAX_TOKENS = 200


@pytest.fixture(scope="module")
def smollm2():
    proc, base = serve(dict(os.environ), "--model", os.environ["SMOLLM2_GGUF"], "--name", "smollm2",
                       "--max-seqs", "16")
    yield base
    assert stop(proc) == 0


def openai_client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused")


def v1_texts(base, response_format, stream, max_tokens=MAX_TOKENS, reasons_out=None):
    """PER_WAY texts; each must have ended by itself unless `reasons_out` collects why they ended."""
    client = openai_client(base)
    messages = [{"role": "user", "content": PROMPT}]
    if not stream:
        r = client.chat.completions.create(model="smollm2", messages=messages, n=PER_WAY, temperature=0.8,
                                           max_tokens=max_tokens, response_format=response_format)
        reasons = [c.finish_reason for c in r.choices]
        if reasons_out is None:
            assert reasons == ["stop"] * PER_WAY, reasons
        else:
            reasons_out.extend(reasons)
        return [c.message.content for c in r.choices]
    texts, reasons = [""] * PER_WAY, [None] * PER_WAY
    for chunk in client.chat.completions.create(model="smollm2", messages=messages, n=PER_WAY,
                                                temperature=0.8, max_tokens=max_tokens,
                                                response_format=response_format, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            reasons[c.index] = c.finish_reason or reasons[c.index]
    if reasons_out is None:
        assert reasons == ["stop"] * PER_WAY, reasons
    else:
        reasons_out.extend(reasons)
    return texts


def api_texts(base, format, stream, max_tokens=MAX_TOKENS, reasons_out=None):
    client = ollama.Client(host=base)

    def one(seed):
        messages = [{"role": "user", "content": PROMPT}]
        options = {"temperature": 0.8, "num_predict": max_tokens, "seed": seed}
        if not stream:
            r = client.chat(model="smollm2", messages=messages, format=format, options=options)
            return r["message"]["content"], r["done_reason"]
        parts, last = [], None
        for part in client.chat(model="smollm2", messages=messages, format=format, options=options, stream=True):
            parts.append(part["message"]["content"])
            last = part
        assert last["done"], last
        return "".join(parts), last["done_reason"]

    with ThreadPoolExecutor(PER_WAY) as pool:
        results = list(pool.map(one, range(PER_WAY)))
    reasons = [reason for _, reason in results]
    if reasons_out is None:
        assert reasons == ["stop"] * PER_WAY, reasons
    else:
        reasons_out.extend(reasons)
    return [text for text, _ in results]


def is_json_prefix(text):
    """Whether `text` begins some JSON document: what an output cut at max_tokens under a JSON
    grammar must be. An open string, escape or literal is completed; then `json` must fail, if
    at all, only for want of more input (its error at the very end)."""
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
    done = text
    if in_string:
        unicode_escape = re.search(r"\\u([0-9a-fA-F]{0,3})$", text)
        if escaped:
            done += "n"
        elif unicode_escape:
            done += "0" * (4 - len(unicode_escape.group(1)))
        done += '"'
    else:
        literal = re.search(r"(t|tr|tru|f|fa|fal|fals|n|nu|nul)$", text)
        if literal:
            done += next(w for w in ("true", "false", "null") if w.startswith(literal.group(1)))[len(literal.group(1)):]
        elif re.search(r"(-|\d\.|\d[eE][+-]?)$", text):  # a number cut after its sign, point or exponent
            done += "0"
    try:
        json.loads(done)
        return True
    except json.JSONDecodeError as e:
        return e.pos >= len(done)


def check(texts, schema):
    for text in texts:
        value = json.loads(text)
        if schema is None:
            assert isinstance(value, dict), text
        else:
            jsonschema.validate(value, schema)


@pytest.mark.parametrize("name", SCHEMAS)
def test_schemas_through_both_apis_streamed_and_not(smollm2, name):
    schema = SCHEMAS[name]
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    texts = (v1_texts(smollm2, response_format, stream=False) + v1_texts(smollm2, response_format, stream=True)
             + api_texts(smollm2, schema, stream=False) + api_texts(smollm2, schema, stream=True))
    assert len(texts) == 20
    check(texts, schema)


def test_is_json_prefix():
    for good in ['{"a":"hel', '{"a":[1,2', '{"a"', '{', '{"a":tr', '{"a":-', '{"a":"x\\', '{"a":"\\u00', '{"a":1.5e',
                 '{"a":1.5e-', '{"a":false', '{"a":[true', '{"a":1.']:
        assert is_json_prefix(good), good
    for bad in ['Sure! {"a":1', '{"a" 1', '{"a":1}}', '{a:1', '```json']:
        assert not is_json_prefix(bad), bad


def test_any_json_object_through_both_apis(smollm2):
    # An object with no schema has no bound, and at temperature 0.8 this 135M model sometimes
    # writes one string or array until the budget ends. So: every output that ends by itself
    # is a JSON object, and every output cut at max_tokens is the beginning of one (the
    # grammar held to the last token); no server can close JSON the budget cut.
    fmt, reasons = {"type": "json_object"}, []
    texts = (v1_texts(smollm2, fmt, stream=False, reasons_out=reasons)
             + v1_texts(smollm2, fmt, stream=True, reasons_out=reasons)
             + api_texts(smollm2, "json", stream=False, reasons_out=reasons)
             + api_texts(smollm2, "json", stream=True, reasons_out=reasons))
    assert len(texts) == 20 and set(reasons) <= {"stop", "length"}, reasons
    assert reasons.count("stop") > 0, reasons
    for text, reason in zip(texts, reasons):
        if reason == "stop":
            assert isinstance(json.loads(text), dict), text
        else:
            assert is_json_prefix(text) and text.startswith("{"), text


def test_without_a_format_the_same_prompt_is_not_json(smollm2):
    # The premise of the tests above: SmolLM2 asked for JSON does not by itself give bare JSON.
    r = openai_client(smollm2).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": PROMPT}], n=5, temperature=0.8, max_tokens=60)
    def parses(text):
        try:
            json.loads(text)
            return True
        except ValueError:
            return False
    assert not all(parses(c.message.content) for c in r.choices)


def test_a_schema_that_cannot_compile_is_a_400_naming_the_field(smollm2):
    bad = {"type": "object", "properties": {"a": {"$ref": "#/$defs/nowhere"}}}
    with pytest.raises(openai.BadRequestError) as e:
        openai_client(smollm2).chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}})
    assert e.value.body["param"] == "response_format" and "schema" in e.value.body["message"]
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=smollm2).chat(model="smollm2", messages=[{"role": "user", "content": "x"}], format=bad)
    assert e.value.status_code == 400 and "format" in e.value.error
