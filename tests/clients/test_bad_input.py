"""Malformed and hostile requests: each gets the right status in its API's error shape, and a
normal request right after it still works."""
import json

import pytest
import requests

from conftest import engine_idle

CHAT = {"model": "mistral:instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
LONG = "word " * 3000  # over the 2048-token context

V1_CASES = [
    ("bad json", "/v1/chat/completions", b"{not json", 400),
    ("empty body", "/v1/chat/completions", b"", 400),
    ("json array", "/v1/chat/completions", b"[]", 400),
    ("invalid utf-8", "/v1/chat/completions", b'{"model": "mistral:instruct", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400),
    ("no messages field", "/v1/chat/completions", {"model": "mistral:instruct"}, 400),
    ("no model", "/v1/chat/completions", {"messages": CHAT["messages"]}, 400),
    ("unknown model", "/v1/chat/completions", {**CHAT, "model": "gpt-9"}, 404),
    ("empty messages", "/v1/chat/completions", {**CHAT, "messages": []}, 400),
    ("unknown role", "/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("content wrong type", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": 42}]}, 400),
    ("image part", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400),
    ("messages not a list", "/v1/chat/completions", {**CHAT, "messages": "hi"}, 400),
    ("n=0", "/v1/chat/completions", {**CHAT, "n": 0}, 400),
    ("n=100", "/v1/chat/completions", {**CHAT, "n": 100}, 400),
    ("max_tokens -1", "/v1/chat/completions", {**CHAT, "max_tokens": -1}, 400),
    ("max_tokens string", "/v1/chat/completions", {**CHAT, "max_tokens": "ten"}, 400),
    ("temperature -1", "/v1/chat/completions", {**CHAT, "temperature": -1}, 400),
    ("temperature 5", "/v1/chat/completions", {**CHAT, "temperature": 5}, 400),
    ("top_p 0", "/v1/chat/completions", {**CHAT, "top_p": 0}, 400),
    ("top_p 2", "/v1/chat/completions", {**CHAT, "top_p": 2}, 400),
    ("presence 9", "/v1/chat/completions", {**CHAT, "presence_penalty": 9}, 400),
    ("1000 stop strings", "/v1/chat/completions", {**CHAT, "stop": [f"s{i}" for i in range(1000)]}, 400),
    ("stop wrong type", "/v1/chat/completions", {**CHAT, "stop": 5}, 400),
    ("prompt over context", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": LONG}]}, 400),
    ("stream not bool", "/v1/chat/completions", {**CHAT, "stream": "yes"}, 400),
    ("completion prompt over context", "/v1/completions", {"model": "mistral:instruct", "prompt": LONG}, 400),
    ("completion token out of vocab", "/v1/completions", {"model": "mistral:instruct", "prompt": [1, 99999999]}, 400),
    ("completion empty list", "/v1/completions", {"model": "mistral:instruct", "prompt": []}, 400),
    ("completion prompt object", "/v1/completions", {"model": "mistral:instruct", "prompt": {"a": 1}}, 400),
    ("unknown route", "/v1/audio/speech", {"model": "mistral:instruct", "input": "x"}, 404),
    # A chat model embeds (as Ollama's do); a model that cannot: test_decoder_embeddings.py.
    ("embeddings of no input", "/v1/embeddings", {"model": "mistral:instruct", "input": []}, 400),
    # Structured output that cannot be honoured, and known fields set to what we do not do.
    ("response_format unknown type", "/v1/chat/completions", {**CHAT, "response_format": {"type": "yaml"}}, 400),
    ("response_format no schema", "/v1/chat/completions", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 400),
    ("response_format bad schema", "/v1/chat/completions", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}}, 400),
    ("response_format string", "/v1/chat/completions", {**CHAT, "response_format": "json"}, 400),
    ("logprobs true", "/v1/chat/completions", {**CHAT, "logprobs": True}, 400),
    ("top_logprobs 3", "/v1/chat/completions", {**CHAT, "top_logprobs": 3}, 400),
    ("logit_bias", "/v1/chat/completions", {**CHAT, "logit_bias": {"42": 5}}, 400),
    # Tools that cannot be offered, and calls that cannot be made.
    ("tool of another type", "/v1/chat/completions", {**CHAT, "tools": [{"type": "retrieval"}]}, 400),
    ("tool without function", "/v1/chat/completions", {**CHAT, "tools": [{"type": "function"}]}, 400),
    ("tool name with spaces", "/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "get weather"}}]}, 400),
    ("tool parameters not a schema", "/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": "city"}}]}, 400),
    ("tool parameters bad schema", "/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}]}, 400),
    ("tool named twice", "/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}] * 2}, 400),
    ("tool_choice required without tools", "/v1/chat/completions", {**CHAT, "tool_choice": "required"}, 400),
    ("tool_choice unknown function", "/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400),
    ("tool_choice unknown word", "/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}, 400),
    ("tools on completions", "/v1/completions", {"model": "mistral:instruct", "prompt": "x", "tools": [{"type": "function", "function": {"name": "f"}}]}, 400),
    ("functions (deprecated)", "/v1/chat/completions", {**CHAT, "functions": [{"name": "f"}]}, 400),
    ("tool parameters of a string", "/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, 400),
    ("tool call arguments a number", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"id": "abcDEF123", "type": "function", "function": {"name": 7, "arguments": "{}"}}]}]}, 400),
    ("completion logprobs", "/v1/completions", {"model": "mistral:instruct", "prompt": "x", "logprobs": True}, 400),
]

