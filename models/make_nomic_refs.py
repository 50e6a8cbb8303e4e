"""Reference vectors for the tiny nomic-bert GGUF (models/make_nomic_gguf.py), computed by
llama.cpp's own nomic-bert, which is what Ollama runs `nomic-embed-text` on. Transformers cannot
run nomic-bert offline (its modelling code lives on the hub), so llama.cpp is the reference.

    PYTHON_WITH_LLAMA_CPP models/make_nomic_refs.py MINILM_DIR > models/fixtures/embeddings/nomic-tiny.json

It needs llama-cpp-python (llama.cpp built by hand; not part of the test suite) besides gguf
and numpy. The test suite only reads the JSON it writes.
"""
import argparse
import json
import pathlib
import sys
import tempfile

import llama_cpp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import make_nomic_gguf  # noqa: E402

TEXTS = [
    "search_query: hello world",
    "what does the fox say",
    "search_document: The quick brown fox jumps over the lazy dog. " * 6,
    "Ferrollama serves embeddings beside its generating model, on both APIs.",
    "say the fox does what",
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("minilm_dir", type=pathlib.Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "tiny-nomic.gguf"
        make_nomic_gguf.write(args.minilm_dir, path)
        llm = llama_cpp.Llama(model_path=str(path), embedding=True, n_ctx=2048, n_batch=2048,
                              n_ubatch=2048, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                              verbose=False)
        inputs = []
        for text in TEXTS:
            ids = llm.tokenize(text.encode(), add_bos=True, special=False)
            vector = llm.embed(text, normalize=True)
            inputs.append({"text": text, "ids": ids, "embedding": vector})
    json.dump({"reference": f"llama-cpp-python {llama_cpp.__version__}", "inputs": inputs},
              sys.stdout, indent=1)


if __name__ == "__main__":
    main()
