"""Starts the real `ferrollama serve` on a free port for the client tests.

The binary comes from FERROLLAMA_BIN (tests/run.sh sets it); the model is tiny-mistral (random
weights, the real Mistral v3 tokenizer and chat format), served as `mistral:instruct`.
"""
import hashlib
import os
import pathlib
import socket
import subprocess
import tempfile
import time

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("FERROLLAMA_BIN", str(ROOT / "target/release/ferrollama"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files(root):
    """Every file under `root`, relative, sorted: what a test expects a store to hold."""
    return sorted(str(p.relative_to(root)) for p in pathlib.Path(root).rglob("*") if p.is_file())


def layer(media_type, data):
    """A manifest layer (Docker manifest v2, as Ollama's registry serves them) for `data`."""
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "size": len(data)}


def store_gguf(store, name, tag, gguf, family):
    """An Ollama store entry `name:tag` for the GGUF file `gguf` (a model of `family`)."""
    import json
    data = gguf.read_bytes()
    config = json.dumps({"model_format": "gguf", "model_family": family}).encode()
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": layer("application/vnd.docker.container.image.v1+json", config),
                "layers": [layer("application/vnd.ollama.image.model", data)]}
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    for blob in (data, config):
        (store / "blobs" / ("sha256-" + hashlib.sha256(blob).hexdigest())).write_bytes(blob)
    manifests = store / "manifests/registry.ollama.ai/library" / name
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / tag).write_text(json.dumps(manifest))


def serve(env, *args, headers=None):
    """`ferrollama serve ARGS` on a free port with a small KV cache; returns (process, base
    URL) once it answers (`headers`, for a server that wants a key)."""
    port = free_port()
    proc = subprocess.Popen([BINARY, "serve", "--port", str(port), "--kv-cache-memory", "64MiB",
                             *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if requests.get(base + "/", timeout=1, headers=headers).ok:
                return proc, base
        except requests.ConnectionError:
            pass
        assert proc.poll() is None and time.time() < deadline, "server did not start"
        time.sleep(0.2)


@pytest.fixture(scope="session")
def server():
    binary = BINARY
    port = free_port()
    model = ROOT / "models/fixtures/tiny-mistral"
    # The server's output goes to a file: a pipe nobody reads while the tests run fills up
    # and blocks the server on its next log line.
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [binary, "serve", "--model", str(model), "--name", "mistral:instruct", "--port", str(port),
         "--max-seqs", "16", "--kv-cache-memory", "64MiB"],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if requests.get(base + "/", timeout=1).text == "Ollama is running":
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            log.seek(0)
            raise RuntimeError("server did not start:\n" + log.read())
        time.sleep(0.2)
    yield base
    code = stop(proc)
    assert code == 0, f"server exited with {code}: SIGTERM must drain and exit 0"


def stop(proc):
    """SIGTERM (the server drains), SIGKILL after 10 s; the exit code."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.returncode


def engine_idle(base, timeout=1.0):
    """True once no sequence runs and every KV block is free."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = requests.get(base + "/ferrollama/stats").json()
        if s["running"] == 0 and s["waiting"] == 0 and s["free_blocks"] == s["total_blocks"]:
            return True
        time.sleep(0.02)
    return False