# Off values of known fields and unknown extra fields pass, as on OpenAI-compatible servers.
V1_PASSING = [
    ("logprobs false", {**CHAT, "logprobs": False}),
    ("tools empty", {**CHAT, "tools": []}),
    ("tool_choice none", {**CHAT, "tool_choice": "none"}),
    ("tool_choice auto", {**CHAT, "tool_choice": "auto"}),
    ("tools with tool_choice none", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}),
    # Some clients send a call's arguments as the object rather than JSON text.
    ("tool call arguments as an object", {**CHAT, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "abcDEF123", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "done"}]}),
    ("response_format text", {**CHAT, "response_format": {"type": "text"}}),
    ("unknown extra field", {**CHAT, "some_vendor_extra": {"x": 1}, "metadata": {"a": "b"}}),
]

API_CASES = [
    ("bad json", "/api/generate", b"{", 400),
    ("unknown model", "/api/generate", {"model": "nope", "prompt": "hi"}, 404),
    ("unknown chat model", "/api/chat", {"model": "nope", "messages": []}, 404),
    ("unknown role", "/api/chat", {"model": "mistral:instruct", "messages": [{"role": "x", "content": "y"}]}, 400),
    ("options wrong type", "/api/generate", {"model": "mistral:instruct", "prompt": "hi", "options": {"temperature": "hot"}}, 400),
    ("prompt over context", "/api/generate", {"model": "mistral:instruct", "prompt": LONG, "stream": False}, 400),
    ("show unknown", "/api/show", {"model": "nope"}, 404),
    ("format xml", "/api/generate", {"model": "mistral:instruct", "prompt": "hi", "format": "xml"}, 400),
    ("format number", "/api/chat", {"model": "mistral:instruct", "messages": [{"role": "user", "content": "hi"}], "format": 3}, 400),
    ("format bad schema", "/api/chat", {"model": "mistral:instruct", "messages": [{"role": "user", "content": "hi"}], "format": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}, "stream": False}, 400),
    ("chat tool name with spaces", "/api/chat", {"model": "mistral:instruct", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "get weather"}}]}, 400),
    ("chat tool bad schema", "/api/chat", {"model": "mistral:instruct", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}], "stream": False}, 400),
    ("chat tool_choice unknown function", "/api/chat", {"model": "mistral:instruct", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}], "options": {"tool_choice": {"type": "function", "function": {"name": "g"}}}}, 400),
    ("images", "/api/generate", {"model": "mistral:instruct", "prompt": "hi", "images": ["aGk="]}, 400),
]


