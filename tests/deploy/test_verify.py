"""verify.sh's pass/fail table, against fake peers: one HTTP server plays ferrollama, the AI
gateway and GitLab's code suggestions API; a fake gitlab-rake on PATH plays the rake task.
"""
import json
import os
import pathlib
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERIFY = ROOT / "deploy/verify.sh"


class Peers:
    def __init__(self, models=("mistral:instruct",), healthy=True, ready=True, completion=200, vram=4_000_000_000,
                 generate=200):
        self.models, self.healthy, self.ready, self.completion = models, healthy, ready, completion
        self.vram, self.generate = vram, generate
        self.generate_requests = []
        self.completion_requests = []
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

            def do_GET(self):
                if self.path == "/v1/models":
                    return self.reply(200, {"object": "list", "data": [{"id": m} for m in peers.models]})
                if self.path == "/monitoring/healthz":
                    return self.reply(200 if peers.healthy else 503, {})
                if self.path == "/monitoring/ready":
                    return self.reply(200 if peers.ready else 503, {})
                if self.path == "/api/ps":
                    return self.reply(200, {"models": [{"name": m, "size": 4_100_000_000, "size_vram": peers.vram}
                                                       for m in peers.models]})
                self.reply(404, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
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


def verify(tmp_path, peers, rake_status=0):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    rake = bin_dir / "gitlab-rake"
    rake.write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/rake-args\necho "rake says {rake_status}"\nexit {rake_status}\n')
    rake.chmod(0o755)
    settings = tmp_path / "settings.env"
    settings.write_text(f"DOMAIN=unused.example.com\nGATEWAY_URL={peers.url}\nLLM_URL={peers.url}\n"
                        "MODEL_NAME=mistral:instruct\nADMIN_TOKEN=tok-123\n")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("GITLAB_TOKEN", None)
    return subprocess.run([str(VERIFY), "--settings", str(settings), "--gitlab-url", peers.url],
                          env=env, capture_output=True, text=True, timeout=60)


def table(stdout):
    """check -> PASS/FAIL, from the table's six rows."""
    rows = [re.match(r"(.+?) +(PASS|FAIL) ", line) for line in stdout.splitlines()[1:7]]
    assert all(rows), stdout
    return {row.group(1): row.group(2) for row in rows}


def test_every_hop_passes(tmp_path):
    with Peers() as peers:
        result = verify(tmp_path, peers)
    assert result.returncode == 0, result.stdout + result.stderr
    assert table(result.stdout) == {
        "ferrollama /v1/models": "PASS", "ferrollama device and decode rate": "PASS",
        "AI gateway /monitoring/healthz": "PASS", "AI gateway /monitoring/ready": "PASS",
        "code completion via the gateway": "PASS", "gitlab:duo:verify_self_hosted_setup": "PASS"}
    assert re.search(r"ferrollama device and decode rate +PASS +GPU, 40 tok/s over 64 tokens", result.stdout), \
        result.stdout
    assert peers.generate_requests[0]["options"]["num_predict"] == 64
    assert result.stdout.splitlines()[-1] == "all checks passed"
    token, body = peers.completion_requests[0]
    assert token == "Bearer tok-123" and body["current_file"]["file_name"] == "fib.py"
    assert (tmp_path / "rake-args").read_text().strip() == "gitlab:duo:verify_self_hosted_setup[root]"


def test_a_model_on_the_cpu_is_reported(tmp_path):
    with Peers(vram=0) as peers:
        result = verify(tmp_path, peers)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"ferrollama device and decode rate +PASS +CPU, 40 tok/s", result.stdout), result.stdout


@pytest.mark.parametrize("peers_args, rake_status, failing", [
    ({"models": ("smollm2",)}, 0, None),
    ({"generate": 500}, 0, "ferrollama device and decode rate"),
    ({"healthy": False}, 0, "AI gateway /monitoring/healthz"),
    ({"ready": False}, 0, "AI gateway /monitoring/ready"),
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
