"""Reference embeddings of tiny-mistral (a decoder) by Hugging Face transformers, for the
client tests of embeddings from a generating model (tests/clients/test_embeddings.py).

Writes models/fixtures/tiny-mistral/refs/transformers_embeddings.json: per input, its token
ids (BOS, then the text, as Ollama tokenizes an embedding input) and the final hidden states
(`MistralModel`'s `last_hidden_state`, after the output norm) pooled two ways, unit length:
  last   the last token's state (a GGUF without `pooling_type`, and safetensors: Ollama's runner)
  mean   the mean over the tokens (a GGUF with `llama.pooling_type` 1)

Run with the reference venv (see models/requirements-ref.txt):
    /opt/ferro-ref/bin/python models/make_decoder_embedding_refs.py
"""
import json
import pathlib

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / "models/fixtures/tiny-mistral"
INPUTS = [
    "hello world",
    "The cat sat on the mat.",
    "def add(a, b):\n    return a + b\n",
    "Größe, café, naïve — 東京タワー 🚀 and résumé",
    " ".join(f"Sentence {i} of a longer input about GitLab runners." for i in range(30)),
]


def unit(v):
    return (v / v.norm()).tolist()


def main():
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModel.from_pretrained(MODEL, dtype=torch.float32).eval()
    out = []
    for text in INPUTS:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            hidden = model(torch.tensor([ids])).last_hidden_state[0]
        out.append({"text": text, "ids": ids, "last": unit(hidden[-1]), "mean": unit(hidden.mean(0))})
    path = MODEL / "refs/transformers_embeddings.json"
    path.write_text(json.dumps({
        "model": "tiny-mistral (float32)",
        "made_with": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "inputs": out,
    }) + "\n")
    print(f"wrote {path}: {len(out)} inputs of {[len(o['ids']) for o in out]} tokens")


if __name__ == "__main__":
    main()
