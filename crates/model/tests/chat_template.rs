//! Chat templates against their references: the Mistral v3 format against mistral-common
//! (models/make_chat_refs.py), SmolLM2's jinja template against llama.cpp's rendering and
//! tokenization (models/make_llamacpp_refs.py).

mod common;

use common::*;
use ferrollama_model::{ChatMessage, ChatTemplate, Role, Tokenizer};
use serde_json::Value;

fn messages(conversation: &Value) -> Vec<ChatMessage> {
    conversation["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            ChatMessage::new(
                m["role"].as_str().unwrap().parse().unwrap(),
                m["content"].as_str().unwrap(),
            )
        })
        .collect()
}

fn tiny_tokenizer() -> Tokenizer {
    Tokenizer::from_file(&tiny_dir().join("tokenizer.json")).unwrap()
}

/// Conversations whose content spells control tokens: mistral-common reads them as plain
/// text, we (like Hugging Face, vLLM and Ollama) as control tokens. Checked separately below.
const CONTROL_TEXT: &[&str] = &["gitlab_code_completion", "literal_control_text"];

#[test]
fn mistral_v3_matches_mistral_common() {
    let tokenizer = tiny_tokenizer();
    let template = ChatTemplate::for_model(&tokenizer, None).unwrap();
    assert_eq!(template.name(), "mistral-instruct");
    let refs = json(&tiny_refs("mistral_common_chat.json"));
    let mut compared = 0;
    for conversation in refs["conversations"].as_array().unwrap() {
        let name = conversation["name"].as_str().unwrap();
        if CONTROL_TEXT.contains(&name) || conversation.get("error").is_some() {
            continue;
        }
        let ours = template
            .encode(&tokenizer, &messages(conversation))
            .unwrap();
        assert_eq!(ours, ids(&conversation["ids"]), "{name}");
        compared += 1;
    }
    assert!(compared >= 12, "only {compared} conversations compared");
}

/// mistral-common refuses a conversation that ends with an assistant message unless it is
/// marked as a prefix; we always continue it (GitLab Duo Chat's "Thought: " prefill).
#[test]
fn trailing_assistant_message_is_continued() {
    let tokenizer = tiny_tokenizer();
    let template = ChatTemplate::for_model(&tokenizer, None).unwrap();
    let refs = json(&tiny_refs("mistral_common_chat.json"));
    let conversations = refs["conversations"].as_array().unwrap();
    let find = |name: &str| conversations.iter().find(|c| c["name"] == name).unwrap();

    let open = template
        .encode(&tokenizer, &messages(find("trailing_assistant_no_prefix")))
        .unwrap();
    let hi = tokenizer.encode("Hi").unwrap();
    let hello = tokenizer.encode("Hello").unwrap();
    assert_eq!(open, [&[1, 3][..], &hi, &[4], &hello].concat());
    assert_ne!(open.last(), Some(&2), "no EOS after a continued message");

    let duo = template
        .encode(&tokenizer, &messages(find("duo_chat_thought_prefix")))
        .unwrap();
    assert_eq!(duo, ids(&find("duo_chat_thought_prefix")["ids"]));
}

/// The GitLab AI Gateway sends code completions as `<s>[SUFFIX]{suffix}[PREFIX]{prefix}` in a
/// user message. The v3 vocabulary has [PREFIX] (11), [MIDDLE] (12) and [SUFFIX] (13) as
/// control tokens, so they become single tokens, and so does `<s>`.
#[test]
fn fim_shaped_message_gets_control_tokens() {
    let tokenizer = tiny_tokenizer();
    let refs = json(&tiny_refs("mistral_common_chat.json"));
    let control = &refs["control_tokens"];
    for (name, id) in [
        ("[PREFIX]", 11),
        ("[MIDDLE]", 12),
        ("[SUFFIX]", 13),
        ("[INST]", 3),
        ("[/INST]", 4),
    ] {
        assert_eq!(control[name], id, "reference vocabulary");
        assert_eq!(tokenizer.token_to_id(name), Some(id));
        assert!(tokenizer.is_control(name), "{name} is a control token");
    }
    let template = ChatTemplate::for_model(&tokenizer, None).unwrap();
    let prompt = "<s>[SUFFIX]def b():\n    return 2\n[PREFIX]def a():\n";
    let ids = template
        .encode(&tokenizer, &[ChatMessage::new(Role::User, prompt)])
        .unwrap();
    // Around control tokens there is no SentencePiece `▁` (Hugging Face semantics).
    assert_eq!(&ids[..4], &[1, 3, 1, 13], "BOS, [INST], <s>, [SUFFIX]");
    let after_suffix = &ids[4..];
    let prefix_at = after_suffix
        .iter()
        .position(|&t| t == 11)
        .expect("[PREFIX] is one token");
    // The suffix comes out as in mistral-common's own FIM encoding (`encode_fim`).
    let fim = refs["fim"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "fim_basic")
        .unwrap();
    let fim_ids = common::ids(&fim["ids"]);
    assert_eq!(
        &after_suffix[..prefix_at],
        &fim_ids[2..fim_ids.iter().position(|&t| t == 11).unwrap()]
    );
    assert_eq!(
        tokenizer
            .decode(&after_suffix[prefix_at + 1..after_suffix.len() - 1])
            .unwrap(),
        "def a():\n"
    );
    assert_eq!(ids.last(), Some(&4), "[/INST] closes the turn");
}

/// SmolLM2's GGUF carries a ChatML jinja template: rendered and tokenized prompts equal
/// llama.cpp's for every reference chat.
#[test]
fn jinja_template_matches_llama_cpp() {
    let gguf = ferrollama_model::weights::GgufFile::open(&smollm2_gguf()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let template =
        ChatTemplate::for_model(&tokenizer, gguf.string("tokenizer.chat_template")).unwrap();
    assert_eq!(template.name(), "jinja");
    let refs = json(&repo_root().join("models/fixtures/smollm2/llamacpp_refs.json"));
    let chats = refs["chats"].as_array().unwrap();
    assert!(chats.len() >= 5);
    for chat in chats {
        let ours = template.encode(&tokenizer, &messages(chat)).unwrap();
        assert_eq!(ours, ids(&chat["prompt_ids"]), "{:?}", chat["messages"]);
    }
}

#[test]
fn jinja_continues_a_trailing_assistant_message() {
    let gguf = ferrollama_model::weights::GgufFile::open(&smollm2_gguf()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let template =
        ChatTemplate::for_model(&tokenizer, gguf.string("tokenizer.chat_template")).unwrap();
    let conversation = [
        ChatMessage::new(Role::User, "How do I create an issue?"),
        ChatMessage::new(Role::Assistant, "Thought: "),
    ];
    let ids = template.encode(&tokenizer, &conversation).unwrap();
    let text = tokenizer.decode(&ids).unwrap();
    assert!(text.ends_with("assistant\nThought: "), "{text:?}");
}
