"""Record how mistral-common encodes chat requests with the Mistral v3 sentencepiece tokenizer.

Writes models/fixtures/tiny-mistral/refs/mistral_common_chat.json:
  mistral_common_version, validation_mode
  control_tokens        every control piece of the v3 vocab -> id (plus unknown/user-defined pieces)
  conversations         chat requests: messages, ids, prefix_ids, the text mistral-common decodes
                        (special tokens kept, sentencepiece pieces), or the error it raises
  fim                   fill-in-the-middle requests (MistralTokenizer.encode_fim)
  rules                 the encoding rules observed, checked by re-deriving every conversation's ids
                        from plain sentencepiece calls (the script fails if any differs)

Run with the reference venv (see models/requirements-ref.txt):
    /opt/ferro-ref/bin/python models/make_chat_refs.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mistral_common
import sentencepiece
from mistral_common.protocol.fim.request import FIMRequest
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

OUT = Path(__file__).resolve().parent / "fixtures" / "tiny-mistral" / "refs" / "mistral_common_chat.json"
SP_MODEL = Path(mistral_common.__file__).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"

BOS, EOS, INST, END_INST = 1, 2, 3, 4

DUO_SYSTEM = (
    "You are GitLab Duo Chat, an AI assistant. Answer the question as accurately as possible.\n"
    "Use the tools available when needed."
)

# (name, [(role, content, prefix)]) -- prefix only matters for assistant messages.
CONVERSATIONS = [
    ("single_turn", [("user", "Hello, how are you?", False)]),
    ("system_user", [("system", "You are a helpful assistant.", False), ("user", "What is 2+2?", False)]),
    (
        "multi_turn",
        [("user", "What is 2+2?", False), ("assistant", "4", False), ("user", "And 3+3?", False)],
    ),
    (
        "system_multi_turn",
        [
            ("system", "Answer briefly.", False),
            ("user", "What is 2+2?", False),
            ("assistant", "4", False),
            ("user", "And 3+3?", False),
        ],
    ),
    (
        "system_three_user_turns",
        [
            ("system", "Be terse.", False),
            ("user", "one", False),
            ("assistant", "1", False),
            ("user", "two", False),
            ("assistant", "2", False),
            ("user", "three", False),
        ],
    ),
    ("two_system_messages", [("system", "First rule.", False), ("system", "Second rule.", False), ("user", "Hi", False)]),
    (
        "system_between_users",
        [("user", "first", False), ("system", "mid system", False), ("user", "second", False)],
    ),
    ("consecutive_users", [("user", "Part one.", False), ("user", "Part two.", False)]),
    (
        "consecutive_assistants",
        [
            ("user", "Tell me two things.", False),
            ("assistant", "Thing one.", False),
            ("assistant", "Thing two.", False),
            ("user", "Thanks!", False),
        ],
    ),
    ("assistant_first", [("assistant", "I speak first.", False), ("user", "OK", False)]),
    ("assistant_prefix_single", [("user", "Complete: The capital of France is", False), ("assistant", "The capital", True)]),
    (
        "assistant_prefix_multi",
        [
            ("system", "You are concise.", False),
            ("user", "Hi", False),
            ("assistant", "Hello!", False),
            ("user", "Count to three.", False),
            ("assistant", "1, 2,", True),
        ],
    ),
    ("assistant_prefix_trailing_space", [("user", "Go on", False), ("assistant", "Thought: ", True)]),
    ("assistant_prefix_trailing_newline", [("user", "List", False), ("assistant", "Sure:\n", True)]),
    (
        "unicode",
        [
            ("user", "日本語で答えてください 🚀 Ünïcödé", False),
            ("assistant", "はい！😀 e\u0301", False),
            ("user", "中文也可以吗？👍🏽", False),
        ],
    ),
    (
        "whitespace",
        [
            ("user", "  leading and trailing spaces  ", False),
            ("assistant", "  answer with spaces  \n", False),
            ("user", "\n\nnewlines around\n\n", False),
        ],
    ),
    ("tab_start", [("user", "\tindented with a tab", False)]),
    ("empty_system", [("system", "", False), ("user", "Hi", False)]),
    ("whitespace_system", [("system", " ", False), ("user", "Hi", False)]),
    ("empty_user", [("user", "", False)]),
    (
        "gitlab_code_completion",
        [("user", "<s>[SUFFIX]def b():\n    return 2\n[PREFIX]def a():\n", False)],
    ),
    ("literal_control_text", [("user", "[INST] not a control token [/INST] </s>", False)]),
    (
        "duo_chat_thought_prefix",
        [("system", DUO_SYSTEM, False), ("user", "How do I create an issue?", False), ("assistant", "Thought: ", True)],
    ),
    ("trailing_assistant_no_prefix", [("user", "Hi", False), ("assistant", "Hello", False)]),
    ("system_only", [("system", "Only a system prompt.", False)]),
]

FIM_REQUESTS = [
    ("fim_basic", "def a():\n", "def b():\n    return 2\n"),
    ("fim_no_suffix", "def a():\n    return 1\n", ""),
    ("fim_suffix_leading_space", "x = ", " + 1\n"),
]


def make_message(role: str, content: str, prefix: bool):
    if role == "user":
        return UserMessage(content=content)
    if role == "system":
        return SystemMessage(content=content)
    return AssistantMessage(content=content, prefix=prefix)


def rederive(sp: sentencepiece.SentencePieceProcessor, messages: list[tuple[str, str, bool]]) -> list[int]:
    """The v3 rules, written with plain sentencepiece calls."""
    system = "\n\n".join(c for r, c, _ in messages if r == "system" and c)
    groups: list[list] = []  # consecutive same-role runs; a system message ends a run and vanishes
    for role, content, prefix in messages:
        if groups and groups[-1][0] == role:
            groups[-1][1].append(content)
            groups[-1][2] |= prefix
        else:
            groups.append([role, [content], prefix])
    groups = [(r, "\n\n".join(c for c in cs if c), p) for r, cs, p in groups if r != "system"]
    if not groups or groups[0][0] != "user":
        groups.insert(0, ("user", "", False))
    last_user = max(i for i, g in enumerate(groups) if g[0] == "user")
    ids = [BOS]
    for i, (role, content, prefix) in enumerate(groups):
        if role == "user":
            if i == last_user and system:
                content = system + "\n\n" + content
            ids += [INST, *sp.encode(content), END_INST]
        else:
            ids += sp.encode(content.rstrip(" "))
            if not prefix:
                ids.append(EOS)
    return ids


def main() -> None:
    tok = MistralTokenizer.from_file(str(SP_MODEL))
    inner = tok.instruct_tokenizer.tokenizer
    sp = sentencepiece.SentencePieceProcessor(model_file=str(SP_MODEL))

    control = {sp.IdToPiece(i): i for i in range(sp.vocab_size()) if sp.IsControl(i)}
    unknown = {sp.IdToPiece(i): i for i in range(sp.vocab_size()) if sp.IsUnknown(i)}
    user_defined = {
        p: sp.PieceToId(p)
        for p in (f"[REFERENCE_DOC_{k}]" for k in range(20))
        if not sp.IsControl(sp.PieceToId(p)) and not sp.IsUnknown(sp.PieceToId(p))
    }

    conversations, rule_failures = [], []
    for name, messages in CONVERSATIONS:
        record = {
            "name": name,
            "messages": [
                {"role": r, "content": c, **({"prefix": p} if r == "assistant" else {})} for r, c, p in messages
            ],
        }
        try:
            request = ChatCompletionRequest(messages=[make_message(*m) for m in messages])
            tokenized = tok.encode_chat_completion(request)
        except Exception as exc:  # recorded: what mistral-common rejects is part of the reference
            record["error"] = f"{type(exc).__name__}: {exc}"
        else:
            record["ids"] = tokenized.tokens
            record["prefix_ids"] = tokenized.prefix_ids
            record["text"] = inner.decode(tokenized.tokens, special_token_policy=SpecialTokenPolicy.KEEP)
            record["text_plain"] = inner.decode(tokenized.tokens, special_token_policy=SpecialTokenPolicy.IGNORE)
            if rederive(sp, messages) != tokenized.tokens:
                rule_failures.append(name)
        conversations.append(record)
        print(f"{name:34s} {record.get('ids', record.get('error'))}")

    fim = []
    for name, prompt, suffix in FIM_REQUESTS:
        tokenized = tok.encode_fim(FIMRequest(prompt=prompt, suffix=suffix))
        expected = [BOS, control["[SUFFIX]"], *(sp.encode("☺" + suffix)[2:] if suffix else []),
                    control["[PREFIX]"], *sp.encode(prompt)]
        if tokenized.tokens != expected:
            rule_failures.append(name)
        fim.append(
            {
                "name": name,
                "prompt": prompt,
                "suffix": suffix,
                "ids": tokenized.tokens,
                "text": inner.decode(tokenized.tokens, special_token_policy=SpecialTokenPolicy.KEEP),
            }
        )
        print(f"{name:34s} {tokenized.tokens}")

    doc = {
        "mistral_common_version": mistral_common.__version__,
        "tokenizer_file": SP_MODEL.name,
        "instruct_tokenizer": type(tok.instruct_tokenizer).__name__,
        "validation_mode": "test (MistralTokenizer.from_file default)",
        "control_tokens": control,
        "unknown_token": unknown,
        "user_defined_tokens": user_defined,
        "rules": [
            "ids start with BOS (1); there is no BOS anywhere else",
            "consecutive messages of the same role are merged, contents joined with '\\n\\n' (empty contents "
            "skipped); a system message between two user messages ends the run, so they stay separate turns",
            "all non-empty system contents are joined with '\\n\\n' and prepended, followed by '\\n\\n', to the "
            "LAST user message; they are not placed at their own position",
            "user turn: [INST] (3) + sp.encode(content) + [/INST] (4); sp.encode adds the dummy prefix, so "
            "the content's first piece starts with '\u2581' (a content starting with a space gets an extra '\u2581')",
            "assistant turn: sp.encode(content.rstrip(' ')) + EOS (2); only spaces are stripped, not newlines; "
            "the first piece carries the dummy-prefix '\u2581' (a leading space)",
            "assistant with prefix=True: must be last, no EOS, prefix_ids = its ids",
            "if the first non-system message is not a user message, an empty user turn [INST][/INST] is inserted",
            "a request ending with an assistant message without prefix is rejected",
            "control-token spellings inside content ('<s>', '[INST]', '[SUFFIX]', ...) are plain text",
            "FIM: BOS, [SUFFIX], suffix ids without the dummy prefix, [PREFIX], sp.encode(prompt); no [MIDDLE]",
        ],
        "conversations": conversations,
        "fim": fim,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    print(f"[PREFIX]={control.get('[PREFIX]')} [SUFFIX]={control.get('[SUFFIX]')} [MIDDLE]={control.get('[MIDDLE]')}")
    print(f"wrote {OUT}")
    if rule_failures:
        print(f"FAILED: the stated rules do not reproduce: {rule_failures}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
