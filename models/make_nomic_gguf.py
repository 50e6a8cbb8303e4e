"""A tiny random nomic-bert GGUF in llama.cpp's layout (the layout of Ollama's
`nomic-embed-text` blob): `nomic-bert.*` metadata, rotary positions, a fused attn_qkv, a SwiGLU
MLP (ffn_up, ffn_gate, ffn_down), no projection biases, and the real BERT uncased vocabulary
(all-MiniLM-L6-v2's, which nomic-embed-text shares) in "phantom space" form.

    python models/make_nomic_gguf.py MINILM_DIR OUT.gguf

The weights come from a fixed seed: the same file every time, so the test suite makes it and
compares the server's vectors with those llama.cpp gave for it (models/make_nomic_refs.py).
"""
import argparse
import json
import pathlib

import gguf
import numpy as np

from make_bert_gguf import add_vocabulary

HIDDEN, FF, LAYERS, HEADS, CONTEXT = 64, 128, 2, 4, 2048


def write(minilm_dir, out):
    vocab = json.loads((minilm_dir / "tokenizer.json").read_text())["model"]["vocab"]
    rng = np.random.default_rng(1234)

    def rand(*shape, around=0.0, scale=0.3):
        return (around + scale * rng.standard_normal(shape)).astype(np.float32)

    writer = gguf.GGUFWriter(str(out), "nomic-bert")
    writer.add_name("tiny-nomic-bert")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FF)
    writer.add_block_count(LAYERS)
    writer.add_head_count(HEADS)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_rope_freq_base(1000.0)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_vocabulary(writer, vocab)
    writer.add_token_type_count(2)  # llama.cpp refuses a nomic-bert without it

    writer.add_tensor("token_embd.weight", rand(len(vocab), HIDDEN))
    writer.add_tensor("token_types.weight", rand(2, HIDDEN))
    writer.add_tensor("token_embd_norm.weight", rand(HIDDEN, around=1.0, scale=0.1))
    writer.add_tensor("token_embd_norm.bias", rand(HIDDEN, scale=0.1))
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_qkv.weight", rand(3 * HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_output.weight", rand(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_output_norm.weight", rand(HIDDEN, around=1.0, scale=0.1))
        writer.add_tensor(f"blk.{i}.attn_output_norm.bias", rand(HIDDEN, scale=0.1))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", rand(FF, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", rand(FF, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", rand(HIDDEN, FF))
        writer.add_tensor(f"blk.{i}.layer_output_norm.weight", rand(HIDDEN, around=1.0, scale=0.1))
        writer.add_tensor(f"blk.{i}.layer_output_norm.bias", rand(HIDDEN, scale=0.1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("minilm_dir", type=pathlib.Path)
    parser.add_argument("out", type=pathlib.Path)
    args = parser.parse_args()
    write(args.minilm_dir, args.out)


if __name__ == "__main__":
    main()
