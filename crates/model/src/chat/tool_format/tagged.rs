//! The `<tool_call>` format (Hermes, Qwen 2.5, SmolLM2): a template that knows it renders the
//! tools and calls itself; a template that knows no tools gets them spelled out here, in front
//! of its system prompt, with calls as `<tool_call>` text and results as user turns in
//! `<tool_response>`. Calls are a JSON object or array between `<tool_call>` and `</tool_call>`.

use super::Opening;
use crate::chat::tools::{python_json, FunctionSpec, ToolCall};
use crate::chat::{ChatMessage, Role};
use serde_json::Value;

pub const TAG: &str = "<tool_call>";

/// What a template that knows no tools is told, in front of its system prompt: the tools,
/// and the `<tool_call>` format (SmolLM2's and Ollama's for it).
pub fn instructions(tools: &[FunctionSpec]) -> String {
    let listed: Vec<Value> = tools.iter().map(FunctionSpec::to_json).collect();
    format!(
        "You can call functions to answer. They are listed in JSON between <tools> and </tools>:\n\
         <tools>{}</tools>\n\
         To call functions, reply with only a JSON list of calls between <tool_call> and \
         </tool_call>, like this:\n\
         <tool_call>[{{\"name\": \"function_name\", \"arguments\": {{\"argument\": \"value\"}}}}]</tool_call>\n\
         When no function is needed, answer in plain text.",
        python_json(&Value::Array(listed))
    )
}

/// Calls as the `<tool_call>` block an assistant turn carries.
pub fn calls_text(calls: &[ToolCall]) -> String {
    let listed: Vec<Value> = calls.iter().map(ToolCall::to_json).collect();
    format!("{TAG}{}</tool_call>", python_json(&Value::Array(listed)))
}

/// A tool's result as the user turn that carries it back.
pub fn result_text(content: &str) -> String {
    format!("<tool_response>\n{content}\n</tool_response>")
}

/// A conversation with tools, for a template that knows none: the instructions merged into
/// the system prompt, calls written into assistant turns, results as user turns.
pub fn spelled_out(messages: &[ChatMessage], offered: &[FunctionSpec]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    if !offered.is_empty() {
        let instructions = instructions(offered);
        match messages.first().filter(|m| m.role == Role::System) {
            Some(system) => out.push(ChatMessage::new(
                Role::System,
                format!("{}\n\n{instructions}", system.content),
            )),
            None => out.push(ChatMessage::new(Role::System, instructions)),
        }
    }
    for (i, m) in messages.iter().enumerate() {
        if i == 0 && !offered.is_empty() && m.role == Role::System {
            continue; // merged above
        }
        if m.role == Role::Tool && i > 0 && messages[i - 1].role == Role::Tool {
            if let Some(last) = out.last_mut() {
                // Results of parallel calls share one user turn: templates that want turns to
                // alternate accept it.
                last.content = format!("{}\n{}", last.content, result_text(&m.content));
                continue;
            }
        }
        out.push(match m.role {
            Role::Tool => ChatMessage::new(Role::User, result_text(&m.content)),
            Role::Assistant if !m.tool_calls.is_empty() => {
                let calls = calls_text(&m.tool_calls);
                let text = if m.content.is_empty() {
                    calls
                } else {
                    format!("{}\n{calls}", m.content)
                };
                ChatMessage::new(Role::Assistant, text)
            }
            _ => ChatMessage::new(m.role, m.content.clone()),
        });
    }
    out
}

/// Blocks of a call or an array of them. The opening tag is one lexeme with the space before
/// it: llguidance's lexer takes the longest match, so a separate space would be read as TEXT.
/// Space after the last block may end the reply too.
pub(super) fn grammar(list: &str, parallel: bool) -> Vec<String> {
    let blocks = if parallel { "(TAG block)*" } else { "" };
    vec![
        format!("calls: TAG block {blocks} WS?"),
        format!(r#"block: WS? (call | "[" {list} "]") WS? "</tool_call>""#),
        r"TAG: /[ \t\n]*<tool_call>/".into(),
        r"WS: /[ \t\n]+/".into(),
        r"TEXT: /(?s:.*)/ & ~/[ \t\n]*<tool_call>(?s:.*)/".into(),
    ]
}

/// Calls once the reply, past leading space, starts with the tag; text once it cannot.
pub(super) fn opening(held: &str) -> Opening {
    let start = held.trim_start_matches([' ', '\t', '\n']);
    if start.starts_with(TAG) {
        Opening::Calls(held.to_string())
    } else if TAG.starts_with(start) {
        Opening::Undecided
    } else {
        Opening::Text
    }
}
