"""Tool calls through the real clients.

- The openai SDK's round trip on tiny-mistral (the real v3 tokenizer and its tool control
  tokens): the call, the tool's result, the answer. The conversation the server read is checked
  token for token against mistral-common's encoding of the same messages (vLLM's /tokenize
  shows our ids, and the answer's prompt_tokens ties them to what was served).
- More conversations (parallel calls, text results, unicode, several tools) against
  mistral-common the same way.
- Streamed tool-call deltas (the id and name, then the arguments as written), tool_choice (auto, none, required, a named function),
  parallel_tool_calls, and calls in /api/chat, streamed and not.
- ollama-python's chat(tools=…) on SmolLM2, whose template knows no tools: the server spells
  them out in `<tool_call>` form and reads the calls back.
"""
import json
import os
import re
from pathlib import Path

import jsonschema
import mistral_common
import ollama
import openai
import pytest
import requests
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from conftest import serve, stop

MODEL = "mistral:instruct"
SP_MODEL = Path(mistral_common.__file__).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"
CALL_ID = re.compile(r"[A-Za-z0-9]{9}")

WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time",
    "description": "The time now in a time zone",
    "parameters": {"type": "object",
                   "properties": {"zone": {"type": "string", "maxLength": 12},
                                  "hours": {"type": "integer", "minimum": 0, "maximum": 23}},
                   "required": ["zone", "hours"], "additionalProperties": False}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused")


@pytest.fixture(scope="module")
def mistral():
    return MistralTokenizer.from_file(str(SP_MODEL))


def mistral_common_ids(mistral, messages, tools):
    request = ChatCompletionRequest.from_openai(messages=messages, tools=tools)
    return mistral.encode_chat_completion(request).tokens


def our_ids(server, messages, tools):
    r = requests.post(server + "/tokenize", json={"model": MODEL, "messages": messages, "tools": tools})
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def check_call(call):
    """A call as OpenAI gives it: an id, a known function, arguments its schema accepts."""
    assert CALL_ID.fullmatch(call.id), call.id
    assert call.type == "function"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


def test_openai_round_trip_matches_mistral_common(server, client, mistral):
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                           tool_choice="required", temperature=0, max_tokens=200)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    check_call(call)
    # What the model was shown to get there is mistral-common's encoding of the request.
    assert first.usage.prompt_tokens == len(mistral_common_ids(mistral, messages, [WEATHER]))

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id,
                     "content": json.dumps({"temperature": 21, "sky": "clear"})})
    answer = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                            tool_choice="none", temperature=0, max_tokens=16)
    assert answer.choices[0].message.tool_calls is None
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.choices[0].finish_reason in ("stop", "length")

    expected = mistral_common_ids(mistral, messages, [WEATHER])
    assert our_ids(server, messages, [WEATHER]) == expected
    assert answer.usage.prompt_tokens == len(expected)
    # The call went back with its id, and the result with the same one.
    text = mistral.decode(expected, special_token_policy=SpecialTokenPolicy.KEEP).replace("▁", " ")
    assert f'"id": "{call.id}"' in text and f'"call_id": "{call.id}"' in text


def assistant_calls(*calls):
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        for call_id, name, args in calls]}


CONVERSATIONS = {
    "tools and one question": [{"role": "user", "content": "Weather in Oslo?"}],
    "history before the tools": [
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! "}, {"role": "user", "content": "Time in Tokyo?"}],
    "two calls, two results, an answer, a new question": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        assistant_calls(("abcDEF123", "get_weather", {"city": "Paris", "unit": "celsius"}),
                        ("xyz987654", "get_weather", {"city": "Rome", "unit": "celsius"})),
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "sunny"},
        {"role": "tool", "tool_call_id": "xyz987654", "content": '{"sky": "rain", "wind": [3, 4.5]}'},
        {"role": "assistant", "content": "Paris is sunny; Rome has rain."},
        {"role": "user", "content": "And Oslo?"}],
    "unicode and nested arguments": [
        {"role": "user", "content": "Heure à Zürich ? 🚀"},
        assistant_calls(("Zz9Yy8Xx7", "get_time", {"zone": "Europe/Zürich", "hours": 14})),
        {"role": "tool", "tool_call_id": "Zz9Yy8Xx7", "content": "14:05 « exact »"}],
}


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_conversations_with_tools_match_mistral_common(server, mistral, name):
    messages = CONVERSATIONS[name]
    tools = [WEATHER, TIME]
    assert our_ids(server, messages, tools) == mistral_common_ids(mistral, messages, tools)


