"""A prompt that takes seconds to read (a 1.3B random-weight model, 32-token prefill steps):
a streaming client sees bytes within a second on both APIs, heartbeats keep coming while the
prompt is read, and a client that hangs up mid-prefill is noticed and its sequence cancelled.
"""
import json
import os
import socket
import time

import pytest
import requests

from conftest import serve

PROMPT = "word " * 700


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
                              "messages": [{"role": "user", "content": PROMPT}]}),
    ("/api/generate", {"model": "big", "prompt": PROMPT, "options": {"num_predict": 1}}),
])
def test_bytes_flow_at_once_and_a_client_leaving_mid_prefill_is_cancelled(slow, path, body):
    sock = raw_post(slow, path, body)
    waited, opening = first_body_bytes(sock, timeout=5)
    assert waited < 1, f"first body bytes after {waited:.2f} s"
    assert opening, "a role chunk, an SSE comment or an empty NDJSON chunk"
    time.sleep(2.5)  # the prompt is still being read: heartbeats keep the stream alive
    assert stats(slow)["running"] == 1
    heard = sock.recv(65536)
    assert heard.count(b"\n") >= 2, f"heartbeats while the prompt is read: {heard!r}"

    sock.close()
    left = time.time()
    while stats(slow)["running"] != 0:
        assert time.time() - left < 1.5, "the hang-up is noticed and the sequence cancelled"
        time.sleep(0.05)
    steps = stats(slow)["steps"]
    time.sleep(1)
    assert stats(slow)["steps"] - steps <= 1, "the engine stops stepping that sequence"


def test_ollama_python_and_litellm_read_through_the_heartbeats(slow):
    """Each prompt is new (nothing cached), so each stream carries seconds of heartbeats (empty
    chunks on /api) before its text: both clients must read them as no text."""
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
    assert sum(1 for p in parts if not p.done and p.message.content == "") >= 3, "heartbeats"

    started = time.time()
    chunks = list(litellm.completion(model="ollama_chat/big", api_base=slow, messages=messages(),
                                     max_tokens=3, stream=True))
    assert time.time() - started > 3
    assert chunks and chunks[-1].choices[0].finish_reason is not None
