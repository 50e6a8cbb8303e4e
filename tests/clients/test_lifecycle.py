"""Model lifecycle through the real server: a model loads on its first request, stays for
`keep_alive` (per request, or OLLAMA_KEEP_ALIVE; 5 minutes by default), `keep_alive: 0`
unloads it after the request, and one model is resident at a time: a request for another
waits for the busy one, which is then unloaded. The store is made by hand, as Ollama leaves
it, and served in place.
"""
import datetime
import json
import os
import threading
import time

import openai
import pytest
import requests

from conftest import ROOT, files, layer, serve

FIXTURES = ROOT / "models/fixtures/tiny-mistral"


PARAMS = {"num_predict": 2, "temperature": 0}


def make_store(root):
    """An Ollama store: tiny:q4_0 and tiny:q8_0, each a manifest, a config blob and a GGUF;
    tiny:q8_0 also has a params layer (Ollama's default options for it)."""
    for tag in ["q4_0", "q8_0"]:
        model = (FIXTURES / f"tiny-mistral-{tag}.gguf").read_bytes()
        config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": layer("application/vnd.docker.container.image.v1+json", config),
            "layers": [layer("application/vnd.ollama.image.model", model)],
        }
        blobs = [(manifest["config"], config), (manifest["layers"][0], model)]
        if tag == "q8_0":
            params = json.dumps(PARAMS).encode()
            manifest["layers"].append(layer("application/vnd.ollama.image.params", params))
            blobs.append((manifest["layers"][-1], params))
        for entry, data in blobs:
            blob = root / "blobs" / entry["digest"].replace(":", "-")
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
        path = root / "manifests/registry.ollama.ai/library/tiny" / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest))


@pytest.fixture()
def store_server(tmp_path):
    """A server with no --model over a hand-made store."""
    store = tmp_path / "models"
    make_store(store)
    proc, base = serve(dict(os.environ, OLLAMA_MODELS=str(store)))
    yield base, store
    proc.terminate()
    proc.wait(timeout=10)


def loaded(base):
    return [m["name"] for m in requests.get(base + "/api/ps").json()["models"]]


