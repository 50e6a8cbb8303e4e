"""Hugging Face pulls through the real binary: a test hub (HF_ENDPOINT) serves tiny-mistral as a
safetensors repo and as a GGUF repo (Q4_0, Q8_0) the way the hub does (repo listing, `resolve`
with Range, LFS files redirected to a CDN host with their sha256 as `x-linked-etag`) and wants
HF_TOKEN; `ferrollama pull hf.co/...` fetches each, and `serve --model hf.co/...` answers a chat.
"""
import hashlib
import http.server
import json
import os
import pathlib
import re
import subprocess
import threading
import time

import openai
import pytest

from conftest import BINARY, ROOT, files, free_port, serve

FIXTURE = ROOT / "models/fixtures/tiny-mistral"
COMMIT = "c0ffee" * 6 + "c0ff"
TOKEN = "hf_test_token"
REPOS = {
    "test/tiny-mistral": ["config.json", "generation_config.json", "model.safetensors",
                          "tokenizer.json", "tokenizer_config.json"],
    "test/tiny-mistral-GGUF": ["tiny-mistral-q4_0.gguf", "tiny-mistral-q8_0.gguf"],
}
# The catalog's Hugging Face repo for mistral:instruct, here holding tiny-mistral.
REPOS["mistralai/Mistral-7B-Instruct-v0.3"] = REPOS["test/tiny-mistral"]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def hub():
    """The hub on 127.0.0.1; its CDN is the same server reached as `localhost` (another host)."""
    data = {(repo, f): (FIXTURE / f).read_bytes() for repo, names in REPOS.items() for f in names}
    lfs = lambda name: name.endswith((".gguf", ".safetensors"))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            cdn = self.path.startswith("/cdn/")
            if not cdn and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self.send_error(401)
            listing = re.fullmatch(r"/api/models/([\w-]+/[\w.-]+)/revision/main\?blobs=true",
                                   self.path)
            if listing:
                repo = listing.group(1)
                if repo not in REPOS:
                    return self.send_error(404)
                siblings = [{"rfilename": f, "size": len(data[repo, f]),
                             **({"lfs": {"sha256": sha256(data[repo, f])}} if lfs(f) else {})}
                            for f in REPOS[repo]]
                return self.reply(200, json.dumps({"sha": COMMIT, "siblings": siblings}).encode())
            pattern = r"/cdn/([\w-]+/[\w.-]+)/([\w.-]+)" if cdn else \
                r"/([\w-]+/[\w.-]+)/resolve/\w+/([\w.-]+)"
            match = re.fullmatch(pattern, self.path)
            repo, name = match.groups() if match else (None, None)
            if (repo, name) not in data:
                return self.send_error(404)
            body = data[repo, name]
            if lfs(name) and not cdn:
                cdn_url = f"http://localhost:{self.server.server_address[1]}/cdn/{repo}/{name}"
                return self.reply(302, b"", {"Location": cdn_url, "X-Repo-Commit": COMMIT,
                                             "X-Linked-Etag": f'"{sha256(body)}"'})
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{sha256(body)[:40]}"'}
            ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if not ranged:
                return self.reply(200, body, headers)
            start = int(ranged.group(1))
            end = min(int(ranged.group(2) or len(body) - 1), len(body) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            self.reply(206, body[start:end + 1], headers)

        def reply(self, status, body, headers=()):
            self.send_response(status)
            for key, value in dict(headers).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture()
def env(hub, tmp_path):
    return dict(os.environ, HF_ENDPOINT=hub, HF_HOME=str(tmp_path / "hf"), HF_TOKEN=TOKEN,
                OLLAMA_MODELS=str(tmp_path / "models"))


def ferrollama(env, *args, check=True):
    result = subprocess.run([BINARY, *args], env=env, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def chat(model, env):
    proc, base = serve(env, "--model", model)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none")
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens >= 1
        assert reply.choices[0].message.content is not None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_gguf_repo_quant_pulls_into_the_store_and_serves(env):
    store = pathlib.Path(env["OLLAMA_MODELS"])
    name = "hf.co/test/tiny-mistral-GGUF:Q4_0"
    ferrollama(env, "pull", name)

    q4 = (FIXTURE / "tiny-mistral-q4_0.gguf").read_bytes()
    manifest_path = "manifests/hf.co/test/tiny-mistral-GGUF/Q4_0"
    manifest = json.loads((store / manifest_path).read_text())
    assert manifest["layers"] == [{"mediaType": "application/vnd.ollama.image.model",
                                   "digest": "sha256:" + sha256(q4), "size": len(q4)}]
    config = "blobs/sha256-" + manifest["config"]["digest"].split(":")[1]
    assert files(store) == sorted([manifest_path, config, "blobs/sha256-" + sha256(q4)])
    assert (store / "blobs" / ("sha256-" + sha256(q4))).read_bytes() == q4

    listing = ferrollama(env, "list").stdout.splitlines()
    assert listing[1].split()[0] == name
    assert "quantization    Q4_0" in ferrollama(env, "show", name).stdout
    chat(name, env)

    missing = ferrollama(env, "pull", "hf.co/test/tiny-mistral-GGUF:Q5_K_M", check=False)
    assert missing.returncode != 0
    assert '"Q5_K_M"' in missing.stderr and "Q4_0, Q8_0" in missing.stderr


def test_a_safetensors_repo_pulls_into_the_hf_cache_and_serves(env):
    hf_home = pathlib.Path(env["HF_HOME"])
    name = "hf.co/test/tiny-mistral"
    not_yet = ferrollama(env, "serve", "--model", name, check=False)
    assert not_yet.returncode != 0 and f"ferrollama pull {name}" in not_yet.stderr

    pulled = ferrollama(env, "pull", name)
    snapshot = hf_home / "hub/models--test--tiny-mistral/snapshots" / COMMIT
    assert str(snapshot) in pulled.stdout
    assert files(snapshot) == sorted(REPOS["test/tiny-mistral"])
    for f in REPOS["test/tiny-mistral"]:
        assert (snapshot / f).read_bytes() == (FIXTURE / f).read_bytes(), f
    assert (hf_home / "hub/models--test--tiny-mistral/refs/main").read_text() == COMMIT
    assert not (pathlib.Path(env["OLLAMA_MODELS"]) / "manifests").exists()
    chat(name, env)


def test_a_catalog_name_pulls_its_safetensors_from_hugging_face(env):
    pulled = ferrollama(env, "pull", "--hugging-face", "mistral:instruct")
    snapshot = (pathlib.Path(env["HF_HOME"]) / "hub/models--mistralai--Mistral-7B-Instruct-v0.3"
                / "snapshots" / COMMIT)
    assert str(snapshot) in pulled.stdout
    assert files(snapshot) == sorted(REPOS["test/tiny-mistral"])
    unknown = ferrollama(env, "pull", "--hugging-face", "nothing:here", check=False)
    assert unknown.returncode != 0 and 'no "nothing:here"' in unknown.stderr


def test_ollama_python_pulls_a_hugging_face_gguf_through_the_server(env):
    import ollama

    proc, base = serve(env, "--model", str(FIXTURE))
    try:
        client = ollama.Client(host=base)
        progress = list(client.pull("hf.co/test/tiny-mistral-GGUF:Q8_0", stream=True))
        assert progress[-1].status == "success"
        q8 = (FIXTURE / "tiny-mistral-q8_0.gguf").read_bytes()
        assert any(p.completed == p.total == len(q8) for p in progress if p.total)
        listed = {m.model: m for m in client.list().models}
        assert listed["hf.co/test/tiny-mistral-GGUF:Q8_0"].details.quantization_level == "Q8_0"
        reply = client.generate(model="hf.co/test/tiny-mistral-GGUF:Q8_0", prompt="Hi",
                                options={"num_predict": 2})
        assert reply.done and reply.eval_count >= 1, "served by name, loaded on request"
        with pytest.raises(ollama.ResponseError) as missing:
            client.pull("hf.co/test/tiny-mistral-GGUF:Q2_K", stream=False)
        assert missing.value.status_code == 404 and "Q2_K" in str(missing.value)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_no_token_and_no_network_fail_fast_with_a_reason(env):
    without = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    result = ferrollama(without, "pull", "hf.co/test/tiny-mistral", check=False)
    assert result.returncode != 0 and "HF_TOKEN" in result.stderr

    started = time.time()
    closed = f"http://127.0.0.1:{free_port()}"
    result = ferrollama(dict(env, HF_ENDPOINT=closed), "pull", "hf.co/test/tiny-mistral",
                        check=False)
    assert result.returncode != 0 and "cannot reach" in result.stderr and closed in result.stderr
    assert time.time() - started < 15
    assert not any(pathlib.Path(env["HF_HOME"]).rglob("*.safetensors"))
