"""Reference embeddings of all-MiniLM-L6-v2 by sentence-transformers, for the client tests
(tests/clients/test_embeddings.py), written to models/fixtures/embeddings/minilm.json.

Run with the reference venv (models/requirements-ref.txt, plus sentence-transformers==3.3.1):
    python models/make_embedding_refs.py "$(models/minilm-path.sh)"

Each input's vector (f32, as sentence-transformers gives it: mean pooling, normalised) and its
token count after sentence-transformers' truncation to max_seq_length (256).
"""
import json
import pathlib
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

ROOT = pathlib.Path(__file__).resolve().parents[1]
LONG = " ".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog near the river bank."
                for i in range(40))
INPUTS = [
    "hello world",
    "The cat sat on the mat.",
    "def add(a, b):\n    return a + b\n",
    "Größe, café, naïve — 東京タワー 🚀 and résumé",
    "How do I configure GitLab Duo Self-Hosted with a custom model?",
    "",
    LONG,
]


def main():
    model_dir = sys.argv[1]
    torch.manual_seed(0)
    model = SentenceTransformer(model_dir, device="cpu")
    vectors = model.encode(INPUTS, convert_to_numpy=True, normalize_embeddings=False)
    mask = model.tokenize(INPUTS)["attention_mask"]
    counts = [int(m.sum()) for m in mask]
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "made_with": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
        "max_seq_length": model.max_seq_length,
        "inputs": [{"text": t, "tokens": c, "embedding": [float(x) for x in v]}
                   for t, c, v in zip(INPUTS, counts, vectors)],
    }
    path = ROOT / "models/fixtures/embeddings/minilm.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=None) + "\n")
    print(f"wrote {path}: {len(INPUTS)} inputs, tokens {counts}")


if __name__ == "__main__":
    main()
