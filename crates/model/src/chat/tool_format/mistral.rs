//! Mistral's tool format (tokenizer v3, Mistral-7B-Instruct-v0.3), as mistral-common writes it:
//! the tools as `[AVAILABLE_TOOLS] [{…}][/AVAILABLE_TOOLS]` before the last user turn, calls as
//! `[TOOL_CALLS] [{"name": …, "arguments": {…}, "id": …}]`, results as
//! `[TOOL_RESULTS] {"content": …, "call_id": …}[/TOOL_RESULTS]`, JSON as Python writes it.
//! The rest of the conversation is `chat/mistral.rs`.

use super::Opening;
use crate::chat::tools::{python_json, FunctionSpec, ToolCall};
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use serde_json::{json, Value};

/// The control token that opens the model's calls, when the vocabulary has the whole tool
/// format (v3 and later).
pub fn calls_token(tokenizer: &Tokenizer) -> Option<u32> {
    let needed = [
        "[AVAILABLE_TOOLS]",
        "[/AVAILABLE_TOOLS]",
        "[TOOL_RESULTS]",
        "[/TOOL_RESULTS]",
    ];
    if !needed.iter().all(|name| tokenizer.is_control(name)) {
        return None;
    }
    // v11 and later (`[TOOL_CALLS]name[ARGS]{…}`, `[CALL_ID]`) are another format, not this one.
    if tokenizer.is_control("[ARGS]") || tokenizer.is_control("[CALL_ID]") {
        return None;
    }
    tokenizer
        .is_control("[TOOL_CALLS]")
        .then(|| tokenizer.token_to_id("[TOOL_CALLS]"))
        .flatten()
}

fn control(tokenizer: &Tokenizer, name: &str) -> Result<u32> {
    tokenizer
        .token_to_id(name)
        .ok_or_else(|| ModelError::ChatTemplate(format!("vocabulary lacks {name}")))
}

/// `[AVAILABLE_TOOLS] [tools][/AVAILABLE_TOOLS]`.
pub fn encode_tools(tokenizer: &Tokenizer, tools: &[FunctionSpec]) -> Result<Vec<u32>> {
    let listed: Vec<Value> = tools.iter().map(FunctionSpec::to_json).collect();
    let mut ids = vec![control(tokenizer, "[AVAILABLE_TOOLS]")?];
    ids.extend(tokenizer.encode(&python_json(&Value::Array(listed)))?);
    ids.push(control(tokenizer, "[/AVAILABLE_TOOLS]")?);
    Ok(ids)
}

/// `[TOOL_CALLS] [calls]`.
pub fn encode_calls(tokenizer: &Tokenizer, calls: &[ToolCall]) -> Result<Vec<u32>> {
    let listed: Vec<Value> = calls.iter().map(ToolCall::to_json).collect();
    let mut ids = vec![control(tokenizer, "[TOOL_CALLS]")?];
    ids.extend(tokenizer.encode(&python_json(&Value::Array(listed)))?);
    Ok(ids)
}

/// `[TOOL_RESULTS] {"content": …, "call_id": …}[/TOOL_RESULTS]`: the content as JSON when it
/// parses, as mistral-common reads it.
pub fn encode_result(
    tokenizer: &Tokenizer,
    content: &str,
    call_id: Option<&str>,
) -> Result<Vec<u32>> {
    let mut result = json!({"content": ToolCall::arguments_from_text(content)});
    if let Some(id) = call_id {
        result["call_id"] = json!(id);
    }
    let mut ids = vec![control(tokenizer, "[TOOL_RESULTS]")?];
    ids.extend(tokenizer.encode(&python_json(&result))?);
    ids.push(control(tokenizer, "[/TOOL_RESULTS]")?);
    Ok(ids)
}

/// The control token, then the array. No text can spell a control token, so any text is not
/// a call.
pub(super) fn grammar(token: u32, list: &str) -> Vec<String> {
    vec![
        format!(r#"calls: <[{token}]> " "? "[" {list} "]""#),
        "TEXT: /(?s:.*)/".into(),
    ]
}

/// The first token says it: the control token opens calls (its own text is not their JSON).
pub(super) fn opening(calls_token: u32, token: u32) -> Opening {
    if token == calls_token {
        Opening::Calls(String::new())
    } else {
        Opening::Text
    }
}
