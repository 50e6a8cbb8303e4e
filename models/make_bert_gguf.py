"""Writes a sentence-transformers BERT directory (config.json, model.safetensors,
tokenizer.json, modules.json, 1_Pooling/) as a GGUF in llama.cpp's BERT layout, the layout of
Ollama's `all-minilm` and `nomic-embed-text` blobs: `bert.*` metadata, the vocabulary in
"phantom space" form, tensors named token_embd, blk.N.attn_q, ...

    python models/make_bert_gguf.py MODEL_DIR OUT.gguf [--type f16|q8_0|f32]

Only the `gguf` package's writer and quantizer are used (not llama.cpp's converter): the test
suite makes the GGUFs it loads with this, from the real all-MiniLM-L6-v2.
"""
import argparse
import json
import pathlib

import gguf
import numpy as np
from safetensors.numpy import load_file

NAMES = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
LAYER = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}


def gguf_name(hf):
    hf = hf.removeprefix("bert.")
    if hf in NAMES:
        return NAMES[hf]
    if not hf.startswith("encoder.layer."):
        return None
    layer, rest = hf[len("encoder.layer."):].split(".", 1)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER[module]}.{kind}" if module in LAYER else None


def phantom(token):
    """llama.cpp's spelling: a word-initial piece gains a leading U+2581, a `##` piece loses it."""
    if token.startswith("[") and token.endswith("]"):
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


def add_vocabulary(writer, vocab):
    """A WordPiece vocabulary (token -> id) as llama.cpp's converter writes a BERT's."""
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("bert")
    writer.add_token_list([phantom(t) for t in tokens])
    writer.add_token_types([gguf.TokenType.CONTROL if t.startswith("[") and t.endswith("]")
                            else gguf.TokenType.NORMAL for t in tokens])
    # [CLS] is the BOS token.
    for key, token in [("bos", "[CLS]"), ("sep", "[SEP]"), ("unk", "[UNK]"), ("pad", "[PAD]"),
                       ("mask", "[MASK]")]:
        getattr(writer, f"add_{key}_token_id")(vocab[token])


def pooling_type(model_dir):
    modules = model_dir / "modules.json"
    if not modules.exists():
        return 1
    for module in json.loads(modules.read_text()):
        if module["type"] == "sentence_transformers.models.Pooling":
            config = json.loads((model_dir / module["path"] / "config.json").read_text())
            return 2 if config.get("pooling_mode_cls_token") else 1
    return 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--type", choices=["f32", "f16", "q8_0"], default="f16")
    args = parser.parse_args()
    config = json.loads((args.model_dir / "config.json").read_text())
    vocab = json.loads((args.model_dir / "tokenizer.json").read_text())["model"]["vocab"]

    writer = gguf.GGUFWriter(str(args.out), "bert")
    writer.add_name(args.model_dir.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config.get("layer_norm_eps", 1e-12))
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType(pooling_type(args.model_dir)))
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[args.type]
    writer.add_file_type(file_type)
    add_vocabulary(writer, vocab)

    tensors = {}
    for path in sorted(args.model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    for hf, array in tensors.items():
        name = gguf_name(hf)
        if name is None:
            continue  # the pooler, which sentence-transformers does not use
        array = array.astype(np.float32)
        matrix = array.ndim == 2 and name.startswith("blk.")
        if args.type == "q8_0" and matrix:
            writer.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif args.type != "f32" and array.ndim == 2:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