def generate(base, model, **extra):
    body = {"model": model, "prompt": "Hi", "stream": False, "options": {"num_predict": 3}}
    body.update(extra)
    reply = requests.post(base + "/api/generate", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def expires_in(base):
    """Seconds until the loaded model expires, as /api/ps says."""
    (model,) = requests.get(base + "/api/ps").json()["models"]
    at = datetime.datetime.fromisoformat(model["expires_at"].replace("Z", "+00:00"))
    return (at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()


def test_a_model_loads_on_first_request_and_keep_alive_0_unloads_it(store_server):
    base, store = store_server
    before = files(store)
    assert loaded(base) == []

    first = generate(base, "tiny:q4_0", keep_alive=0)
    assert first["done"] and first["eval_count"] >= 1
    assert first["load_duration"] > 0, "the first request loads the model"
    assert loaded(base) == [], "keep_alive 0 unloads it as the request ends"

    again = generate(base, "tiny:q4_0", keep_alive="1m")
    assert again["load_duration"] > 0, "the next request loads it again"
    assert loaded(base) == ["tiny:q4_0"]
    assert 50 < expires_in(base) <= 60

    resident = generate(base, "registry.ollama.ai/library/tiny:q4_0")
    assert resident["load_duration"] == 0, "a resident model answers to its long name too"
    assert 290 < expires_in(base) <= 300, "Ollama's default keep_alive is 5 minutes"
    assert files(store) == before, "the store is served in place: nothing is written to it"


def test_a_request_for_another_model_waits_for_the_busy_one_then_replaces_it(store_server):
    base, _ = store_server
    # Eight long choices keep the first model busy until this client leaves.
    long = requests.post(base + "/v1/completions", stream=True, timeout=60, json={
        "model": "tiny:q4_0", "prompt": "Count", "max_tokens": 2000, "n": 8, "ignore_eos": True,
        "stream": True})
    lines = long.iter_lines()  # kept: a dropped iterator closes the connection
    assert next(line for line in lines if line.startswith(b"data: ")), "the first model generates"

    other = {}

    def ask_other():
        other["reply"] = generate(base, "tiny:q8_0")

    waiter = threading.Thread(target=ask_other)
    waiter.start()
    time.sleep(0.5)
    assert loaded(base) == ["tiny:q4_0"], "the busy model is not unloaded under its request"
    assert "reply" not in other, "the request for the other model waits"

    assert next(lines) is not None, "and still streaming"
    long.close()  # the client leaves: its choices are cancelled and the first model goes idle
    waiter.join(timeout=60)
    assert other["reply"]["done"] and other["reply"]["load_duration"] > 0
    assert loaded(base) == ["tiny:q8_0"], "one model is resident at a time"


def test_keep_alive_runs_out_and_an_empty_request_loads_or_unloads(store_server):
    base, _ = store_server
    generate(base, "tiny:q4_0", keep_alive="1s")
    assert loaded(base) == ["tiny:q4_0"]
    time.sleep(2.5)
    assert loaded(base) == [], "unloaded when its keep_alive ran out"

    # Ollama's load and unload requests: no prompt.
    load = requests.post(base + "/api/generate", json={"model": "tiny:q8_0"}).json()
    assert load["done_reason"] == "load" and loaded(base) == ["tiny:q8_0"]
    unload = requests.post(base + "/api/chat", json={"model": "tiny:q8_0", "keep_alive": 0}).json()
    assert unload["done_reason"] == "unload" and loaded(base) == []


def test_a_params_layer_gives_default_options_that_requests_override(store_server):
    base, _ = store_server
    body = {"model": "tiny:q8_0", "prompt": "Hi", "stream": False}
    assert requests.post(base + "/api/generate", json=body).json()["eval_count"] == 2
    body["options"] = {"num_predict": 4}
    assert requests.post(base + "/api/generate", json=body).json()["eval_count"] == 4
    chat = openai.OpenAI(base_url=base + "/v1", api_key="none").chat.completions.create(
        model="tiny:q8_0", messages=[{"role": "user", "content": "Hi"}])
    assert chat.usage.completion_tokens == 2, "OpenAI requests get the defaults too"
    shown = requests.post(base + "/api/show", json={"model": "tiny:q8_0"}).json()
    assert [line.split() for line in shown["parameters"].splitlines()] == [
        ["num_predict", "2"], ["temperature", "0"]]


def test_unknown_models_and_bad_keep_alive_are_refused_in_each_apis_shape(store_server):
    base, _ = store_server
    missing = requests.post(base + "/api/generate", json={"model": "nothing:here", "prompt": "x"})
    assert missing.status_code == 404 and "nothing:here" in missing.json()["error"]
    chat = requests.post(base + "/v1/chat/completions", json={
        "model": "nothing:here", "messages": [{"role": "user", "content": "x"}]})
    assert chat.status_code == 404 and "nothing:here" in chat.json()["error"]["message"]
    bad = requests.post(base + "/api/generate", json={"model": "tiny:q4_0", "prompt": "x",
                                                      "keep_alive": "soon"})
    assert bad.status_code == 400 and "keep_alive" in bad.json()["error"]
    assert loaded(base) == [], "a refused request loads nothing"


def test_the_startup_model_stays_loaded_and_listed_and_ollama_python_sees_it(tmp_path):
    import ollama

    env = dict(os.environ, OLLAMA_MODELS=str(tmp_path / "empty"))
    env.pop("OLLAMA_KEEP_ALIVE", None)
    proc, base = serve(env, "--model", str(FIXTURES), "--name", "mistral:instruct")
    try:
        client = ollama.Client(host=base)
        (running,) = client.ps().models
        assert running.model == "mistral:instruct"
        assert running.expires_at.year > 2200, "the --model model stays until told otherwise"

        reply = client.chat(model="mistral:instruct", messages=[{"role": "user", "content": "Hi"}],
                            options={"num_predict": 2}, keep_alive=0)
        assert reply.done and client.ps().models == []
        assert [m.model for m in client.list().models] == ["mistral:instruct"], \
            "still listed while unloaded"
        models = openai.OpenAI(base_url=base + "/v1", api_key="none").models.list()
        assert "mistral:instruct" in [m.id for m in models.data]

        again = client.generate(model="mistral:instruct", prompt="Hi", options={"num_predict": 2})
        assert again.load_duration > 0 and [m.model for m in client.ps().models] == \
            ["mistral:instruct"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
