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


def ferrollama(store, registry_url, *args, check=True, env=None):
    env = dict(os.environ, OLLAMA_MODELS=str(store), FERROLLAMA_REGISTRY_URL=registry_url,
               **(env or {}))
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


def test_a_pin_mismatch_leaves_the_store_unchanged(registry, tmp_path):
    """Checked against the manifest before any blob: no manifest (which a later `serve NAME`
    would load unpinned), no blob."""
    url, _ = registry
    store = tmp_path / "models"
    moved = ferrollama(store, url, "pull", "tiny-mistral:q4_0", "--model-sha256", "1" * 64,
                       check=False)
    assert moved.returncode != 0 and "nothing was written" in moved.stderr
    assert not store.exists() or files(store) == []
    assert not (store / "manifests").exists()


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


class Registry:
    """A registry whose model blob can be served slowly, or stall after some bytes; it counts
    the model blob's transfers and bytes."""

    def __init__(self, model):
        self.model = model
        self.config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
        self.manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": layer("application/vnd.docker.container.image.v1+json", self.config),
            "layers": [layer("application/vnd.ollama.image.model", model)],
        }
        self.blobs = {self.manifest["config"]["digest"]: self.config,
                      self.manifest["layers"][0]["digest"]: model}
        self.model_digest = self.manifest["layers"][0]["digest"]
        self.transfers = 0
        self.bytes = 0
        self.stall_after = None  # bytes of the model blob, then silence
        self.seconds_per_mb = 0.0
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/v2/library/tiny-mistral/manifests/q4_0":
                    body, start = json.dumps(registry.manifest).encode(), 0
                elif "/blobs/" in self.path and self.path.rsplit("/", 1)[1] in registry.blobs:
                    body = registry.blobs[self.path.rsplit("/", 1)[1]]
                    start = int((self.headers.get("Range") or "bytes=0-")[6:].rstrip("-") or 0)
                else:
                    self.send_error(404)
                    return
                model = self.path.endswith(registry.model_digest)
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if model:
                    registry.transfers += 1
                try:
                    for at in range(start, len(body), 65536):
                        if model and registry.stall_after is not None and at >= registry.stall_after:
                            time.sleep(3600)
                        chunk = body[at:at + 65536]
                        self.wfile.write(chunk)
                        if model:
                            registry.bytes += len(chunk)
                            time.sleep(registry.seconds_per_mb * len(chunk) / 1e6)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def blob_path(self, store):
        return store / "blobs" / ("sha256-" + self.model_digest.split(":")[1])


@pytest.fixture()
def controlled():
    registry = Registry(GGUF.read_bytes())
    yield registry
    registry.server.shutdown()


def test_a_stalled_registry_fails_the_pull_naming_the_stall_and_a_rerun_resumes(controlled,
                                                                              tmp_path):
    store = tmp_path / "models"
    size = len(controlled.model)
    controlled.stall_after = size // 2
    started = time.time()
    stalled = ferrollama(store, controlled.url, "pull", "tiny-mistral:q4_0", check=False,
                         env={"FERROLLAMA_STALL_TIMEOUT": "3"})
    took = time.time() - started
    assert stalled.returncode != 0 and "no bytes arrived for 3 s" in stalled.stderr, stalled.stderr
    assert took < 30, f"gave up after {took:.0f} s"
    assert not (store / "manifests").exists()

    controlled.stall_after = None
    before = controlled.bytes
    ferrollama(store, controlled.url, "pull", "tiny-mistral:q4_0")
    fetched = controlled.bytes - before
    assert fetched <= size - size // 2 + 65536, f"the rerun resumed: {fetched} of {size} bytes"
    assert hashlib.sha256(controlled.blob_path(store).read_bytes()).hexdigest() == \
        controlled.model_digest.split(":")[1]


