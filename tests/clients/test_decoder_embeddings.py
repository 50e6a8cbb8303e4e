"""Embeddings from a generating model, as Ollama gives them: tiny-mistral's final hidden
states (after the output norm) pooled as its file says, unit length, held to transformers'
`MistralModel` (models/fixtures/tiny-mistral/refs/transformers_embeddings.json, made by
models/make_decoder_embedding_refs.py):
- the safetensors directory, which says no pooling: the last token's state (Ollama's runner);
- its f16 GGUF with `llama.pooling_type` 1 added: the mean;
- with `llama.pooling_type` 4 (rank, a reranker's): no vector, a clear 400.
The engine reads each input as a prompt, beside generation.
"""
import concurrent.futures
import json
import math
import os
import time

import gguf
import ollama
import openai
import pytest
import requests

from conftest import ROOT, serve, stop, store_gguf

TINY = ROOT / "models/fixtures/tiny-mistral"
REFS = json.loads((TINY / "refs/transformers_embeddings.json").read_text())["inputs"]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def gguf_with(src, dst, uint32s):
    """A copy of the GGUF `src` with these uint32 metadata keys added."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(dst), reader.get_field("general.architecture").contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for key, value in uint32s.items():
        writer.add_uint32(key, value)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decoder-embeddings")
    for name, pooling in [("tiny-mean", 1), ("tiny-rank", 4)]:
        path = tmp / f"{name}.gguf"
        gguf_with(TINY / "tiny-mistral-f16.gguf", path, {"llama.pooling_type": pooling})
        store_gguf(tmp / "store", name, "latest", path, "llama")
    env = {**os.environ, "OLLAMA_MODELS": str(tmp / "store")}
    # 64 tokens a step: the long input is read in chunks, beside whatever else runs.
    proc, url = serve(env, "--max-batch-tokens", "64", "--model", str(TINY),
                      "--name", "mistral:instruct")
    yield url
    assert stop(proc) == 0


def assert_close(vectors, key, bound):
    assert len(vectors) == len(REFS)
    for vector, ref in zip(vectors, REFS):
        assert abs(math.sqrt(sum(x * x for x in vector)) - 1) < 1e-5, "a unit vector"
        c = cosine(vector, ref[key])
        assert c >= bound, f"{ref['text'][:30]!r} ({len(ref['ids'])} tokens): cosine {c:.8f}"


def test_a_generating_model_embeds_its_last_token_as_transformers_does(base):
    client = ollama.Client(host=base)
    answer = client.embed(model="mistral:instruct", input=[r["text"] for r in REFS])
    assert_close(answer["embeddings"], "last", 0.99999)
    assert answer["prompt_eval_count"] == sum(len(r["ids"]) for r in REFS), "BOS and the text"
    legacy = client.embeddings(model="mistral:instruct", prompt=REFS[1]["text"])
    assert cosine(legacy["embedding"], REFS[1]["last"]) >= 0.99999
    # Token ids are taken as given: the same vectors.
    oa = openai.OpenAI(base_url=base + "/v1", api_key="x")
    data = oa.embeddings.create(model="mistral:instruct", input=[r["ids"] for r in REFS]).data
    assert_close([d.embedding for d in data], "last", 0.99999)


def test_a_gguf_pooling_type_chooses_the_mean(base):
    r = requests.post(base + "/api/embed", json={"model": "tiny-mean",
                                                  "input": [x["text"] for x in REFS]})
    assert r.status_code == 200, r.text
    # f16 weights against transformers in f32.
    assert_close(r.json()["embeddings"], "mean", 0.9999)


def test_a_reranker_cannot_embed_and_says_so(base):
    for url, body in [("/v1/embeddings", {"input": "x"}), ("/api/embed", {"input": "x"}),
                      ("/api/embeddings", {"prompt": "x"})]:
        r = requests.post(base + url, json={"model": "tiny-rank", **body})
        assert r.status_code == 400, r.text
        assert "does not support embeddings" in r.text and "rank" in r.text
    chat = requests.post(base + "/api/chat", json={
        "model": "mistral:instruct", "messages": [{"role": "user", "content": "hi"}],
        "stream": False, "options": {"num_predict": 4}})
    assert chat.status_code == 200 and chat.json()["done"]


def test_an_over_long_input_is_refused_unless_truncated(base):
    context = requests.post(base + "/api/show", json={"model": "mistral:instruct"}).json()[
        "model_info"]["llama.context_length"]
    text = "word " * (context + 10)
    r = requests.post(base + "/api/embed", json={"model": "mistral:instruct",
                                                  "input": ["hi", text], "truncate": False})
    assert r.status_code == 400 and "input[1]" in r.json()["error"], r.text
    r = requests.post(base + "/api/embed", json={"model": "mistral:instruct", "input": ["hi", text]})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_eval_count"] == 2 + context, "cut to the context, as Ollama does"


def test_many_inputs_beside_a_chat_each_get_their_own(base):
    """A request of 200 inputs, read 16 at a time beside a streaming chat: the chat's reply is
    the one it gets alone, and every vector is its input's."""
    def chat():
        r = requests.post(base + "/api/chat", json={
            "model": "mistral:instruct", "messages": [{"role": "user", "content": "Tell me"}],
            "stream": False, "options": {"num_predict": 40, "temperature": 0}})
        assert r.status_code == 200, r.text
        return r.json()["message"]["content"]

    alone = chat()
    many = [REFS[i % len(REFS)] for i in range(200)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        embedded = pool.submit(requests.post, base + "/api/embed",
                               json={"model": "mistral:instruct", "input": [r["text"] for r in many]})
        time.sleep(0.05)
        beside = pool.submit(chat)
        r = embedded.result()
        assert beside.result() == alone
    assert r.status_code == 200, r.text
    for vector, ref in zip(r.json()["embeddings"], many):
        assert cosine(vector, ref["last"]) >= 0.99999
