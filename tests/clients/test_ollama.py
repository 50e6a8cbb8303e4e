"""The ollama Python client against ferrollama's /api."""
import ollama
import pytest
import requests


@pytest.fixture
def client(server):
    return ollama.Client(host=server)


def test_show_describes_the_safetensors_model_from_its_own_files(client):
    """The description comes from the model's files: format, family, shape, parameter count."""
    import json
    import math
    import pathlib
    from safetensors import safe_open
    model = pathlib.Path(__file__).resolve().parents[2] / "models/fixtures/tiny-mistral"
    config = json.loads((model / "config.json").read_text())
    elements = 0
    for path in model.glob("*.safetensors"):
        with safe_open(path, "np") as f:
            for name in f.keys():
                elements += math.prod(f.get_slice(name).get_shape())
    info = client.show("mistral:instruct")
    assert info.details.format == "safetensors"
    assert info.details.family == "llama"
    assert info.modelinfo["general.parameter_count"] == elements
    assert info.modelinfo["llama.embedding_length"] == config["hidden_size"]
    assert info.modelinfo["llama.block_count"] == config["num_hidden_layers"]
    assert info.modelinfo["llama.attention.head_count_kv"] == config["num_key_value_heads"]


def test_list_show_ps_version(client, server):
    names = [m.model for m in client.list().models]
    assert "mistral:instruct" in names
    info = client.show("mistral:instruct")
    assert info.modelinfo["llama.context_length"] == 2048
    assert [m.model for m in client.ps().models] == ["mistral:instruct"]
    assert requests.get(server + "/api/version").json()["version"]
    assert requests.head(server + "/").status_code == 200


def test_generate(client):
    r = client.generate(model="mistral:instruct", prompt="Hello", options={"temperature": 0, "num_predict": 10})
    assert r.done and r.response and r.done_reason in ("stop", "length")
    assert r.prompt_eval_count > 0 and 0 < r.eval_count <= 10
    assert r.total_duration > 0 and r.eval_duration > 0
    parts = list(client.generate(model="mistral:instruct", prompt="Hello", stream=True, options={"temperature": 0, "num_predict": 10}))
    assert "".join(p.response for p in parts) == r.response
    assert parts[-1].done and parts[-1].eval_count == r.eval_count


def test_chat(client):
    messages = [{"role": "user", "content": "Name a color."}]
    r = client.chat(model="mistral:instruct", messages=messages, options={"temperature": 0, "num_predict": 12})
    assert r.message.role == "assistant" and r.message.content and r.done
    parts = list(client.chat(model="mistral:instruct", messages=messages, stream=True, options={"temperature": 0, "num_predict": 12}))
    assert "".join(p.message.content for p in parts) == r.message.content


def test_unknown_model(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="llama9:70b", prompt="hi")
    assert e.value.status_code == 404 and "not found" in e.value.error
