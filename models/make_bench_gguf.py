#!/usr/bin/env python3
"""Write a Mistral-shaped GGUF with random weights, large enough that decoding is memory-bound
on a CPU: the benchmark model of benches/compare_llamacpp.sh.

    python models/make_bench_gguf.py --type q4_0 --out /tmp/mistral-1b-q4_0.gguf
    python models/make_bench_gguf.py --shape mistral-7b --type q4_0 --out /tmp/mistral-7b-q4_0.gguf

The shape is ferrollama's `mistral-1b` (hidden 2048, 16 layers, 16 heads, 4 KV heads of 128,
MLP 7168, vocabulary 32768: 1.3 B parameters with its untied head), or with `--shape mistral-7b`
Mistral-7B-Instruct-v0.3's (hidden 4096, 32 layers, 32 heads, 8 KV heads of 128, MLP 14336:
7.2 B parameters; about 4 GB in Q4_0, held in memory while written). The vocabulary is
Mistral v3's, copied from the committed tiny-mistral GGUF, so prompts tokenize as they would
for Mistral-7B-Instruct. Weights are N(0, 0.02) from a fixed seed, norms are ones: the text is
noise, the work per token is real. Needs only `gguf` and `numpy` (models/requirements-bench.txt).
"""

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

HERE = Path(__file__).resolve().parent
VOCAB_SOURCE = HERE / "fixtures" / "tiny-mistral" / "tiny-mistral-f16.gguf"

SHAPES = {
    "mistral-1b": {
        "hidden": 2048,
        "layers": 16,
        "heads": 16,
        "kv_heads": 4,
        "head_dim": 128,
        "ffn": 7168,
        "vocab": 32768,
        "context": 32768,
        "rope_theta": 1e6,
        "rms_eps": 1e-5,
    },
    "mistral-7b": {
        "hidden": 4096,
        "layers": 32,
        "heads": 32,
        "kv_heads": 8,
        "head_dim": 128,
        "ffn": 14336,
        "vocab": 32768,
        "context": 32768,
        "rope_theta": 1e6,
        "rms_eps": 1e-5,
    },
}

TYPES = {
    "q4_0": (LlamaFileType.MOSTLY_Q4_0, GGMLQuantizationType.Q4_0),
    "q8_0": (LlamaFileType.MOSTLY_Q8_0, GGMLQuantizationType.Q8_0),
    # The input of llama.cpp's llama-quantize, for k-quant files such as Q4_K_M.
    "f16": (LlamaFileType.MOSTLY_F16, GGMLQuantizationType.F16),
}

# Tokenizer keys copied verbatim from the tiny-mistral GGUF.
TOKENIZER_KEYS = [
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.chat_template",
]


def copy_tokenizer(writer: gguf.GGUFWriter) -> None:
    reader = gguf.GGUFReader(str(VOCAB_SOURCE))
    for key in TOKENIZER_KEYS:
        field = reader.get_field(key)
        if field is None:
            continue
        value = field.contents()
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, value)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(key, value)
        elif kind == gguf.GGUFValueType.BOOL:
            writer.add_bool(key, value)
        else:
            writer.add_uint32(key, int(value))


def tensors(s: dict, rng: np.random.Generator):
    """(name, array) in llama.cpp's order; matrices are [out, in] as GGUF stores them."""
    q_out, kv_out = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]

    def matrix(rows: int, cols: int) -> np.ndarray:
        return rng.standard_normal((rows, cols), dtype=np.float32) * 0.02

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    yield "token_embd.weight", matrix(s["vocab"], s["hidden"])
    for i in range(s["layers"]):
        yield f"blk.{i}.attn_norm.weight", ones(s["hidden"])
        yield f"blk.{i}.attn_q.weight", matrix(q_out, s["hidden"])
        yield f"blk.{i}.attn_k.weight", matrix(kv_out, s["hidden"])
        yield f"blk.{i}.attn_v.weight", matrix(kv_out, s["hidden"])
        yield f"blk.{i}.attn_output.weight", matrix(s["hidden"], q_out)
        yield f"blk.{i}.ffn_norm.weight", ones(s["hidden"])
        yield f"blk.{i}.ffn_gate.weight", matrix(s["ffn"], s["hidden"])
        yield f"blk.{i}.ffn_up.weight", matrix(s["ffn"], s["hidden"])
        yield f"blk.{i}.ffn_down.weight", matrix(s["hidden"], s["ffn"])
    yield "output_norm.weight", ones(s["hidden"])
    yield "output.weight", matrix(s["vocab"], s["hidden"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--type", choices=sorted(TYPES), required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mistral-1b")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    file_type, qtype = TYPES[args.type]
    s = SHAPES[args.shape]
    tmp = args.out.with_suffix(".partial")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"{args.shape}-random-{args.type}")
    w.add_context_length(s["context"])
    w.add_embedding_length(s["hidden"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(s["rms_eps"])
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_rope_dimension_count(s["head_dim"])
    w.add_vocab_size(s["vocab"])
    w.add_file_type(file_type)
    copy_tokenizer(w)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    rng = np.random.default_rng(args.seed)
    total = 3 + 9 * s["layers"]
    for done, (name, data) in enumerate(tensors(s, rng), start=1):
        if data.ndim == 1:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        print(f"\rquantizing {done}/{total} tensors", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=True)
    w.close()
    tmp.rename(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