def post(base, path, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(base + path, data=data, headers={"Content-Type": "application/json"}, timeout=30)


def check_normal(base):
    r = post(base, "/v1/chat/completions", CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None


@pytest.mark.parametrize("name,path,body,status", V1_CASES, ids=[c[0] for c in V1_CASES])
def test_openai_errors(server, name, path, body, status):
    r = post(server, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) >= {"message", "type", "param", "code"}
    check_normal(server)


@pytest.mark.parametrize("name,path,body,status", API_CASES, ids=[c[0] for c in API_CASES])
def test_ollama_errors(server, name, path, body, status):
    r = post(server, path, body)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str)
    check_normal(server)


def test_oversized_body(server):
    r = post(server, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "x" * (9 << 20)}]})
    assert r.status_code == 413
    check_normal(server)


def test_prompt_over_context_names_the_counts(server):
    r = post(server, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": LONG}]})
    assert "2048" in r.json()["error"]["message"]


def test_max_tokens_past_context_stops_with_length(server):
    prompt = "word " * 2000
    r = post(server, "/v1/completions", {"model": "mistral:instruct", "prompt": prompt, "max_tokens": 500, "ignore_eos": True, "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] == 2048
    assert engine_idle(server)


@pytest.mark.parametrize("name,body", V1_PASSING, ids=[c[0] for c in V1_PASSING])
def test_off_values_and_unknown_fields_pass(server, name, body):
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] is not None


@pytest.mark.parametrize("field,body", [
    ("logprobs", {**CHAT, "logprobs": True}),
    ("tools", {**CHAT, "tools": [{"type": "function", "function": {"name": "f g"}}]}),
    ("tool_choice", {**CHAT, "tool_choice": "required"}),
    ("functions", {**CHAT, "functions": [{"name": "f"}]}),
    ("response_format", {**CHAT, "response_format": {"type": "yaml"}}),
])
def test_an_unhonoured_value_is_named(server, field, body):
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    assert field in r.json()["error"]["message"]


# The field an error names, on /v1 (OpenAI's `param`), wherever the check happens: the
# request's own rules, the engine's door (lengths, token ids, sampling ranges) or the template.
@pytest.mark.parametrize("field,path,body", [
    ("messages", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": LONG}]}),
    ("messages[1].role", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}]}),
    ("messages[0].content", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
    ("prompt", "/v1/completions", {"model": "mistral:instruct", "prompt": LONG}),
    ("prompt", "/v1/completions", {"model": "mistral:instruct", "prompt": [1, 99999999]}),
    ("prompt[1]", "/v1/completions", {"model": "mistral:instruct", "prompt": ["short", LONG], "max_tokens": 2}),
    ("prompt[1]", "/v1/completions", {"model": "mistral:instruct", "prompt": [[1, 2], [1, 99999999]], "max_tokens": 2}),
    ("top_p", "/v1/completions", {"model": "mistral:instruct", "prompt": "x", "top_p": 0}),
    ("min_p", "/v1/chat/completions", {**CHAT, "min_p": 3}),
    ("repeat_penalty", "/v1/chat/completions", {**CHAT, "repeat_penalty": -1}),
    ("temperature", "/v1/chat/completions", {**CHAT, "temperature": 5}),
    ("max_tokens", "/v1/chat/completions", {**CHAT, "max_tokens": 0}),
])
def test_errors_name_their_field(server, field, path, body):
    r = post(server, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field, r.text
    check_normal(server)
    assert engine_idle(server)


# Ollama's errors have no field; their message says what was wrong, and one API's range is
# not forced on the other: Ollama takes any temperature, OpenAI 0 to 2.
def test_ollama_errors_say_what_was_wrong_and_keep_ollamas_ranges(server):
    base = {"model": "mistral:instruct", "prompt": "hi", "stream": False}
    r = post(server, "/api/generate", {**base, "options": {"top_p": 0}})
    assert r.status_code == 400 and "top_p" in r.json()["error"], r.text
    r = post(server, "/api/generate", {**base, "raw": True, "prompt": LONG})
    assert r.status_code == 400 and "2048" in r.json()["error"], r.text
    r = post(server, "/api/generate", {**base, "options": {"temperature": 3, "num_predict": 2}})
    assert r.status_code == 200 and r.json()["done"], r.text
