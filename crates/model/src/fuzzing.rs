//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their corpora:
//! chat-template rendering and the GGUF header, fed arbitrary bytes. Not an API.

use crate::weights::GgufFile;
use crate::{ChatMessage, ChatTemplate, FunctionSpec, Role, Tokenizer};
use std::path::Path;

/// `data` as text: a jinja template source, a 0 byte, then message contents separated by 1
/// bytes (user and assistant in turn; the first is the system's when there are more than two).
/// Each conversation is rendered by the built-in Mistral template and by that jinja template,
/// plain and again with a tool offered, its last message turned into a tool's result.
pub fn chat_template(tokenizer: &Tokenizer, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (source, rest) = text.split_once('\0').unwrap_or(("", &text));
    let contents: Vec<&str> = rest.split('\u{1}').collect();
    let messages: Vec<ChatMessage> = contents
        .iter()
        .enumerate()
        .map(|(i, content)| {
            let role = match i {
                0 if contents.len() > 2 => Role::System,
                _ if i % 2 == contents.len() % 2 => Role::Assistant,
                _ => Role::User,
            };
            ChatMessage::new(role, content.to_string())
        })
        .collect();
    let tools = [FunctionSpec {
        name: "f".into(),
        description: rest.chars().take(16).collect(),
        parameters: serde_json::json!({"type": "object"}),
    }];
    let mut with_tools = messages.clone();
    if let Some(last) = with_tools.last_mut() {
        last.role = Role::Tool;
        last.tool_call_id = Some(last.content.chars().take(9).collect());
    }
    let _ = ChatTemplate::MistralInstruct.encode(tokenizer, &messages);
    let _ = ChatTemplate::MistralInstruct.encode_with_tools(tokenizer, &with_tools, &tools);
    if let Ok(template) = ChatTemplate::jinja(source) {
        let _ = template.encode(tokenizer, &messages);
        let _ = template.encode_with_tools(tokenizer, &with_tools, &tools);
    }
}

/// The file at `path` as a GGUF: its header, summary, model settings and tokenizer.
pub fn gguf_header(path: &Path) {
    if let Ok(file) = GgufFile::open(path) {
        let _ = crate::Description::of_gguf(&file);
        let _ = file.config();
        let _ = Tokenizer::from_gguf(&file);
    }
}
