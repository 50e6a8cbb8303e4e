#!/usr/bin/env python3
"""Writes the speculative-decoding workloads (JSONL for `ferrollama bench --dataset`) from real
files of this repository, in the chat shape of GitLab's code generation requests (a system
prompt that says what the assistant is, a user message with the instruction and the code):

- code-editing.jsonl: rename a variable, add a parameter, translate the comments, of real
  source excerpts (Rust, Python, shell): replies that write back most of their prompt;
- summarisation.jsonl: summarise a README section: replies that reuse its phrases;
- free-writing.jsonl: short stories and explanations from one line: drafts rarely match.

Deterministic (no randomness), so the committed files are what this script writes:
    python3 benches/workloads/make_workloads.py
"""
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = pathlib.Path(__file__).resolve().parent

SYSTEM_CODE = ("You are a code generation assistant inside GitLab. You change code exactly as asked "
               "and reply with the whole changed code in one fenced block, nothing else.")
SYSTEM_TEXT = "You are a helpful assistant inside GitLab."

# (file, first line, last line, language): excerpts of real code, 25-60 lines each.
EXCERPTS = [
    ("crates/engine/src/draft.rs", 45, 90, "rust"),
    ("crates/engine/src/sampler.rs", 120, 165, "rust"),
    ("crates/engine/src/stop.rs", 1, 50, "rust"),
    ("crates/store/src/manifest.rs", 1, 50, "rust"),
    ("crates/kernels/src/plan.rs", 230, 262, "rust"),
    ("crates/model/src/rope.rs", 1, 60, "rust"),
    ("models/make_tiny_mistral.py", 1, 50, "python"),
    ("tests/clients/conftest.py", 1, 60, "python"),
    ("kernels/cuda-toolchain.sh", 14, 60, "bash"),
    ("deploy/llm-healthcheck.sh", 1, 50, "bash"),
]


def excerpt(path, first, last):
    lines = (ROOT / path).read_text().splitlines()
    return "\n".join(lines[first - 1:last])


def identifiers(code):
    """Names declared in the code (let/fn/def/local assignments), longest first."""
    names = re.findall(r"\b(?:let(?: mut)?|fn|def|local)\s+([a-z_][a-z0-9_]{3,})", code)
    names += re.findall(r"^\s*([a-z_][a-z0-9_]{3,})=", code, re.M)
    seen = []
    for n in names:
        if n not in seen:
            seen.append(n)
    return sorted(seen, key=len, reverse=True)


def chat(system, user, max_tokens):
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": max_tokens}


def code_editing():
    rows = []
    for path, first, last, lang in EXCERPTS:
        code = excerpt(path, first, last)
        fence = f"```{lang}\n{code}\n```"
        names = identifiers(code) or ["value"]
        old = names[0]
        rows.append(chat(SYSTEM_CODE, f"Rename `{old}` to `{old}_renamed` everywhere in this code "
                                      f"from {path}:\n\n{fence}", 384))
        rows.append(chat(SYSTEM_CODE, f"Add a parameter `verbose` (a boolean) to the first function "
                                      f"in this code from {path}, and pass it on where the "
                                      f"function is called:\n\n{fence}", 384))
        rows.append(chat(SYSTEM_CODE, f"Translate the comments of this code from {path} into "
                                      f"French; change nothing else:\n\n{fence}", 384))
    return rows


def summarisation():
    text = (ROOT / "README.md").read_text()
    sections = re.split(r"\n## ", text)[1:]
    rows = []
    for section in sections[:10]:
        body = section.split("\n", 1)[1].strip()[:2500]
        rows.append(chat(SYSTEM_TEXT, f"Summarise this section of a README in a few sentences, "
                                      f"keeping its own terms:\n\n{body}", 256))
    return rows


def free_writing():
    topics = ["a lighthouse keeper who collects clocks", "why the sky is blue, for a child",
              "a recipe for bread, told as a poem", "a letter from a cat to its owner",
              "the history of the bicycle in five sentences", "a dialogue between two rivers",
              "how a compiler works, without jargon", "a day at a mountain railway station",
              "advice to a new gardener", "a myth about the first snow"]
    return [chat(SYSTEM_TEXT, f"Write about {t}.", 256) for t in topics]


for name, rows in [("code-editing", code_editing()), ("summarisation", summarisation()),
                   ("free-writing", free_writing())]:
    with open(OUT / f"{name}.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"{name}.jsonl: {len(rows)} requests")
