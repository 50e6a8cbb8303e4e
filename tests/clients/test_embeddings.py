"""Embeddings through the real server with the real clients, on the real all-MiniLM-L6-v2
(models/minilm-path.sh), against sentence-transformers' vectors (models/fixtures/embeddings,
made by models/make_embedding_refs.py).

A tiny random nomic-bert (models/make_nomic_gguf.py), as a GGUF and in nomic's Hugging Face
layout, is held to llama.cpp's vectors for the GGUF (models/make_nomic_refs.py). The model is served three ways at once: the safetensors snapshot in a Hugging Face cache
(`hf.co/sentence-transformers/all-MiniLM-L6-v2`), and GGUFs in f16 and Q8_0 made by
models/make_bert_gguf.py in an Ollama store (`all-minilm:f16`, `all-minilm:q8_0`), beside
tiny-mistral as `mistral:instruct`.
"""
import base64
import concurrent.futures
import json
import math
import os
import pathlib
import struct
import subprocess
import sys
import tempfile
import time

import litellm
import ollama
import openai
import pytest
import requests

from conftest import BINARY, ROOT, free_port, stop, store_gguf

LOG = pathlib.Path(tempfile.mkdtemp()) / "server.log"

REFS = json.loads((ROOT / "models/fixtures/embeddings/minilm.json").read_text())["inputs"]
HF_NAME = "hf.co/sentence-transformers/all-MiniLM-L6-v2"
NOMIC_HF = "hf.co/nomic-ai/nomic-embed-text-v1.5"
SHORT = [r for r in REFS if r["tokens"] < 256]
LONG = next(r for r in REFS if r["tokens"] == 256)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def hugging_face_cache(home, model_dir, repo_id="sentence-transformers/all-MiniLM-L6-v2",
                       sha="c9745ed1d9f207416be6d2e6f8de32d1f16199bf"):
    """The HF hub cache layout (refs/main -> snapshots/<sha>/), files linked to the model's."""
    repo = home / ("hub/models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    for path in model_dir.rglob("*"):
        if path.is_file():
            target = snapshot / path.relative_to(model_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    model_dir = pathlib.Path(subprocess.run([str(ROOT / "models/minilm-path.sh")], check=True,
                                            capture_output=True, text=True).stdout.strip())
    tmp = tmp_path_factory.mktemp("embeddings")
    hugging_face_cache(tmp / "hf", model_dir)
    for kind in ("f16", "q8_0"):
        gguf = tmp / f"minilm-{kind}.gguf"
        subprocess.run([sys.executable, str(ROOT / "models/make_bert_gguf.py"), str(model_dir),
                        str(gguf), "--type", kind], check=True)
        store_gguf(tmp / "store", "all-minilm", kind, gguf, "bert")
    nomic = tmp / "tiny-nomic.gguf"
    subprocess.run([sys.executable, str(ROOT / "models/make_nomic_gguf.py"), str(model_dir),
                    str(nomic)], check=True)
    store_gguf(tmp / "store", "nomic-tiny", "latest", nomic, "nomic-bert")
    nomic_hf = tmp / "tiny-nomic-hf"
    subprocess.run([sys.executable, str(ROOT / "models/make_nomic_gguf.py"), str(model_dir),
                    str(nomic_hf), "--safetensors"], check=True)
    hugging_face_cache(tmp / "hf", nomic_hf, NOMIC_HF.removeprefix("hf.co/"), "e5cf08aadaa33385f5990def41f7a23405aec398")
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "OLLAMA_MODELS": str(tmp / "store"),
           "HF_HUB_OFFLINE": "1", "RUST_LOG": "info"}
    port = free_port()
    log = open(LOG, "w")
    proc = subprocess.Popen([BINARY, "--log-format", "json", "serve", "--port", str(port),
                             "--kv-cache-memory", "64MiB", "--model",
                             str(ROOT / "models/fixtures/tiny-mistral"), "--name", "mistral:instruct"],
                            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if requests.get(url + "/", timeout=1).ok:
                break
        except requests.ConnectionError:
            pass
        assert proc.poll() is None and time.time() < deadline, LOG.read_text()
        time.sleep(0.2)
    yield url
    assert stop(proc) == 0


def assert_matches(vectors, refs, bound):
    assert len(vectors) == len(refs)
    for v, r in zip(vectors, refs):
        assert len(v) == 384
        c = cosine(v, r["embedding"])
        assert c >= bound, f"{r['text'][:40]!r}: cosine {c:.7f} < {bound}"


def test_ollama_embed_matches_sentence_transformers(base):
    client = ollama.Client(host=base)
    answer = client.embed(model=HF_NAME, input=[r["text"] for r in REFS])
    # The long input is cut to 256 tokens (Ollama's truncate, on by default), as
    # sentence-transformers cuts it.
    assert_matches(answer["embeddings"], REFS, 0.9999)
    assert answer["prompt_eval_count"] == sum(r["tokens"] for r in REFS)
    assert answer["total_duration"] > 0
    one = client.embed(model=HF_NAME, input=REFS[0]["text"])
    assert_matches(one["embeddings"], REFS[:1], 0.9999)
    for v in answer["embeddings"]:
        assert abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-5


def test_ollama_legacy_embeddings(base):
    answer = ollama.Client(host=base).embeddings(model=HF_NAME, prompt=REFS[1]["text"])
    assert_matches([answer["embedding"]], REFS[1:2], 0.9999)


def test_openai_float_and_base64(base):
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
    texts = [r["text"] for r in SHORT]
    floats = client.embeddings.create(model=HF_NAME, input=texts)
    assert [d.index for d in floats.data] == list(range(len(texts)))
    assert_matches([d.embedding for d in floats.data], SHORT, 0.9999)
    assert floats.usage.prompt_tokens == sum(r["tokens"] for r in SHORT)
    assert floats.usage.total_tokens == floats.usage.prompt_tokens
    # The SDK asks for base64 by default when numpy is at hand; ask explicitly, read raw.
    raw = requests.post(base + "/v1/embeddings", json={
        "model": HF_NAME, "input": texts, "encoding_format": "base64"}).json()
    for d, f in zip(raw["data"], floats.data):
        decoded = struct.unpack(f"<{384}f", base64.b64decode(d["embedding"]))
        assert list(decoded) == pytest.approx(f.embedding, abs=0)


def test_openai_token_ids_are_taken_as_given(base):
    """[CLS] hello world [SEP] in BERT's uncased vocabulary is the text "hello world"."""
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
    ids = [101, 7592, 2088, 102]
    one = client.embeddings.create(model=HF_NAME, input=ids)
    lists = client.embeddings.create(model=HF_NAME, input=[ids, ids])
    assert_matches([one.data[0].embedding], REFS[:1], 0.9999)
    assert_matches([d.embedding for d in lists.data], REFS[:1] * 2, 0.9999)
    assert one.usage.prompt_tokens == 4


def test_litellm_and_langchain(base):
    answer = litellm.embedding(model="openai/" + HF_NAME, api_base=base + "/v1", api_key="unused",
                               input=[r["text"] for r in SHORT[:3]])
    assert_matches([d["embedding"] for d in answer.data], SHORT[:3], 0.9999)
    from langchain_ollama import OllamaEmbeddings
    embeddings = OllamaEmbeddings(model=HF_NAME, base_url=base)
    assert_matches(embeddings.embed_documents([r["text"] for r in SHORT[:2]]), SHORT[:2], 0.9999)
    assert_matches([embeddings.embed_query(SHORT[2]["text"])], SHORT[2:3], 0.9999)


@pytest.mark.parametrize("tag,bound", [("f16", 0.99999), ("q8_0", 0.999)])
def test_gguf_in_the_store_matches_sentence_transformers(base, tag, bound):
    """The GGUF's context is 512 tokens (BERT's positions), so only inputs under
    sentence-transformers' 256 compare. Measured worst cosines: safetensors (f32) 1 - 1.2e-12,
    f16 0.9999998, Q8_0 0.99958 (its weights' 8-bit rounding)."""
    answer = ollama.Client(host=base).embed(model=f"all-minilm:{tag}",
                                            input=[r["text"] for r in SHORT])
    assert_matches(answer["embeddings"], SHORT, bound)
    assert answer["prompt_eval_count"] == sum(r["tokens"] for r in SHORT)


def test_dimensions_keep_a_normalised_prefix(base):
    full = requests.post(base + "/api/embed", json={"model": HF_NAME, "input": "hello world"}).json()
    cut = requests.post(base + "/v1/embeddings", json={"model": HF_NAME, "input": "hello world",
                                                        "dimensions": 64}).json()
    v = cut["data"][0]["embedding"]
    assert len(v) == 64
    prefix = full["embeddings"][0][:64]
    norm = math.sqrt(sum(x * x for x in prefix))
    assert v == pytest.approx([x / norm for x in prefix], rel=1e-5, abs=1e-7)


def test_an_over_long_input_is_refused_unless_truncated(base):
    text = LONG["text"]
    refused = requests.post(base + "/api/embed", json={"model": HF_NAME, "input": ["hi", text],
                                                       "truncate": False})
    assert refused.status_code == 400
    assert "input[1]" in refused.json()["error"] and "256" in refused.json()["error"]
    refused = requests.post(base + "/v1/embeddings", json={"model": HF_NAME, "input": [text]})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "input" and "input[0]" in error["message"]
    cut = requests.post(base + "/v1/embeddings", json={"model": HF_NAME, "input": [text],
                                                       "truncate": True}).json()
    assert_matches([cut["data"][0]["embedding"]], [LONG], 0.9999)
    assert cut["usage"]["prompt_tokens"] == 256


BAD = [
    ({"input": []}, "input", "at least one"),
    ({"input": ["x"] * 10_000}, "input", "at most 2048"),
    ({"input": ["a", ["b"]]}, "input", "input[1]"),
    ({"input": [[1, 2], "b"]}, "input", "input[1]"),
    ({"input": [[101, "x"]]}, "input", "input[0][1]"),
    ({"input": [[101, 99999, 102]]}, "input", "input[0][1]"),
    ({"input": [101, -1]}, "input", "input[0][1]"),
    ({"input": "x", "dimensions": 385}, "dimensions", "385"),
    ({"input": "x", "dimensions": 0}, "dimensions", "at least 1"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", "int8"),
]


@pytest.mark.parametrize("body,param,says", BAD)
def test_bad_input_on_v1_names_the_field(base, body, param, says):
    r = requests.post(base + "/v1/embeddings", json={"model": HF_NAME, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("body,says", [
    ({"input": []}, "at least one"),
    ({"input": ["x"] * 10_000}, "at most 2048"),
    ({"input": ["a", 1]}, "input[1]"),
    ({"input": {"text": "a"}}, "input"),
    ({"input": "x", "dimensions": 385}, "385"),
    ({"input": "x", "keep_alive": "soon"}, "keep_alive"),
])
def test_bad_input_on_api_names_the_field(base, body, says):
    r = requests.post(base + "/api/embed", json={"model": HF_NAME, **body})
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]


def test_show_and_tags_describe_the_gguf_encoder(base):
    # ollama-python 0.4.4's ShowResponse has no `capabilities`: read the JSON itself.
    shown = requests.post(base + "/api/show", json={"model": "all-minilm:q8_0"}).json()
    assert shown["capabilities"] == ["embedding"]
    assert shown["details"]["family"] == "bert"
    assert shown["details"]["quantization_level"] == "Q8_0"
    assert shown["model_info"]["bert.context_length"] == 512
    tags = {m["name"]: m for m in requests.get(base + "/api/tags").json()["models"]}
    assert tags["all-minilm:f16"]["details"]["quantization_level"] == "F16"
    chat_model = requests.post(base + "/api/show", json={"model": "mistral:instruct"}).json()
    assert "embedding" not in chat_model["capabilities"]


def test_models_that_cannot_generate_say_so_and_the_server_keeps_serving(base):
    """(A model that cannot embed: test_decoder_embeddings.py.)"""
    r = requests.post(base + "/api/generate", json={"model": HF_NAME, "prompt": "hi"})
    assert r.status_code == 400 and "embedding model" in r.json()["error"]
    r = requests.post(base + "/v1/embeddings", json={"model": "no-such-model", "input": "x"})
    assert r.status_code == 404
    chat = requests.post(base + "/api/chat", json={
        "model": "mistral:instruct", "messages": [{"role": "user", "content": "hi"}],
        "stream": False, "options": {"num_predict": 4}})
    assert chat.status_code == 200 and chat.json()["done"]


def test_concurrent_requests_share_batches_and_each_gets_its_own_vectors(base):
    """Eight clients at once, each with its own inputs, beside a chat: every answer is its own."""
    def one(i):
        refs = [SHORT[i % len(SHORT)], SHORT[(i + 1) % len(SHORT)]]
        r = requests.post(base + "/api/embed", json={"model": HF_NAME,
                                                     "input": [x["text"] for x in refs]})
        assert r.status_code == 200, r.text
        assert_matches(r.json()["embeddings"], refs, 0.9999)
        return True

    def chat():
        return requests.post(base + "/api/chat", json={
            "model": "mistral:instruct", "messages": [{"role": "user", "content": "hi"}],
            "stream": False, "options": {"num_predict": 8}}).status_code == 200

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(one, i) for i in range(8)] + [pool.submit(chat)]
        assert all(f.result() for f in futures)


def test_an_embedding_model_is_listed_while_loaded_and_unloads_after_its_keep_alive(base):
    def listed():
        return [m for m in requests.get(base + "/api/ps").json()["models"]
                if m["name"] == "all-minilm:f16"]

    r = requests.post(base + "/api/embed", json={"model": "all-minilm:f16", "input": "x",
                                                 "keep_alive": "1m"})
    assert r.status_code == 200
    [entry] = listed()
    assert entry["details"]["family"] == "bert"
    assert entry["details"]["quantization_level"] == "F16", "from the file, not assumed"
    # The generating model stays loaded beside it.
    assert any(m["name"] == "mistral:instruct" for m in requests.get(base + "/api/ps").json()["models"])
    r = requests.post(base + "/api/embed", json={"model": "all-minilm:f16", "input": "x",
                                                 "keep_alive": 0})
    assert r.status_code == 200
    deadline = time.time() + 5
    while listed() and time.time() < deadline:
        time.sleep(0.1)
    assert not listed()


def test_bench_measures_embeddings(base, tmp_path):
    """`ferrollama bench --embeddings` runs its batch sizes and reports inputs/s and tokens."""
    report = tmp_path / "report.json"
    subprocess.run([BINARY, "bench", "--embeddings", "--base-url", base + "/v1", "--model", HF_NAME,
                    "--batch", "1,4", "--num-prompts", "2", "--input-len", "12",
                    "--json", str(report)], check=True, capture_output=True, timeout=120)
    levels = json.loads(report.read_text())["levels"]
    assert [(l["batch"], l["requests"]) for l in levels] == [(1, 2), (4, 2)]
    for level in levels:
        assert level["inputs_per_s"] > 0
        # 12 random words and [CLS], [SEP]: at least 14 tokens per input.
        assert level["prompt_tokens"] >= 14 * level["batch"] * level["requests"]


def test_each_embedding_request_gets_a_log_line_without_its_text(base):
    secret = "the-embedded-text-stays-out-of-logs"
    r = requests.post(base + "/api/embed", json={"model": HF_NAME, "input": [secret, "hello world"]})
    assert r.status_code == 200
    tokens = r.json()["prompt_eval_count"]
    bad = requests.post(base + "/v1/embeddings", json={"model": HF_NAME, "input": []})
    assert bad.status_code == 400
    deadline = time.time() + 5
    while time.time() < deadline:
        lines = [json.loads(l) for l in LOG.read_text().splitlines() if l.startswith("{")]
        lines = [l for l in lines if l.get("target") == "ferrollama::request"]
        ok = [l for l in lines if l["fields"].get("route") == "/api/embed"
              and l["fields"].get("prompt_tokens") == tokens]
        failed = [l for l in lines if l["fields"].get("route") == "/v1/embeddings"
                  and l["fields"].get("finish") == "error"]
        if ok and failed:
            break
        time.sleep(0.1)
    assert ok and ok[-1]["fields"]["finish"] == "embedded", lines
    assert ok[-1]["fields"]["generated_tokens"] == 0
    assert failed and "at least one" in failed[-1]["fields"]["error"]
    assert secret not in LOG.read_text()


NOMIC = json.loads((ROOT / "models/fixtures/embeddings/nomic-tiny.json").read_text())["inputs"]


@pytest.mark.parametrize("name", ["nomic-tiny", NOMIC_HF])
def test_nomic_bert_matches_llama_cpp(base, name):
    """nomic-bert (Ollama's nomic-embed-text architecture: rotary positions, SwiGLU) against
    llama.cpp's own forward of the same weights: from the GGUF, and from nomic's Hugging Face
    layout (safetensors under nomic's names, a GPT-2-style config): the same token ids, the
    same unit vectors."""
    r = requests.post(base + "/api/embed", json={"model": name,
                                                  "input": [n["text"] for n in NOMIC]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prompt_eval_count"] == sum(len(n["ids"]) for n in NOMIC), "same tokenization"
    for vector, ref in zip(body["embeddings"], NOMIC):
        c = cosine(vector, ref["embedding"])
        assert c >= 0.99999, f"{ref['text'][:40]!r}: cosine {c:.7f}"
    shown = requests.post(base + "/api/show", json={"model": name}).json()
    assert shown["capabilities"] == ["embedding"]
    assert shown["details"]["family"] == "nomic-bert"
    # Word order matters to it (rotary positions): these two inputs hold the same words.
    a, b = body["embeddings"][1], body["embeddings"][4]
    assert cosine(a, b) < 0.999


def test_an_embedding_model_given_at_start_serves_and_stays(tmp_path):
    """`serve --model <embedding model>`: an embedding-only server, as `nomic-embed-text` is
    deployed. It is loaded at start, answers to its --name, is listed, and stays loaded."""
    from conftest import serve
    model_dir = subprocess.run([str(ROOT / "models/minilm-path.sh")], check=True,
                               capture_output=True, text=True).stdout.strip()
    gguf = tmp_path / "tiny-nomic.gguf"
    subprocess.run([sys.executable, str(ROOT / "models/make_nomic_gguf.py"), model_dir,
                    str(gguf)], check=True)
    env = {**os.environ, "OLLAMA_MODELS": str(tmp_path / "store")}
    proc, url = serve(env, "--model", str(gguf), "--name", "nomic-embed-text")
    try:
        [listed] = requests.get(url + "/api/ps").json()["models"]
        assert listed["details"]["family"] == "nomic-bert"
        assert listed["expires_at"] > "2100", "the --model one stays loaded"
        client = ollama.Client(host=url)
        vectors = client.embed(model="nomic-embed-text", input=[n["text"] for n in NOMIC])
        for vector, ref in zip(vectors["embeddings"], NOMIC):
            assert cosine(vector, ref["embedding"]) >= 0.99999
        assert [m.model for m in client.list().models] == ["nomic-embed-text"]
        r = requests.post(url + "/api/generate", json={"model": "nomic-embed-text", "prompt": "hi"})
        assert r.status_code == 400 and "embedding model" in r.json()["error"]
    finally:
        assert stop(proc) == 0
