"""Generate the tiny-Mistral test fixture and its reference outputs.

Writes models/fixtures/tiny-mistral/:
  tokenizer.json, tokenizer_config.json   the real Mistral v3 (32768-piece) tokenizer,
                                          converted from mistral-common's sentencepiece model
  config.json, generation_config.json,    a 3-layer MistralForCausalLM with random (seeded)
  model.safetensors                       float32 weights, hidden 32, 4 heads / 2 kv heads,
                                          head_dim 16 (!= hidden/heads on purpose)
  tiny-mistral-{f16,q8_0,q4_0}.gguf       the same weights as llama-architecture GGUF files,
                                          laid out like llama.cpp's convert_hf_to_gguf.py
  refs/transformers.json                  prompts, input ids, 32 greedy ids, top-2 logit gaps
  refs/transformers_last_logits.f32       last-position logits of each prompt (LE f32, 32768 each)
  refs/transformers_sliding.json (+ .f32) the same with config.sliding_window = 8
  refs/gguf_dequant.json                  greedy ids of the dequantized GGUF weights
  refs/tokenizer_check.json               the tokenizer verification texts and their ids

Every step is checked (tokenizer ids against sentencepiece and mistral-common, top-2 gaps,
sliding window effect, GGUF round trip); the script exits non-zero if a check fails. Known,
expected tokenizer difference: tokenizer.json (HF Metaspace, prepend_scheme "first") adds no
dummy-prefix piece to a text that already starts with a space, "▁" or an added token, where
sentencepiece/mistral-common do; such texts are listed in refs/tokenizer_check.json.

The GGUF vocabulary follows convert_hf_to_gguf's _create_vocab_sentencepiece including its
tokenizer_config.json pass, so <unk> is CONTROL (3) and ids 0..770 have score -1000.

Files are overwritten in place; run models/make_chat_refs.py afterwards (its output lives in refs/).

Run with the reference venv (see models/requirements-ref.txt):
    /opt/ferro-ref/bin/python models/make_tiny_mistral.py
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import gguf
import mistral_common
import numpy as np
import sentencepiece
import torch
from tokenizers import Tokenizer
from gguf import GGMLQuantizationType, LlamaFileType, TokenType
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaTokenizerFast,
    MistralConfig,
    MistralForCausalLM,
)

OUT = Path(__file__).resolve().parent / "fixtures" / "tiny-mistral"
REFS = OUT / "refs"
SP_MODEL = Path(mistral_common.__file__).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"

SEED = 20240323
EMBED_STD = 1.0
LINEAR_GAIN = 1.0  # std = LINEAR_GAIN / sqrt(fan_in)
NORM_NOISE = 0.1  # norm weights = 1 + NORM_NOISE * N(0, 1)
LM_HEAD_STD = 1.0
N_NEW = 32
MIN_GAP = 1e-3
SLIDING_WINDOW = 8

CONFIG = dict(
    vocab_size=32768,
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=96,
    num_hidden_layers=3,
    rms_norm_eps=1e-5,
    rope_theta=1000000.0,
    max_position_embeddings=2048,
    sliding_window=None,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)

# Texts whose ids must agree between tokenizer.json, sentencepiece and mistral-common.
TOKENIZER_TEXTS = [
    "Hello world",
    "Hello, world! How are you today?",
    " Hello with a leading space",
    "  two leading spaces",
    "multiple    spaces   between words",
    "trailing space ",
    "trailing spaces   ",
    " ",
    "",
    "a",
    "line one\nline two",
    "\n\nleading newlines and trailing\n",
    "\tstarts with a tab",
    "tabs\tand\ttabs\t\t",
    "mixed \n \t whitespace \r\n windows line endings",
    "def add(a, b):\n    return a + b\n",
    'fn main() {\n    println!("{}", 1 + 2);\n}\n',
    "for (int i = 0; i < 10; ++i) { x[i] = i * i; }",
    "日本語のテキストです。",
    "中文测试：你好，世界！",
    "한국어 문장입니다",
    "Русский текст и ελληνικά",
    "Arabic: مرحبا بالعالم, Hindi: नमस्ते दुनिया",
    "Emoji: 🚀🎉👍🏽 and 👨‍👩‍👧‍👦 family",
    "Combining: e\u0301 a\u0308 n\u0303 (decomposed) vs \u00e9 \u00e4 \u00f1 (precomposed)",
    "Digits 1234567890 and 3.14159 and 1,000,000",
    "2024-01-15T10:30:00Z",
    "Ünïcödé Åccents ß ø œ",
    "URL https://example.com/path?q=1&r=2#frag",
    'JSON {"key": [1, 2, 3], "nested": {"a": null}}',
    "Rare: \u00a0nbsp \u200bzwsp \u2028 ⁇ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "Repeated!!!!!!!!!! ??? ... ----- ===== *****",
    "\u2581literal metaspace \u2581\u2581",
    "control bytes \x00\x01 bell \x07 del \x7f",
    "[REFERENCE_DOC_0] is a user-defined piece",
]



def known_divergence(text: str) -> bool:
    """tokenizer.json's Metaspace(prepend_scheme="first") adds no dummy "▁" when the text already
    starts with a space/"▁" or with an added token; sentencepiece always adds it. Such texts are
    expected to differ (by that one leading piece) and are reported, not failed on."""
    return text[:1] in (" ", "\u2581") or text.startswith("[REFERENCE_DOC_")


# Texts that spell control tokens literally. sentencepiece (and therefore mistral-common) treats
# them as plain text, while tokenizer.json has them as special added tokens. Recorded, not asserted.
LITERAL_SPECIAL_TEXTS = [
    "[INST] hi [/INST]",
    "<s>text</s>",
    "[PREFIX]x[SUFFIX]y[MIDDLE]",
    "<unk>",
]

PROMPTS = [
    ("empty", ""),
    ("short", "Hello"),
    ("sentence", "The quick brown fox jumps over the lazy dog."),
    ("leading_space", " leading space and  double  spaces"),
    ("unicode", "日本語のテキストと emoji 🚀🎉 and naïve café, Ünïcödé ß"),
    (
        "code",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    ),
    ("numbers", "1234567890 + 0.5 = ?\n\tTab\tseparated\tvalues"),
    ("inst_literal", "[INST] What is the capital of France? [/INST]"),
    (
        "long",
        "In the beginning of the nineteenth century, the small coastal town was known mostly for its "
        "fishing fleet and its lighthouse. Travellers who arrived by the old road would first notice "
        "the smell of salt and tar, then the long rows of boats pulled up on the shingle. Over the "
        "following decades the railway arrived, hotels were built along the promenade, and the town "
        "slowly became a resort, although the fishermen kept their huts at the eastern end of the beach.",
    ),
]

SLIDING_PROMPTS = [
    (
        "sliding_prose",
        "Sliding window attention only lets each position look at a fixed number of previous "
        "positions, so tokens that are far in the past stop influencing the next prediction.",
    ),
    (
        "sliding_code",
        "fn main() {\n    let xs: Vec<u32> = (0..10).map(|x| x * x).collect();\n"
        "    println!(\"{:?}\", xs);\n}\n",
    ),
    ("sliding_unicode", "東京は日本の首都です。Paris est la capitale de la France. 🚀 Ünïcödé text!"),
]


def fail(msg: str) -> None:
    print(f"FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


# ----------------------------------------------------------------------------- tokenizer


def write_tokenizer() -> None:
    tok = LlamaTokenizerFast(
        vocab_file=str(SP_MODEL),
        legacy=False,
        from_slow=True,
        # Without this the converter writes Metaspace(prepend_scheme="never") and drops
        # sentencepiece's dummy prefix: every text would lose its leading "▁".
        add_prefix_space=True,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        tok.backend_tokenizer.save(str(OUT / "tokenizer.json"), pretty=False)  # compact: half the size
        # The prefix space now lives in tokenizer.json's Metaspace pre-tokenizer. Left in the
        # config, add_prefix_space forces transformers to re-convert from the (absent) .model file.
        config = json.loads((Path(tmp) / "tokenizer_config.json").read_text())
        del config["add_prefix_space"]
        (OUT / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")


def verify_tokenizer() -> dict:
    """Compare tokenizer.json (as loaded from OUT) with sentencepiece and mistral-common."""
    hf = AutoTokenizer.from_pretrained(OUT)
    raw = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(SP_MODEL))
    mc = MistralTokenizer.from_file(str(SP_MODEL)).instruct_tokenizer.tokenizer

    records, mismatches, decode_mismatches = [], [], []
    for text in TOKENIZER_TEXTS:
        ids_hf = hf(text, add_special_tokens=False)["input_ids"]
        ids_raw = raw.encode(text, add_special_tokens=False).ids
        ids_sp = sp.encode(text)
        ids_mc = mc.encode(text, bos=False, eos=False)
        if not ids_hf == ids_raw == ids_sp == ids_mc:
            mismatches.append(
                {
                    "text": text,
                    "known_divergence": known_divergence(text),
                    "hf": ids_hf,
                    "tokenizers": ids_raw,
                    "sp": ids_sp,
                    "mistral_common": ids_mc,
                }
            )
        dec_hf, dec_sp = hf.decode(ids_sp), sp.decode(ids_sp)
        if dec_hf != dec_sp:
            decode_mismatches.append({"text": text, "hf_decode": dec_hf, "sp_decode": dec_sp})
        records.append({"text": text, "ids": ids_sp, "decoded": dec_sp})

    literal = []
    for text in LITERAL_SPECIAL_TEXTS:
        literal.append(
            {
                "text": text,
                "tokenizer_json_ids": hf(text, add_special_tokens=False)["input_ids"],
                "sentencepiece_ids": sp.encode(text),
                "mistral_common_ids": mc.encode(text, bos=False, eos=False),
            }
        )

    bos_check = hf("Hello")["input_ids"]
    if bos_check[0] != 1 or bos_check[-1] == 2:
        fail(f"tokenizer.json special-token handling unexpected: {bos_check}")

    result = {
        "sentencepiece_model": SP_MODEL.name,
        "texts": records,
        "encode_mismatches": mismatches,
        "decode_mismatches": decode_mismatches,
        "literal_special_texts": literal,
    }
    (REFS / "tokenizer_check.json").write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    n_known = sum(m["known_divergence"] for m in mismatches)
    print(f"tokenizer: {len(TOKENIZER_TEXTS)} texts, {len(mismatches)} encode mismatches "
          f"({n_known} known leading-space divergences), {len(decode_mismatches)} decode mismatches")
    for m in mismatches:
        print("  ENCODE MISMATCH", json.dumps(m, ensure_ascii=False))
    for m in decode_mismatches:
        print("  DECODE MISMATCH", json.dumps(m, ensure_ascii=False))
    for lit in literal:
        print("  literal special text", json.dumps(lit, ensure_ascii=False))
    return result


# ----------------------------------------------------------------------------- model


def build_model() -> MistralForCausalLM:
    config = MistralConfig(**CONFIG, attn_implementation="eager")
    model = MistralForCausalLM(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + NORM_NOISE * noise)
            elif name == "model.embed_tokens.weight":
                p.copy_(EMBED_STD * noise)
            elif name == "lm_head.weight":
                p.copy_(LM_HEAD_STD * noise)
            else:
                p.copy_(LINEAR_GAIN / math.sqrt(p.shape[1]) * noise)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    return model


def load_model(sliding_window: int | None = None) -> MistralForCausalLM:
    model = MistralForCausalLM.from_pretrained(
        OUT, dtype=torch.float32, attn_implementation="eager", sliding_window=sliding_window
    )
    if model.config._attn_implementation != "eager" or model.config.sliding_window != sliding_window:
        fail(f"config not applied: {model.config}")
    return model.eval()


@torch.no_grad()
def greedy(model: MistralForCausalLM, input_ids: list[int]) -> tuple[list[int], list[float], np.ndarray]:
    """Manual argmax loop over full-sequence forwards; returns new ids, top-2 gaps, first logits."""
    ids = list(input_ids)
    new_ids, gaps, first_logits = [], [], None
    for _ in range(N_NEW):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()
        if first_logits is None:
            first_logits = logits.numpy().astype("<f4")
        top = torch.topk(logits, 2)
        gaps.append(float(top.values[0] - top.values[1]))
        nxt = int(top.indices[0])
        new_ids.append(nxt)
        ids.append(nxt)
    return new_ids, gaps, first_logits


def run_refs(model, prompts, tok, json_name: str, logits_name: str, extra: dict) -> tuple[list[dict], np.ndarray]:
    records, all_logits = [], []
    for name, text in prompts:
        input_ids = tok(text, add_special_tokens=True)["input_ids"]
        assert input_ids[0] == 1
        new_ids, gaps, logits = greedy(model, input_ids)
        records.append({"name": name, "text": text, "input_ids": input_ids, "greedy_ids": new_ids, "top2_gaps": gaps})
        all_logits.append(logits)
        print(f"  {name:16s} n_in={len(input_ids):3d} min_gap={min(gaps):.4f} greedy={new_ids[:8]}...")
    stacked = np.stack(all_logits)
    doc = {**extra, "n_new": N_NEW, "logits_file": logits_name, "prompts": records}
    (REFS / json_name).write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    stacked.astype("<f4").tofile(REFS / logits_name)
    return records, stacked


# ----------------------------------------------------------------------------- GGUF


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf LlamaModel.permute: HF rotate-half layout -> llama.cpp interleaved RoPE."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(state: dict[str, torch.Tensor]) -> list[tuple[str, str, np.ndarray]]:
    """(gguf name, hf name, f32 array in GGUF layout) in llama.cpp order."""
    n_head, n_kv = CONFIG["num_attention_heads"], CONFIG["num_key_value_heads"]
    out = [("token_embd.weight", "model.embed_tokens.weight", None)]
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight", None),
            (f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight", n_head),
            (f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight", n_kv),
            (f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight", None),
            (f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight", None),
            (f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight", None),
            (f"blk.{i}.ffn_gate.weight", p + "mlp.gate_proj.weight", None),
            (f"blk.{i}.ffn_up.weight", p + "mlp.up_proj.weight", None),
            (f"blk.{i}.ffn_down.weight", p + "mlp.down_proj.weight", None),
        ]
    out += [("output_norm.weight", "model.norm.weight", None), ("output.weight", "lm_head.weight", None)]
    if len(out) != len(state):
        fail(f"tensor map covers {len(out)} tensors, model has {len(state)}")
    result = []
    for gname, hname, heads in out:
        data = state[hname].numpy().astype(np.float32)
        if heads is not None:
            data = permute(data, heads)
        result.append((gname, hname, np.ascontiguousarray(data)))
    return result


def sentencepiece_vocab() -> tuple[list[bytes], list[float], list[int]]:
    """Mirror of convert_hf_to_gguf's _create_vocab_sentencepiece for this model directory."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(SP_MODEL))
    vocab_size = CONFIG["vocab_size"]
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    toktypes = [TokenType.UNUSED] * vocab_size
    for i in range(sp.vocab_size()):
        toktype = TokenType.NORMAL
        if sp.IsUnknown(i):
            toktype = TokenType.UNKNOWN
        elif sp.IsControl(i):
            toktype = TokenType.CONTROL
        elif sp.IsUnused(i):
            toktype = TokenType.UNUSED
        elif sp.IsByte(i):
            toktype = TokenType.BYTE
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        toktypes[i] = toktype
    # convert_hf_to_gguf then applies tokenizer_config.json's added_tokens_decoder.
    added = json.loads((OUT / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    for id_str, data in added.items():
        i, content = int(id_str), data["content"]
        if data.get("special"):
            toktypes[i] = TokenType.CONTROL
        else:
            content = content.replace("\u2581", " ")
            toktypes[i] = TokenType.USER_DEFINED
        scores[i] = -1000.0
        tokens[i] = content.encode("utf-8")
    return tokens, scores, [int(t) for t in toktypes]


GGUF_VARIANTS = {
    "f16": (LlamaFileType.MOSTLY_F16, GGMLQuantizationType.F16),
    "q8_0": (LlamaFileType.MOSTLY_Q8_0, GGMLQuantizationType.Q8_0),
    "q4_0": (LlamaFileType.MOSTLY_Q4_0, GGMLQuantizationType.Q4_0),
}


def write_gguf(variant: str, tensors, vocab) -> Path:
    file_type, qtype = GGUF_VARIANTS[variant]
    path = OUT / f"tiny-mistral-{variant}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name("tiny-mistral")
    w.add_context_length(CONFIG["max_position_embeddings"])
    w.add_embedding_length(CONFIG["hidden_size"])
    w.add_block_count(CONFIG["num_hidden_layers"])
    w.add_feed_forward_length(CONFIG["intermediate_size"])
    w.add_head_count(CONFIG["num_attention_heads"])
    w.add_head_count_kv(CONFIG["num_key_value_heads"])
    w.add_rope_freq_base(CONFIG["rope_theta"])
    w.add_layer_norm_rms_eps(CONFIG["rms_norm_eps"])
    w.add_key_length(CONFIG["head_dim"])
    w.add_value_length(CONFIG["head_dim"])
    w.add_file_type(file_type)
    w.add_vocab_size(CONFIG["vocab_size"])
    w.add_rope_dimension_count(CONFIG["head_dim"])
    tokens, scores, toktypes = vocab
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(toktypes)
    special = gguf.SpecialVocab(OUT, n_vocab=len(tokens))
    special.add_to_gguf(w, quiet=True)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for gname, _, data in tensors:
        if data.ndim == 1:
            w.add_tensor(gname, data)
        elif qtype == GGMLQuantizationType.F16:
            w.add_tensor(gname, data.astype(np.float16))
        else:
            w.add_tensor(gname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def read_gguf_state(path: Path, tensors) -> tuple[dict[str, torch.Tensor], dict]:
    """Dequantize a written GGUF back to an HF state dict and check its metadata."""
    reader = gguf.GGUFReader(path)
    n_head, n_kv = CONFIG["num_attention_heads"], CONFIG["num_key_value_heads"]
    by_name = {t.name: t for t in reader.tensors}
    state, errors = {}, {}
    for gname, hname, ref in tensors:
        t = by_name[gname]
        deq = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ref.shape).astype(np.float32)
        errors[gname] = float(np.abs(deq - ref).max() / np.abs(ref).max())
        if gname.endswith("attn_q.weight"):
            deq = unpermute(deq, n_head)
        elif gname.endswith("attn_k.weight"):
            deq = unpermute(deq, n_kv)
        state[hname] = torch.from_numpy(np.ascontiguousarray(deq))

    def field(key):
        f = reader.get_field(key)
        return f.contents() if f is not None else None

    meta = {
        "general.architecture": field("general.architecture"),
        "llama.attention.key_length": field("llama.attention.key_length"),
        "llama.rope.dimension_count": field("llama.rope.dimension_count"),
        "tokenizer.ggml.bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "tokenizer.ggml.eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "tokenizer.ggml.unknown_token_id": field("tokenizer.ggml.unknown_token_id"),
        "tokenizer.ggml.add_bos_token": field("tokenizer.ggml.add_bos_token"),
        "tokenizer.ggml.add_eos_token": field("tokenizer.ggml.add_eos_token"),
    }
    want = {
        "general.architecture": "llama",
        "llama.attention.key_length": 16,
        "llama.rope.dimension_count": 16,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    if meta != want:
        fail(f"{path.name}: metadata {meta} != {want}")
    return state, errors


# ----------------------------------------------------------------------------- main


def main() -> None:
    torch.set_num_threads(2)
    REFS.mkdir(parents=True, exist_ok=True)  # files are overwritten; make_chat_refs.py's output is kept

    print(f"torch {torch.__version__}, mistral-common {mistral_common.__version__}, tokenizer {SP_MODEL.name}")
    write_tokenizer()
    tok_result = verify_tokenizer()

    model = build_model()
    model.save_pretrained(OUT, safe_serialization=True)
    if sorted(p.name for p in OUT.glob("*.safetensors")) != ["model.safetensors"]:
        fail("expected a single model.safetensors")

    tok = AutoTokenizer.from_pretrained(OUT)
    model = load_model()
    print("transformers refs (no sliding window):")
    records, logits = run_refs(
        model, PROMPTS, tok, "transformers.json", "transformers_last_logits.f32",
        {"model": "tiny-mistral", "sliding_window": None, "attn_implementation": "eager", "dtype": "float32"},
    )
    min_gap = min(min(r["top2_gaps"]) for r in records)

    sliding = load_model(SLIDING_WINDOW)
    print(f"transformers refs (sliding_window={SLIDING_WINDOW}):")
    s_records, s_logits = run_refs(
        sliding, SLIDING_PROMPTS, tok, "transformers_sliding.json", "transformers_sliding_last_logits.f32",
        {
            "model": "tiny-mistral",
            "sliding_window": SLIDING_WINDOW,
            "sliding_window_semantics": "query at position q attends keys k with q - 8 < k <= q (8 keys incl. itself)",
            "attn_implementation": "eager",
            "dtype": "float32",
        },
    )
    for rec in s_records:
        if not 30 <= len(rec["input_ids"]) <= 60:
            fail(f"sliding prompt {rec['name']} has {len(rec['input_ids'])} tokens, want 30..60")
    s_min_gap = min(min(r["top2_gaps"]) for r in s_records)
    with torch.no_grad():
        full = np.stack(
            [model(input_ids=torch.tensor([r["input_ids"]]), use_cache=False).logits[0, -1].numpy() for r in s_records]
        )
    sliding_effect = float(np.abs(full - s_logits).max())
    print(f"  max |logit(full) - logit(sliding)| at the prompts' last position: {sliding_effect:.4f}")
    if sliding_effect < 1e-2:
        fail("sliding window did not change the logits")

    print("GGUF:")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors = gguf_tensors(state)
    vocab = sentencepiece_vocab()
    gguf_refs = {}
    for variant in GGUF_VARIANTS:
        path = write_gguf(variant, tensors, vocab)
        deq_state, errors = read_gguf_state(path, tensors)
        worst = max(errors, key=errors.get)
        deq_model = load_model()
        deq_model.load_state_dict(deq_state, strict=True)
        deq_records = []
        for rec in records:
            new_ids, gaps, last = greedy(deq_model, rec["input_ids"])
            top = np.argsort(-last)[:8]
            deq_records.append(
                {
                    "name": rec["name"],
                    "greedy_ids": new_ids,
                    "top2_gaps": gaps,
                    "last_logits_top8": [[int(i), float(last[i])] for i in top],
                    "same_greedy_as_f32": new_ids == rec["greedy_ids"],
                }
            )
        gaps_v = min(min(r["top2_gaps"]) for r in deq_records)
        same = sum(r["same_greedy_as_f32"] for r in deq_records)
        gguf_refs[variant] = {
            "file": path.name,
            "max_rel_weight_error": errors[worst],
            "min_top2_gap": gaps_v,
            "prompts": deq_records,
        }
        print(f"  {path.name}: {path.stat().st_size} bytes, worst rel weight error {errors[worst]:.4f} ({worst}), "
              f"greedy == f32 for {same}/{len(records)} prompts, min gap {gaps_v:.4f}")
    (REFS / "gguf_dequant.json").write_text(
        json.dumps(
            {
                "description": "greedy decoding of the HF model whose weights are the dequantized GGUF tensors "
                "(Q/K un-permuted), computed in float32 with eager attention; prompts as in transformers.json. "
                "Compare greedy ids only up to the first step whose top2 gap is small (< 1e-3).",
                "n_new": N_NEW,
                "variants": gguf_refs,
            },
            ensure_ascii=False,
            indent=1,
        )
        + "\n"
    )

    print(f"min top-2 gap: {min_gap:.6f} (no sliding), {s_min_gap:.6f} (sliding)")
    if min(min_gap, s_min_gap) <= MIN_GAP:
        fail(f"top-2 gap below {MIN_GAP}: adjust the seed or scales")
    unexpected = [m for m in tok_result["encode_mismatches"] if not m["known_divergence"]]
    if unexpected:
        fail(f"{len(unexpected)} unexpected tokenizer encode mismatches (see refs/tokenizer_check.json)")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
