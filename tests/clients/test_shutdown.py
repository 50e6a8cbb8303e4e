"""Production behaviour through the real server: SIGTERM drains (running streams end with a
final event, the process exits 0), a full queue answers 503 with Retry-After while the queued
requests still complete, and health and readiness answer.
"""
import os
import signal
import threading
import time

import requests

from conftest import ROOT, serve

TINY = str(ROOT / "models/fixtures/tiny-mistral")


def long_stream(base, out, index):
    """A streaming completion too long to finish soon; its SSE data lines land in out[index]."""
    reply = requests.post(base + "/v1/completions", stream=True, timeout=60, json={
        "model": "tiny", "prompt": "Count", "max_tokens": 2000, "ignore_eos": True,
        "stream": True})
    out[index] = [line for line in reply.iter_lines() if line]


def test_sigterm_ends_running_streams_with_a_final_event_and_exits_0():
    proc, base = serve(dict(os.environ), "--model", TINY, "--name", "tiny", "--drain-timeout", "1s")
    streams = [None] * 10
    threads = [threading.Thread(target=long_stream, args=(base, streams, i)) for i in range(10)]
    for t in threads:
        t.start()
    deadline = time.time() + 30
    while requests.get(base + "/ferrollama/stats").json()["running"] < 10:
        assert time.time() < deadline, "the ten streams did not start"
        time.sleep(0.05)

    proc.send_signal(signal.SIGTERM)
    started = time.time()
    assert proc.wait(timeout=10) == 0, "a drained server exits 0"
    assert time.time() - started < 1 + 3, "within the drain timeout (and the final events' send)"
    for t in threads:
        t.join(timeout=10)
    for lines in streams:
        assert lines is not None and lines[-1] == b"data: [DONE]", lines and lines[-3:]
        assert any(b"the server is shutting down" in line for line in lines), lines[-3:]
        assert any(b'"finish_reason":"stop"' in line for line in lines[-3:]), lines[-3:]


def test_a_full_queue_answers_503_with_retry_after_and_the_queued_requests_complete():
    proc, base = serve(dict(os.environ), "--model", TINY, "--name", "tiny", "--max-seqs", "1",
                       "--max-queue", "2")
    try:
        busy = requests.post(base + "/v1/completions", stream=True, timeout=60, json={
            "model": "tiny", "prompt": "Count", "max_tokens": 2000, "ignore_eos": True,
            "stream": True})
        lines = busy.iter_lines()  # kept: a dropped iterator closes the connection
        assert next(line for line in lines if line.startswith(b"data: ")), "it is generating"

        queued = [None, None]

        def ask(i):
            queued[i] = requests.post(base + "/api/generate", timeout=60, json={
                "model": "tiny", "prompt": "Hi", "stream": False, "options": {"num_predict": 3}})

        waiters = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for w in waiters:
            w.start()
        deadline = time.time() + 10
        while requests.get(base + "/ferrollama/stats").json()["waiting"] < 2:
            assert time.time() < deadline, "the two requests did not queue"
            time.sleep(0.05)

        full = requests.post(base + "/api/generate", json={"model": "tiny", "prompt": "Hi"})
        assert full.status_code == 503 and full.headers["Retry-After"] == "1"
        assert "maximum pending requests exceeded" in full.json()["error"]
        openai_full = requests.post(base + "/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "Hi"}]})
        assert openai_full.status_code == 503 and openai_full.headers["Retry-After"] == "1"
        assert openai_full.json()["error"]["type"] == "server_error"

        busy.close()  # the running request goes; the queued ones run
        for w in waiters:
            w.join(timeout=60)
        assert [r.status_code for r in queued] == [200, 200]
        assert all(r.json()["done"] and r.json()["eval_count"] >= 1 for r in queued)
        after = requests.post(base + "/api/generate", json={
            "model": "tiny", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}})
        assert after.status_code == 200, "the queue frees as requests leave it"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_health_and_readiness(server):
    assert requests.get(server + "/health").json() == {"status": "ok"}
    ready = requests.get(server + "/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_a_request_past_the_request_timeout_ends_with_a_reason_and_is_cancelled():
    proc, base = serve(dict(os.environ), "--model", TINY, "--name", "tiny",
                       "--request-timeout", "1s")
    try:
        started = time.time()
        lines = [None]
        long_stream(base, lines, 0)
        assert time.time() - started < 5
        assert lines[0][-1] == b"data: [DONE]"
        assert any(b"--request-timeout (1 s)" in line for line in lines[0])
        whole = requests.post(base + "/api/generate", json={
            "model": "tiny", "prompt": "Count", "stream": False, "options": {"num_predict": 100000}})
        assert whole.status_code == 500 and "--request-timeout" in whole.json()["error"]
        deadline = time.time() + 2
        while requests.get(base + "/ferrollama/stats").json()["running"] != 0:
            assert time.time() < deadline, "the timed-out requests are cancelled"
            time.sleep(0.05)
        short = requests.post(base + "/api/generate", json={
            "model": "tiny", "prompt": "Hi", "stream": False, "options": {"num_predict": 3}})
        assert short.status_code == 200, "requests within the limit are untouched"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_configured_limits_on_tokens_and_choices():
    proc, base = serve(dict(os.environ), "--model", TINY, "--name", "tiny", "--max-tokens", "5",
                       "--max-choices", "2")
    try:
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "ignore_eos": True}
        unasked = requests.post(base + "/v1/chat/completions", json=chat)
        assert unasked.json()["usage"]["completion_tokens"] == 5, "the ceiling applies unasked"
        over = requests.post(base + "/v1/chat/completions", json=dict(chat, max_tokens=6))
        assert over.status_code == 400 and "--max-tokens" in over.json()["error"]["message"]
        assert over.json()["error"]["param"] == "max_tokens"
        many = requests.post(base + "/v1/chat/completions", json=dict(chat, n=3, max_tokens=2))
        assert many.status_code == 400 and "between 1 and 2" in many.json()["error"]["message"]
        two = requests.post(base + "/v1/chat/completions", json=dict(chat, n=2, max_tokens=2))
        assert two.status_code == 200 and len(two.json()["choices"]) == 2
        generate = {"model": "tiny", "prompt": "Hi", "stream": False}
        capped = requests.post(base + "/api/generate", json=generate).json()
        assert 1 <= capped["eval_count"] <= 5
        refused = requests.post(base + "/api/generate", json=dict(generate, options={"num_predict": 6}))
        assert refused.status_code == 400 and "num_predict" in refused.json()["error"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
