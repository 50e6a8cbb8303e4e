"""verify.sh's pass/fail table, against fake peers: one HTTP server plays ferrollama (with its
API key), the AI gateway and GitLab's code suggestions API; a fake gitlab-rake on PATH plays
the rake task.

The fake gateway answers as the real self-hosted one does: /monitoring/healthz 200, and
/monitoring/ready 500 on every call (at self-hosted-v17.6.0-ee it runs real Vertex and Anthropic
calls, which fail without those vendors' credentials). The fake GitLab's direct_access answers
as GitLab's API does: 403 "Direct connections are disabled" with the setting on, else 201 with
the AI gateway's URL (Gitlab::AiGateway.url, the private address).
"""
import json
import os
import urllib.error
import urllib.request
import pathlib
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERIFY = ROOT / "deploy/verify.sh"


LLM_KEY = "k" * 64
GATEWAY_URL = "http://10.42.1.11:5052"


class Peers:
    def __init__(self, models=("mistral:instruct",), healthy=True, completion=200, vram=4_000_000_000,
                 generate=200, llm_key=LLM_KEY, direct_disabled=True):
        self.models, self.healthy, self.completion = models, healthy, completion
        self.vram, self.generate, self.llm_key, self.direct_disabled = vram, generate, llm_key, direct_disabled
        self.generate_requests = []
        self.completion_requests = []
        self.paths = []  # every request, in order
        peers = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body):
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def llm_refused(self):
                """ferrollama with --api-key: 401 on every route without the bearer key."""
                if peers.llm_key and self.headers.get("Authorization") != f"Bearer {peers.llm_key}":
                    self.reply(401, {"error": "missing or invalid API key"})
                    return True
                return False

            def do_GET(self):
                peers.paths.append(self.path)
                if self.path == "/monitoring/healthz":
                    return self.reply(200 if peers.healthy else 503, {"status": "ok"})
                if self.path == "/monitoring/ready":
                    # The real self-hosted gateway, every time: its probe calls Vertex and Anthropic.
                    return self.reply(500, {"detail": "AttributeError: 'NoneType' object has no attribute"})
                if self.path in ("/v1/models", "/api/ps") and self.llm_refused():
                    return None
                if self.path == "/v1/models":
                    return self.reply(200, {"object": "list", "data": [{"id": m} for m in peers.models]})
                if self.path == "/api/ps":
                    return self.reply(200, {"models": [{"name": m, "size": 4_100_000_000, "size_vram": peers.vram}
                                                       for m in peers.models]})
                self.reply(404, {})

            def do_POST(self):
                peers.paths.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                if self.path == "/api/v4/code_suggestions/direct_access":
                    if self.headers.get("Authorization") != "Bearer tok-123":
                        return self.reply(401, {"message": "401 Unauthorized"})
                    if peers.direct_disabled:
                        return self.reply(403, {"message": "403 Forbidden - Direct connections are disabled"})
                    return self.reply(201, {"base_url": GATEWAY_URL, "token": "jwt", "expires_at": 1,
                                            "headers": {"X-Gitlab-Instance-Id": "1"}})
                if self.path == "/api/generate" and self.llm_refused():
                    return None
                if self.path == "/api/generate":
                    peers.generate_requests.append(body)
                    if peers.generate != 200 or body.get("model") not in peers.models:
                        return self.reply(peers.generate if peers.generate != 200 else 404,
                                          {"error": f"model '{body.get('model')}' not found"})
                    # 64 tokens in 1.6 s: 40 tok/s.
                    return self.reply(200, {"model": body["model"], "response": "one two", "done": True,
                                            "eval_count": 64, "eval_duration": 1_600_000_000})
                if self.path != "/api/v4/code_suggestions/completions":
                    return self.reply(404, {})
                peers.completion_requests.append((self.headers.get("Authorization"), body))
                if peers.completion != 200:
                    return self.reply(peers.completion, {"message": "403 Forbidden - Duo not available"})
                self.reply(200, {"choices": [{"text": "return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)"}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def verify(tmp_path, peers, rake_status=0, llm_key=LLM_KEY):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    rake = bin_dir / "gitlab-rake"
    rake.write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/rake-args\necho "rake says {rake_status}"\nexit {rake_status}\n')
    rake.chmod(0o755)
    settings = tmp_path / "settings.env"
    settings.write_text(f"DOMAIN=unused.example.com\nGATEWAY_URL={peers.url}\nLLM_URL={peers.url}\n"
                        f"MODEL_NAME=mistral:instruct\nADMIN_TOKEN=tok-123\nLLM_API_KEY={llm_key}\n")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("GITLAB_TOKEN", None)
    return subprocess.run([str(VERIFY), "--settings", str(settings), "--gitlab-url", peers.url],
                          env=env, capture_output=True, text=True, timeout=60)


CHECKS = ["ferrollama /v1/models", "ferrollama device and decode rate", "ferrollama refuses a missing key",
          "AI gateway /monitoring/healthz", "code completion via the gateway", "IDEs go through GitLab (no direct)",
          "gitlab:duo:verify_self_hosted_setup"]


def table(stdout):
    """check -> PASS/FAIL, from the table's rows (between the header and the last line)."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["CHECK", "RESULT", "DETAIL"], stdout
    rows = [re.match(r"(.+?) +(PASS|FAIL) ", line) for line in lines[1:-1]]
    assert all(rows), stdout
    return {row.group(1): row.group(2) for row in rows}


def test_every_hop_passes(tmp_path):
    with Peers() as peers:
        result = verify(tmp_path, peers)
    assert result.returncode == 0, result.stdout + result.stderr
    assert table(result.stdout) == dict.fromkeys(CHECKS, "PASS")
    assert re.search(r"ferrollama device and decode rate +PASS +GPU, 40 tok/s over 64 tokens", result.stdout), \
        result.stdout
    assert peers.generate_requests[0]["options"]["num_predict"] == 64
    assert result.stdout.splitlines()[-1] == "all checks passed"
    token, body = peers.completion_requests[0]
    assert token == "Bearer tok-123" and body["current_file"]["file_name"] == "fib.py"
    assert (tmp_path / "rake-args").read_text().strip() == "gitlab:duo:verify_self_hosted_setup[root]"
    assert re.search(r"IDEs go through GitLab \(no direct\) +PASS +direct_access refused \(403\)", result.stdout)


def test_the_fake_gateway_is_never_ready_and_verify_does_not_ask(tmp_path):
    # The premise: like the real self-hosted gateway, the fake answers /monitoring/ready 500
    # while everything works. verify.sh must pass without it and never ask for it.
    with Peers() as peers:
        with urllib.request.urlopen(peers.url + "/monitoring/healthz") as healthz:
            assert healthz.status == 200
        with pytest.raises(urllib.error.HTTPError) as ready:
            urllib.request.urlopen(peers.url + "/monitoring/ready")
        assert ready.value.code == 500
        peers.paths.clear()
        result = verify(tmp_path, peers)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/monitoring/healthz" in peers.paths and "/monitoring/ready" not in peers.paths
    assert "ready" not in result.stdout


def test_direct_connections_on_fails_and_names_the_private_url(tmp_path):
    with Peers(direct_disabled=False) as peers:
        result = verify(tmp_path, peers)
    assert result.returncode == 1
    assert [k for k, v in table(result.stdout).items() if v == "FAIL"] == ["IDEs go through GitLab (no direct)"]
    assert f"IDEs are handed {GATEWAY_URL}: rerun configure-gitlab.sh" in result.stdout


def test_ferrollama_without_a_key_fails_the_key_check(tmp_path):
    # A server that ignores keys answers /v1/models to anyone: the check must say so.
    with Peers(llm_key=None) as peers:
        result = verify(tmp_path, peers)
    assert result.returncode == 1
    assert [k for k, v in table(result.stdout).items() if v == "FAIL"] == ["ferrollama refuses a missing key"]
    assert "HTTP 200 without the key" in result.stdout
    # And a deployment without a key in its settings fails it too, whatever the server does.
    with Peers() as peers:
        result = verify(tmp_path, peers, llm_key="")
    rows = table(result.stdout)
    assert rows["ferrollama refuses a missing key"] == "FAIL" and "no LLM_API_KEY" in result.stdout


def test_a_model_on_the_cpu_is_reported(tmp_path):
    with Peers(vram=0) as peers:
        result = verify(tmp_path, peers)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"ferrollama device and decode rate +PASS +CPU, 40 tok/s", result.stdout), result.stdout


@pytest.mark.parametrize("peers_args, rake_status, failing", [
    ({"models": ("smollm2",)}, 0, None),
    ({"generate": 500}, 0, "ferrollama device and decode rate"),
    ({"healthy": False}, 0, "AI gateway /monitoring/healthz"),
    ({"completion": 403}, 0, "code completion via the gateway"),
    ({}, 1, "gitlab:duo:verify_self_hosted_setup"),
])
def test_one_failing_hop_fails_the_run(tmp_path, peers_args, rake_status, failing):
    with Peers(**peers_args) as peers:
        result = verify(tmp_path, peers, rake_status)
    assert result.returncode == 1
    rows = table(result.stdout)
    # A model that is not served fails both ferrollama rows: nothing can be generated either.
    failing = [failing] if failing else ["ferrollama /v1/models", "ferrollama device and decode rate"]
    assert [k for k, v in rows.items() if v == "FAIL"] == failing
    assert "some checks failed" in result.stdout
