//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their corpora:
//! chat-template rendering and the GGUF header, fed arbitrary bytes. Not an API.

use crate::weights::GgufFile;
use crate::{ChatMessage, ChatTemplate, Role, Tokenizer};
use std::path::Path;

/// `data` as text: a jinja template source, a 0 byte, then message contents separated by 1
/// bytes (user and assistant in turn; the first is the system's when there are more than two).
/// Each conversation is rendered by the built-in Mistral template and by that jinja template.
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
    let _ = ChatTemplate::MistralInstruct.encode(tokenizer, &messages);
    if let Ok(template) = ChatTemplate::jinja(source) {
        let _ = template.encode(tokenizer, &messages);
    }
}

/// The file at `path` as a GGUF: its header, summary, model settings and tokenizer.
pub fn gguf_header(path: &Path) {
    if let Ok(file) = GgufFile::open(path) {
        let _ = file.summary();
        let _ = file.config();
        let _ = Tokenizer::from_gguf(&file);
    }
}