def test_streamed_calls_arrive_as_openai_deltas(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Time in Oslo and Lima?"}],
        tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0.8, seed=7, max_tokens=80, stream=True, n=2)
    calls = {0: {}, 1: {}}
    reasons = {}
    for chunk in stream:
        for choice in chunk.choices:
            assert not choice.delta.content, "a forced call streams no text"
            for delta in choice.delta.tool_calls or []:
                call = calls[choice.index].setdefault(delta.index, {"id": "", "name": "", "arguments": "",
                                                                    "deltas": 0})
                call["id"] += delta.id or ""
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
                call["deltas"] += 1
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    assert reasons == {0: "tool_calls", 1: "tool_calls"}
    for per_choice in calls.values():
        # A named function is called once, whatever parallel_tool_calls says.
        assert list(per_choice) == [0]
        call = per_choice[0]
        assert CALL_ID.fullmatch(call["id"]) and call["name"] == "get_time"
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS["get_time"])
        # As OpenAI streams them: the id and name first, then the arguments in pieces.
        assert call["deltas"] > 2, call


def test_required_calls_follow_parallel_tool_calls(client):
    for parallel in (True, False):
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Weather everywhere?"}],
            tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=parallel,
            temperature=1.0, seed=11, max_tokens=120, n=4)
        for choice in r.choices:
            if choice.finish_reason == "length":
                continue  # a random model may still be writing its list
            assert choice.finish_reason == "tool_calls"
            assert choice.message.tool_calls, choice
            if not parallel:
                assert len(choice.message.tool_calls) == 1
            for call in choice.message.tool_calls:
                check_call(call)


def test_auto_gives_text_or_valid_calls_and_none_gives_text(client):
    outcomes = set()
    for seed in range(8):
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Weather in Rome?"}], tools=[WEATHER],
            temperature=1.0, seed=seed, max_tokens=48)
        choice = r.choices[0]
        if choice.message.tool_calls:
            outcomes.add("call")
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                check_call(call)
        else:
            outcomes.add("text")
            assert isinstance(choice.message.content, str)
            assert choice.finish_reason in ("stop", "length")
        none = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Weather in Rome?"}], tools=[WEATHER],
            tool_choice="none", temperature=1.0, seed=seed, max_tokens=16)
        assert none.choices[0].message.tool_calls is None
        assert none.choices[0].finish_reason in ("stop", "length")
    assert outcomes, "no request answered"


def test_api_chat_calls_streamed_and_not(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Weather in Oslo?"}],
            "tools": [WEATHER],
            # Without a repeat penalty the random model closes its list after one call.
            "options": {"tool_choice": "required", "temperature": 0, "repeat_penalty": 1.0, "num_predict": 200}}
    whole = requests.post(server + "/api/chat", json={**body, "stream": False}).json()
    assert whole["done_reason"] == "stop"
    (call,) = whole["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(call["function"]["arguments"], SCHEMAS["get_weather"])
    lines = [json.loads(line) for line in
             requests.post(server + "/api/chat", json={**body, "stream": True}).text.splitlines()]
    streamed = [c for line in lines for c in line.get("message", {}).get("tool_calls", [])]
    assert streamed == whole["message"]["tool_calls"]
    assert lines[-1]["done"] is True


def test_ollama_python_chat_with_tools_on_smollm2():
    proc, base = serve(dict(os.environ), "--model", os.environ["SMOLLM2_GGUF"], "--name", "smollm2")
    try:
        client = ollama.Client(host=base)

        def get_weather(city: str) -> str:
            """Get the current weather in a city.

            Args:
              city: The city's name

            Returns:
              The weather
            """
            return f"It is 21 degrees and sunny in {city}."

        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        # SmolLM2-135M does not call by itself (tried: 40 seeds); options.tool_choice forces it.
        r = client.chat(model="smollm2", messages=messages, tools=[get_weather],
                        options={"tool_choice": "required", "temperature": 0, "num_predict": 200})
        assert r.done_reason == "stop" and r.message.tool_calls
        for call in r.message.tool_calls:
            assert call.function.name == "get_weather"
            assert set(call.function.arguments) == {"city"}
            assert isinstance(call.function.arguments["city"], str)
        call = r.message.tool_calls[0]
        result = get_weather(**call.function.arguments)

        messages += [r.message, {"role": "tool", "content": result}]
        answer = client.chat(model="smollm2", messages=messages, tools=[get_weather],
                             options={"temperature": 0, "num_predict": 32})
        assert answer.message.content and not answer.message.tool_calls

        # Streamed, the call comes whole in one chunk.
        chunks = list(client.chat(model="smollm2", messages=messages[:1], tools=[get_weather], stream=True,
                                  options={"tool_choice": "required", "temperature": 0, "num_predict": 200}))
        streamed = [c for chunk in chunks for c in (chunk.message.tool_calls or [])]
        assert streamed == r.message.tool_calls
        assert chunks[-1].done

        # Ollama's show lists the capability.
        assert "tools" in requests.post(base + "/api/show", json={"model": "smollm2"}).json()["capabilities"]
    finally:
        assert stop(proc) == 0