def test_two_pulls_of_one_model_download_it_once(controlled, tmp_path):
    """Two CLI pulls at once, then two /api/pull at once on a server: all succeed, the model
    blob crosses the network once per store, and the blob on disk hashes to its name."""
    controlled.seconds_per_mb = 2.0  # about 4 s for tiny-mistral's 1.9 MB: the pulls overlap
    store = tmp_path / "cli"
    env = dict(os.environ, OLLAMA_MODELS=str(store), FERROLLAMA_REGISTRY_URL=controlled.url)
    pulls = [subprocess.Popen([BINARY, "pull", "tiny-mistral:q4_0"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL) for _ in range(2)]
    for p in pulls:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert controlled.transfers == 1, f"{controlled.transfers} downloads of the model blob"
    digest = controlled.model_digest.split(":")[1]
    assert hashlib.sha256(controlled.blob_path(store).read_bytes()).hexdigest() == digest

    server_store = tmp_path / "server"
    proc, base = serve(dict(os.environ, OLLAMA_MODELS=str(server_store),
                            FERROLLAMA_REGISTRY_URL=controlled.url),
                       "--model", str(ROOT / "models/fixtures/tiny-mistral"), "--name", "m")
    try:
        results = []

        def api_pull():
            results.append(requests.post(base + "/api/pull", timeout=120,
                                         json={"model": "tiny-mistral:q4_0", "stream": False}))

        threads = [threading.Thread(target=api_pull) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.json() for r in results] == [{"status": "success"}] * 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert controlled.transfers == 2, "one more download, for the server's store"
    assert hashlib.sha256(controlled.blob_path(server_store).read_bytes()).hexdigest() == digest


def test_a_damaged_blob_is_found_and_named_and_a_pull_replaces_it(controlled, tmp_path):
    store = tmp_path / "models"
    ferrollama(store, controlled.url, "pull", "tiny-mistral:q4_0")
    assert "every blob matches its sha256" in ferrollama(store, controlled.url, "show", "--verify",
                                                         "tiny-mistral:q4_0").stdout
    blob = controlled.blob_path(store)
    damaged = bytearray(blob.read_bytes())
    damaged[1000] ^= 0xFF  # same size: a pull that trusted sizes would keep it
    blob.write_bytes(bytes(damaged))
    found = ferrollama(store, controlled.url, "show", "--verify", "tiny-mistral:q4_0", check=False)
    assert found.returncode != 0 and str(blob) in found.stderr, found.stderr
    transfers = controlled.transfers
    ferrollama(store, controlled.url, "pull", "tiny-mistral:q4_0")
    assert controlled.transfers == transfers + 1, "the damaged blob was fetched again"
    ferrollama(store, controlled.url, "show", "--verify", "tiny-mistral:q4_0")


def test_ollamas_own_partial_files_are_left_alone(controlled, tmp_path):
    """Ollama downloads into `sha256-<hex>-partial` (and `-partial-N` parts): a pull of ours
    beside one never takes it for its own or deletes it."""
    store = tmp_path / "models"
    partial = controlled.blob_path(store).with_name(controlled.blob_path(store).name + "-partial")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 100)
    ferrollama(store, controlled.url, "pull", "tiny-mistral:q4_0")
    assert partial.read_bytes() == b"\0" * 100


def test_names_match_ignoring_case_as_ollamas_do(registry, tmp_path):
    url, _ = registry
    store = tmp_path / "models"
    ferrollama(store, url, "pull", "tiny-mistral:q4_0")
    shown = ferrollama(store, url, "show", "Tiny-Mistral:Q4_0").stdout
    assert "quantization    Q4_0" in shown


def test_a_read_only_server_refuses_store_changes_whatever_the_key(registry, tmp_path):
    url, _ = registry
    store = tmp_path / "models"
    ferrollama(store, url, "pull", "tiny-mistral:q4_0")
    key = {"Authorization": "Bearer k3y"}
    env = dict(os.environ, OLLAMA_MODELS=str(store), FERROLLAMA_REGISTRY_URL=url)
    for flags, with_key in [([], 200), (["--read-only"], 403)]:
        proc, base = serve(env, "--model", str(ROOT / "models/fixtures/tiny-mistral"),
                           "--name", "m", "--api-key", "k3y", *flags, headers=key)
        try:
            body = {"model": "tiny-mistral:q4_0"}
            assert requests.delete(base + "/api/delete", json=body).status_code == 401
            answer = requests.post(base + "/api/copy", headers=key,
                                   json={"source": "tiny-mistral:q4_0", "destination": "c:1"})
            assert answer.status_code == with_key, answer.text
            if with_key == 403:
                assert "read-only" in answer.json()["error"]
                for path, method in [("/api/delete", requests.delete),
                                     ("/api/pull", requests.post)]:
                    refused = method(base + path, headers=key, json=body)
                    assert refused.status_code == 403, (path, refused.text)
                # Serving goes on.
                assert requests.post(base + "/api/generate", headers=key, json={
                    "model": "m", "prompt": "Hi", "stream": False,
                    "options": {"num_predict": 2}}).status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=10)
