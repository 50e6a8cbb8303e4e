"""Logs: one JSON line per request with its counts and times, never the prompt (unless
--log-prompts) and never the API key; and the server binds loopback unless told otherwise."""
import json
import os
import subprocess
import time

import requests

from conftest import BINARY, ROOT, free_port

KEY = "sk-test-not-for-logs"
SECRET = "the-prompt-must-stay-out-of-logs"


def start(log_path, *args):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "FERROLLAMA_"))}
    env.pop("RUST_LOG", None)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [BINARY, "--log-format", "json", "serve", "--model", str(ROOT / "models/fixtures/tiny-mistral"),
         "--name", "tiny", "--port", str(port), "--kv-cache-memory", "64MiB", "--api-key", KEY, *args],
        env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if requests.get(base + "/", timeout=1, headers={"Authorization": f"Bearer {KEY}"}).ok:
                return proc, base, port
        except requests.ConnectionError:
            pass
        assert proc.poll() is None and time.time() < deadline, open(log_path).read()
        time.sleep(0.2)


def chat(base):
    reply = requests.post(base + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "tiny", "max_tokens": 3,
                                "messages": [{"role": "user", "content": SECRET}]})
    assert reply.status_code == 200
    return reply.json()["usage"]


def request_lines(text):
    lines = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
    return [l for l in lines if l.get("target") == "ferrollama::request"]


def test_one_json_line_per_request_without_prompt_or_key(tmp_path):
    log_path = tmp_path / "server.log"
    proc, base, port = start(log_path)
    try:
        usage = chat(base)
        wrong = requests.get(base + "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    text = log_path.read_text()
    assert f"listening on http://127.0.0.1:{port}" in text, "loopback unless told otherwise"
    (line,) = request_lines(text)
    fields = line["fields"]
    assert fields["route"] == "/v1/chat/completions" and fields["model"] == "tiny"
    assert fields["prompt_tokens"] == usage["prompt_tokens"]
    assert fields["generated_tokens"] == usage["completion_tokens"]
    assert fields["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert fields["finish"] in ("stop", "length") and fields["total_ms"] >= fields["ttft_ms"] >= 0
    assert SECRET not in text and KEY not in text


def test_log_prompts_puts_the_prompt_in_the_line(tmp_path):
    log_path = tmp_path / "server.log"
    proc, base, _ = start(log_path, "--log-prompts")
    try:
        chat(base)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    (line,) = request_lines(log_path.read_text())
    assert SECRET in line["fields"]["prompt"]
    assert KEY not in log_path.read_text()


def metric(text, name):
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + " "))


def test_a_cancelled_request_counts_its_tokens_in_its_log_line_and_metrics(tmp_path):
    """A client that hangs up mid-reply: its line and /metrics still count what it cost."""
    log_path = tmp_path / "server.log"
    proc, base, _ = start(log_path)
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        before = requests.get(base + "/metrics", headers=headers).text
        seen = 0
        with requests.post(base + "/api/generate", headers=headers, stream=True, json={
                "model": "tiny", "prompt": "Tell me a long story about a lighthouse.",
                "options": {"temperature": 0, "num_predict": 2000}}) as reply:
            for line in reply.iter_lines():
                if line.strip() and not json.loads(line)["done"]:
                    seen += 1
                if seen == 3:
                    break  # hang up
        deadline = time.time() + 15
        while not request_lines(log_path.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        after = requests.get(base + "/metrics", headers=headers).text
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    (line,) = request_lines(log_path.read_text())
    fields = line["fields"]
    assert fields["finish"] == "cancelled", fields
    assert fields["prompt_tokens"] > 5 and fields["generated_tokens"] >= 3, fields
    assert metric(after, "ferrollama_prompt_tokens_total") - \
        metric(before, "ferrollama_prompt_tokens_total") == fields["prompt_tokens"]
    assert metric(after, "ferrollama_generation_tokens_total") - \
        metric(before, "ferrollama_generation_tokens_total") == fields["generated_tokens"]
