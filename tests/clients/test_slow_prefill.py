"""A prompt that takes seconds to read (a 1.3B random-weight model, 32-token prefill steps):
a streaming client sees bytes within a second on both APIs, heartbeats keep coming while the
prompt is read (SSE comments on /v1; spaces with no newline on /api, which lead the next JSON
line), the stats show the running prompt, and a client that hangs up mid-prefill is noticed
and its sequence cancelled.
"""
import json
import os
import socket
import time

import pytest
import requests

from conftest import serve

PROMPT = "word " * 700
# Long enough that reading it outlasts the checks below on a fast machine too (~5 s here).
LONG_PROMPT = "word " * 1600


@pytest.fixture(scope="module")
def slow():
    proc, base = serve(dict(os.environ), "--model", "random:mistral-1b:q4_0", "--name", "big",
                       "--max-batch-tokens", "32")
    yield base
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def stats(base):
    return requests.get(base + "/ferrollama/stats").json()


def raw_post(base, path, body):
    """Sends a request on a plain socket, so that the test can hang up whenever it likes."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def first_body_bytes(sock, timeout):
    """Reads until the first bytes after the headers; returns (seconds waited, what came)."""
    sock.settimeout(timeout)
    started, got = time.time(), b""
    while b"\r\n\r\n" not in got or got.endswith(b"\r\n\r\n"):
        got += sock.recv(4096)
    return time.time() - started, got.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"model": "big", "stream": True, "max_tokens": 1,
                              "messages": [{"role": "user", "content": LONG_PROMPT}]}),
    ("/api/generate", {"model": "big", "prompt": LONG_PROMPT, "options": {"num_predict": 1}}),
])
def test_bytes_flow_at_once_and_a_client_leaving_mid_prefill_is_cancelled(slow, path, body):
    sock = raw_post(slow, path, body)
    waited, opening = first_body_bytes(sock, timeout=5)
    assert waited < 1, f"first body bytes after {waited:.2f} s"
    assert opening, "a role chunk, an SSE comment or an empty NDJSON chunk"
    time.sleep(2.5)  # the prompt is still being read: heartbeats keep the stream alive
    assert stats(slow)["running"] == 1, "the stats show the prompt being read"
    heard = sock.recv(65536)
    if path.startswith("/v1"):
        assert heard.count(b"\n") >= 2, f"heartbeats while the prompt is read: {heard!r}"
    else:
        # Chunked transfer: each heartbeat is a one-byte chunk holding a space.
        assert heard.count(b"1\r\n \r\n") >= 2 and b"{" not in heard, \
            f"heartbeats while the prompt is read, spaces and no line: {heard!r}"

    sock.close()
    left = time.time()
    while stats(slow)["running"] != 0:
        assert time.time() - left < 1.5, "the hang-up is noticed and the sequence cancelled"
        time.sleep(0.05)
    steps = stats(slow)["steps"]
    time.sleep(1)
    assert stats(slow)["steps"] - steps <= 1, "the engine stops stepping that sequence"


def test_ollama_python_and_litellm_read_through_the_heartbeats(slow):
    """Each prompt is new (nothing cached), so each stream carries seconds of heartbeats before
    its text: ollama-python and litellm (1.53.1, the AI Gateway's: its `ollama/` provider reads
    /api/generate, `ollama_chat/` /api/chat) must read through them, streamed and not."""
    import uuid

    import litellm
    import ollama

    def messages():
        return [{"role": "user", "content": f"{uuid.uuid4().hex} {PROMPT}"}]

    started = time.time()
    parts = list(ollama.Client(host=slow).chat(model="big", messages=messages(), stream=True,
                                               options={"num_predict": 3}))
    assert time.time() - started > 3, "the prompt took seconds: heartbeats went out"
    assert parts[-1].done and parts[-1].eval_count >= 1
    parts = list(ollama.Client(host=slow).generate(model="big", prompt=messages()[0]["content"],
                                                   stream=True, options={"num_predict": 3}))
    assert parts[-1].done and parts[-1].eval_count >= 1

    started = time.time()
    chunks = list(litellm.completion(model="ollama_chat/big", api_base=slow, messages=messages(),
                                     max_tokens=3, stream=True))
    assert time.time() - started > 3
    assert chunks and chunks[-1].choices[0].finish_reason is not None

    for stream in (True, False):
        started = time.time()
        reply = litellm.completion(model="ollama/big", api_base=slow, messages=messages(),
                                   max_tokens=3, stream=stream)
        if stream:
            chunks = list(reply)
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            assert chunks[-1].choices[0].finish_reason is not None
        else:
            text = reply.choices[0].message.content
        assert time.time() - started > 3, "the prompt took seconds"
        assert text, f"ollama/ (stream={stream}): text arrives"


def test_a_client_leaving_mid_chunk_stops_the_engine_between_layers(tmp_path):
    """One long prompt chunk (1,000 tokens of a 1.3B model: seconds on 2 cores): a hang-up
    during it ends the step between layers, not at the chunk's end."""
    proc, base = serve(dict(os.environ), "--model", "random:mistral-1b:q4_0", "--name", "big",
                       "--max-batch-tokens", "1024")
    try:
        body = {"model": "big", "prompt": "word " * 1000, "options": {"num_predict": 1}}
        started = time.time()
        requests.post(base + "/api/generate", json={**body, "stream": False})
        chunk = time.time() - started
        assert chunk > 2, f"one chunk took {chunk:.1f} s: too fast to tell"
        sock = raw_post(base, "/api/generate", {**body, "prompt": "other " * 1000})
        first_body_bytes(sock, timeout=5)
        time.sleep(0.5)
        assert stats(base)["running"] == 1
        sock.close()
        left = time.time()
        while stats(base)["running"] != 0:
            time.sleep(0.02)
        freed = time.time() - left
        assert freed < chunk / 2, f"freed {freed:.1f} s after the hang-up; a chunk is {chunk:.1f} s"
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
