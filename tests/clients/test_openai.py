"""The OpenAI Python SDK against ferrollama's /v1."""
import uuid

import openai
import pytest
import requests

from conftest import engine_idle


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="None")


MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi."}]


def test_chat(client, server):
    r = client.chat.completions.create(model="mistral:instruct", messages=MESSAGES, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert engine_idle(server)


def test_cached_tokens_count_the_prompt_blocks_found_in_the_prefix_cache(client):
    # A fresh prompt (its first block is new) finds nothing; the same prompt again finds every
    # full 16-token block but the one holding its last token, which must be computed.
    messages = [{"role": "user", "content": f"{uuid.uuid4().hex} " + "count the blocks " * 10}]
    first, again = [client.chat.completions.create(
        model="mistral:instruct", messages=messages, max_tokens=2, temperature=0) for _ in range(2)]
    assert first.usage.prompt_tokens > 40
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens_details.cached_tokens == (again.usage.prompt_tokens - 1) // 16 * 16


def test_chat_stream_with_usage(client):
    full = client.chat.completions.create(model="mistral:instruct", messages=MESSAGES, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(
        model="mistral:instruct", messages=MESSAGES, max_tokens=16, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_n_choices(client):
    r = client.chat.completions.create(model="mistral:instruct", messages=MESSAGES, max_tokens=8, n=3, temperature=1.0, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content for c in r.choices)
    assert len({c.message.content for c in r.choices}) > 1, "three samples differ"


def test_completions(client):
    r = client.completions.create(model="mistral:instruct", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="mistral:instruct", prompt="The capital of France is", max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_completions_prompt_list_gives_one_choice_each(client):
    r = client.completions.create(model="mistral:instruct", prompt=["You are a code assistant.", "def add(a, b):"],
                                  max_tokens=6, temperature=0, stop=["\n\n"])
    assert [c.index for c in r.choices] == [0, 1]
    single = client.completions.create(model="mistral:instruct", prompt="def add(a, b):", max_tokens=6, temperature=0, stop=["\n\n"])
    assert r.choices[1].text == single.choices[0].text


def test_models(client, server):
    ids = [m.id for m in client.models.list().data]
    assert "mistral:instruct" in ids
    assert client.models.retrieve("mistral:instruct").id == "mistral:instruct"
    r = requests.get(server + "/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_http_reply_equals_engine_reply(client, server):
    """No template drift: /v1 chat and /api/chat give the same greedy reply."""
    a = client.chat.completions.create(model="mistral:instruct", messages=MESSAGES, max_tokens=20, temperature=0)
    b = requests.post(server + "/api/chat", json={"model": "mistral:instruct", "messages": MESSAGES, "stream": False,
                                                  "options": {"temperature": 0, "num_predict": 20, "repeat_penalty": 1.0}}).json()
    assert a.choices[0].message.content == b["message"]["content"]


def test_http_reply_equals_cli_engine_reply(client):
    """The same conversation through `ferrollama run` (the engine directly) and through HTTP."""
    import os
    import subprocess
    from conftest import ROOT
    binary = os.environ.get("FERROLLAMA_BIN", str(ROOT / "target/release/ferrollama"))
    out = subprocess.run([binary, "run", str(ROOT / "models/fixtures/tiny-mistral"), "Say hi.", "--system", "You are terse.",
                          "--max-tokens", "20"], capture_output=True, text=True, check=True).stdout
    http = client.chat.completions.create(model="mistral:instruct", messages=MESSAGES, max_tokens=20, temperature=0)
    assert out.removesuffix("\n") == http.choices[0].message.content
