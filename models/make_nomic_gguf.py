"""A tiny random nomic-bert in llama.cpp's GGUF layout (the layout of Ollama's
`nomic-embed-text` blob) or in nomic's Hugging Face layout (`nomic-ai/nomic-embed-text-v1.5`:
safetensors under nomic's own tensor names, a GPT-2-style config.json of model_type nomic_bert,
and sentence-transformers' modules). Rotary positions, a fused q|k|v, a SwiGLU MLP (fc11 up,
fc12 gate, fc2 down), no projection biases, and the real BERT uncased vocabulary
(all-MiniLM-L6-v2's, which nomic-embed-text shares).

    python models/make_nomic_gguf.py MINILM_DIR OUT.gguf
    python models/make_nomic_gguf.py MINILM_DIR OUT_DIR --safetensors

The weights come from a fixed seed: the same numbers in either layout, every time, so the test
suite makes both and compares the server's vectors with those llama.cpp gave for the GGUF
(models/make_nomic_refs.py).
"""
import argparse
import json
import pathlib
import shutil

import gguf
import numpy as np

from make_bert_gguf import add_vocabulary

HIDDEN, FF, LAYERS, HEADS, CONTEXT, ROPE_BASE = 64, 128, 2, 4, 2048, 1000.0


def tensors(vocab_size):
    """(nomic's name, llama.cpp's name, weights), drawn in one fixed order."""
    rng = np.random.default_rng(1234)

    def rand(*shape, around=0.0, scale=0.3):
        return (around + scale * rng.standard_normal(shape)).astype(np.float32)

    out = [
        ("embeddings.word_embeddings.weight", "token_embd.weight", rand(vocab_size, HIDDEN)),
        ("embeddings.token_type_embeddings.weight", "token_types.weight", rand(2, HIDDEN)),
        ("emb_ln.weight", "token_embd_norm.weight", rand(HIDDEN, around=1.0, scale=0.1)),
        ("emb_ln.bias", "token_embd_norm.bias", rand(HIDDEN, scale=0.1)),
    ]
    for i in range(LAYERS):
        hf, blk = f"encoder.layers.{i}.", f"blk.{i}."
        out += [
            (hf + "attn.Wqkv.weight", blk + "attn_qkv.weight", rand(3 * HIDDEN, HIDDEN)),
            (hf + "attn.out_proj.weight", blk + "attn_output.weight", rand(HIDDEN, HIDDEN)),
            (hf + "norm1.weight", blk + "attn_output_norm.weight",
             rand(HIDDEN, around=1.0, scale=0.1)),
            (hf + "norm1.bias", blk + "attn_output_norm.bias", rand(HIDDEN, scale=0.1)),
            (hf + "mlp.fc11.weight", blk + "ffn_up.weight", rand(FF, HIDDEN)),
            (hf + "mlp.fc12.weight", blk + "ffn_gate.weight", rand(FF, HIDDEN)),
            (hf + "mlp.fc2.weight", blk + "ffn_down.weight", rand(HIDDEN, FF)),
            (hf + "norm2.weight", blk + "layer_output_norm.weight",
             rand(HIDDEN, around=1.0, scale=0.1)),
            (hf + "norm2.bias", blk + "layer_output_norm.bias", rand(HIDDEN, scale=0.1)),
        ]
    return out


def write_gguf(vocab, out):
    writer = gguf.GGUFWriter(str(out), "nomic-bert")
    writer.add_name("tiny-nomic-bert")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FF)
    writer.add_block_count(LAYERS)
    writer.add_head_count(HEADS)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_vocabulary(writer, vocab)
    writer.add_token_type_count(2)  # llama.cpp refuses a nomic-bert without it
    for _, name, weights in tensors(len(vocab)):
        writer.add_tensor(name, weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_safetensors(minilm_dir, vocab, out):
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({name: weights for name, _, weights in tensors(len(vocab))},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    # The keys of nomic-embed-text-v1.5's config.json that describe the forward.
    config = {
        "architectures": ["NomicBertModel"], "model_type": "nomic_bert",
        "activation_function": "swiglu", "n_embd": HIDDEN, "n_head": HEADS, "n_inner": FF,
        "n_layer": LAYERS, "n_positions": CONTEXT, "layer_norm_epsilon": 1e-12,
        "rotary_emb_base": ROPE_BASE, "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False, "rotary_scaling_factor": None, "prenorm": False,
        "qkv_proj_bias": False, "mlp_fc1_bias": False, "mlp_fc2_bias": False,
        "causal": False, "type_vocab_size": 2, "vocab_size": len(vocab),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "modules.json"):
        shutil.copy(minilm_dir / name, out / name)
    (out / "1_Pooling").mkdir(exist_ok=True)
    shutil.copy(minilm_dir / "1_Pooling/config.json", out / "1_Pooling/config.json")
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 8192, "do_lower_case": False}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("minilm_dir", type=pathlib.Path)
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--safetensors", action="store_true",
                        help="write nomic's Hugging Face layout into the directory OUT")
    args = parser.parse_args()
    vocab = json.loads((args.minilm_dir / "tokenizer.json").read_text())["model"]["vocab"]
    if args.safetensors:
        write_safetensors(args.minilm_dir, vocab, args.out)
    else:
        write_gguf(vocab, args.out)


if __name__ == "__main__":
    main()
