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
