"""The model store through the real binary: `ferrollama pull` from a registry this test
starts (tiny-mistral's Q4_0 GGUF in the Ollama registry's layout), `list`, `cp`, `rm`, and
`serve --model NAME` answering a chat from the store's blob in place.
"""
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time

import openai
import pytest
import requests

from conftest import BINARY, ROOT, files, free_port, layer, serve

GGUF = ROOT / "models/fixtures/tiny-mistral/tiny-mistral-q4_0.gguf"


@pytest.fixture(scope="module")
def registry():
    """An Ollama-style registry on loopback: library/tiny-mistral:q4_0."""
    model = GGUF.read_bytes()
    template = b"{{ if .System }}{{ .System }} {{ end }}[INST] {{ .Prompt }} [/INST]"
    config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
    blobs = {}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": layer("application/vnd.docker.container.image.v1+json", config),
        "layers": [layer("application/vnd.ollama.image.model", model),
                   layer("application/vnd.ollama.image.template", template)],
    }
    for entry, data in [(manifest["config"], config), (manifest["layers"][0], model),
                        (manifest["layers"][1], template)]:
        blobs[entry["digest"]] = data
    manifests = {"/v2/library/tiny-mistral/manifests/q4_0": json.dumps(manifest).encode()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path in manifests:
                body = manifests[self.path]
            elif "/blobs/" in self.path and self.path.rsplit("/", 1)[1] in blobs:
                body = blobs[self.path.rsplit("/", 1)[1]]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", manifest
    server.shutdown()


def ferrollama(store, registry_url, *args, check=True):
    env = dict(os.environ, OLLAMA_MODELS=str(store), FERROLLAMA_REGISTRY_URL=registry_url)
    result = subprocess.run([BINARY, *args], env=env, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_pull_list_copy_remove_and_serve_by_name(registry, tmp_path):
    url, manifest = registry
    store = tmp_path / "models"
    ferrollama(store, url, "pull", "tiny-mistral:q4_0")

    # Ollama's layout: the manifest path and one blob per digest, nothing else.
    want = sorted(["manifests/registry.ollama.ai/library/tiny-mistral/q4_0"] + [
        "blobs/sha256-" + entry["digest"].split(":")[1]
        for entry in [manifest["config"], *manifest["layers"]]])
    assert files(store) == want
    stored = json.loads((store / want[-1]).read_text())
    assert stored == manifest

    listing = ferrollama(store, url, "list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    name, ident, *_ = listing[1].split()
    assert name == "tiny-mistral:q4_0"
    assert len(ident) == 12 and int(ident, 16) >= 0

    shown = ferrollama(store, url, "show", "tiny-mistral:q4_0").stdout
    assert "architecture    llama" in shown
    assert "quantization    Q4_0" in shown
    assert "chat template   Mistral v3, built in" in shown

    ferrollama(store, url, "cp", "tiny-mistral:q4_0", "me/tiny:v1")
    assert [l.split()[0] for l in ferrollama(store, url, "list").stdout.splitlines()[1:]] \
        .count("me/tiny:v1") == 1
    ferrollama(store, url, "rm", "me/tiny:v1")
    assert files(store) == want, "removing the copy keeps the blobs the original lists"

    # Served by name from the blob in place: no byte copied, no new file in the store.
    proc, base = serve(dict(os.environ, OLLAMA_MODELS=str(store)), "--model", "tiny-mistral:q4_0")
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none")
        reply = client.chat.completions.create(
            model="tiny-mistral:q4_0", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens >= 1
        assert files(store) == want
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    ferrollama(store, url, "rm", "tiny-mistral:q4_0")
    assert files(store) == [], "the last name's blobs go with it"


def test_a_pinned_model_digest_is_checked(registry, tmp_path):
    url, manifest = registry
    model = manifest["layers"][0]["digest"].split(":")[1]
    pinned = ferrollama(tmp_path, url, "pull", "tiny-mistral:q4_0", "--model-sha256", model)
    assert f"model layer sha256:{model}, as pinned" in pinned.stdout
    moved = ferrollama(tmp_path, url, "pull", "tiny-mistral:q4_0", "--model-sha256", "0" * 64,
                       check=False)
    assert moved.returncode != 0 and f"is sha256:{model}, not the pinned sha256:{'0' * 64}" \
        in moved.stderr


@pytest.mark.parametrize("bad", ["../escape", "a/../../b", "tiny mistral", "x/y/z/w:t"])
def test_names_that_could_leave_the_store_are_refused(registry, tmp_path, bad):
    url, _ = registry
    result = ferrollama(tmp_path, url, "pull", bad, check=False)
    assert result.returncode != 0
    assert f'invalid model name "{bad}"' in result.stderr
    assert not any(tmp_path.iterdir()), "nothing was written"


def test_an_unknown_model_and_no_network_fail_fast_with_a_reason(registry, tmp_path):
    url, _ = registry
    result = ferrollama(tmp_path, url, "pull", "nothing:here", check=False)
    assert result.returncode != 0 and "no model \"nothing:here\"" in result.stderr

    started = time.time()
    closed = f"http://127.0.0.1:{free_port()}"
    result = ferrollama(tmp_path, closed, "pull", "tiny-mistral:q4_0", check=False)
    assert result.returncode != 0 and "cannot reach" in result.stderr
    assert time.time() - started < 15


@pytest.fixture()
def server_with_store(registry, tmp_path):
    """`ferrollama serve` on tiny-mistral by path, with an empty store and the test registry."""
    url, manifest = registry
    store = tmp_path / "models"
    env = dict(os.environ, OLLAMA_MODELS=str(store), FERROLLAMA_REGISTRY_URL=url)
    proc, base = serve(env, "--model", str(ROOT / "models/fixtures/tiny-mistral"), "--name",
                              "mistral:instruct")
    yield base, store, manifest
    proc.terminate()
    proc.wait(timeout=10)


def test_ollama_python_pulls_lists_copies_and_deletes_through_the_server(server_with_store):
    import ollama

    base, store, manifest = server_with_store
    client = ollama.Client(host=base)
    progress = list(client.pull("tiny-mistral:q4_0", stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    model_layer = manifest["layers"][0]
    done = [p for p in progress if p.digest == model_layer["digest"]]
    assert done and done[-1].completed == done[-1].total == model_layer["size"]
    assert statuses.index("success") > max(i for i, p in enumerate(progress) if p.digest)

    listed = {m.model: m for m in client.list().models}
    assert "mistral:instruct" in listed and "tiny-mistral:q4_0" in listed
    pulled = listed["tiny-mistral:q4_0"]
    manifest_file = store / "manifests/registry.ollama.ai/library/tiny-mistral/q4_0"
    assert pulled.digest == hashlib.sha256(manifest_file.read_bytes()).hexdigest()
    assert pulled.size == sum(l["size"] for l in [manifest["config"], *manifest["layers"]])
    assert pulled.details.quantization_level == "Q4_0"
    assert pulled.details.family == "llama"

    client.copy("tiny-mistral:q4_0", "me/copy:v1")
    assert "me/copy:v1" in {m.model for m in client.list().models}
    client.delete("me/copy:v1")
    assert "me/copy:v1" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as missing:
        client.delete("me/copy:v1")
    assert missing.value.status_code == 404

    # `ferrollama ps` asks the running server.
    port = base.rsplit(":", 1)[1]
    ps = subprocess.run([BINARY, "ps"], env=dict(os.environ, OLLAMA_HOST=f"127.0.0.1:{port}"),
                        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert ps.returncode == 0, ps.stderr
    assert ps.stdout.splitlines()[0].split() == ["NAME", "ID", "SIZE", "UNTIL"]
    assert ps.stdout.splitlines()[1].split()[0] == "mistral:instruct"

    # Not streamed: one answer at the end; an unknown model is a 404 with Ollama's shape.
    assert requests.post(base + "/api/pull", json={"model": "tiny-mistral:q4_0", "stream": False}
                         ).json() == {"status": "success"}
    answer = requests.post(base + "/api/pull", json={"model": "nothing:here", "stream": False})
    assert answer.status_code == 404 and "nothing:here" in answer.json()["error"]
    bad = requests.post(base + "/api/pull", json={"model": "../up"})
    assert bad.status_code == 400 and '"../up"' in bad.json()["error"]
