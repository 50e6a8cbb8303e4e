"""litellm 1.53.1, the GitLab AI Gateway's version, sending the gateway's exact request shapes
as `custom_openai/mistral:instruct`."""
import litellm
import pytest
import requests

STOPS = ["[INST]", "[/INST]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]"]


@pytest.fixture
def call(server):
    def call(**kwargs):
        return litellm.completion(model="custom_openai/mistral:instruct", api_base=server + "/v1", api_key="None", **kwargs)
    return call


def test_code_completion(call):
    messages = [{"role": "system", "content": "You are a code completion tool."},
                {"role": "user", "content": "<s>[SUFFIX]    return total\n[PREFIX]def sum_list(xs):\n"}]
    r = call(messages=messages, max_tokens=128, n=1, stop=STOPS, temperature=0.0, stream=False)
    text = r.choices[0].message.content
    assert text and not any(s in text for s in STOPS)
    assert r.usage.prompt_tokens > 10 and r.usage.completion_tokens > 0
    chunks = list(call(messages=messages, max_tokens=128, n=1, stop=STOPS, temperature=0.0, stream=True,
                       stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text


def test_code_generation(call):
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Write a function that reverses a string."}]
    chunks = list(call(messages=messages, max_tokens=512, n=1, temperature=0.95, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert any(getattr(c, "usage", None) and c.usage.completion_tokens for c in chunks)


def test_duo_chat_continues_the_thought(call, server):
    messages = [{"role": "system", "content": "You are GitLab Duo Chat."},
                {"role": "user", "content": "How do I create an issue?"},
                {"role": "assistant", "content": "Thought: "}]
    chunks = list(call(messages=messages, max_tokens=4096, n=1, stop=["Observation:"], temperature=0.1, stream=True,
                       stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and "Observation:" not in text
    assert any(getattr(c, "usage", None) and c.usage.prompt_tokens for c in chunks)


def test_text_completion_path(server):
    """The gateway's text-completion path: a list of two prompts, one choice per prompt."""
    r = requests.post(server + "/v1/completions", json={
        "model": "mistral:instruct", "prompt": ["You are a code assistant.", "def f(x):"],
        "max_tokens": 16, "n": 1, "stop": STOPS, "temperature": 0.0}).json()
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert r["usage"]["completion_tokens"] > 0


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                   "required": ["city"], "additionalProperties": False}}}


def test_tool_calls_through_litellm(call):
    """Calls as litellm (the gateway's client) reads them, whole and rebuilt from a stream."""
    import json
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    # A named function is called once (litellm's custom_openai does not pass parallel_tool_calls).
    kwargs = dict(messages=messages, tools=[WEATHER], temperature=0.0, max_tokens=200,
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    r = call(**kwargs)
    assert r.choices[0].finish_reason == "tool_calls"
    (tool_call,) = r.choices[0].message.tool_calls
    assert tool_call.function.name == "get_weather"
    assert json.loads(tool_call.function.arguments)["city"] in ("Paris", "Rome")
    rebuilt = litellm.stream_chunk_builder(list(call(stream=True, **kwargs)), messages=messages)
    (streamed,) = rebuilt.choices[0].message.tool_calls
    assert (streamed.function.name, json.loads(streamed.function.arguments)) == \
        (tool_call.function.name, json.loads(tool_call.function.arguments))
    assert rebuilt.choices[0].finish_reason == "tool_calls"
