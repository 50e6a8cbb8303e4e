//! The Mistral instruct format (tokenizer v3, Mistral-7B-Instruct-v0.3), as `mistral-common`
//! encodes a chat request:
//! `<s>[INST] user[/INST] assistant</s>[AVAILABLE_TOOLS] [tools][/AVAILABLE_TOOLS][INST] system\n\nlast user[/INST]`
//! - consecutive messages of one role are joined with a blank line (tool results never are);
//! - the system text goes in front of the last user message, and the tools (when any) just
//!   before that message's `[INST]`;
//! - each text is encoded on its own (so it starts with SentencePiece's `▁`), assistant text
//!   without trailing spaces;
//! - tools, calls and results as `tool_format/mistral.rs` writes them, a call's turn ending
//!   with `</s>`;
//! - a final assistant message gets no `</s>`: the model continues it.

use super::tool_format::mistral as tool_format;
use super::tools::{FunctionSpec, ToolCall};
use super::{ChatMessage, Role};
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// One turn after runs of a role are joined and the system text is taken out.
enum Turn {
    User(String),
    Assistant {
        text: String,
        calls: Vec<ToolCall>,
    },
    ToolResult {
        content: String,
        call_id: Option<String>,
    },
}

pub(super) fn encode(
    tokenizer: &Tokenizer,
    messages: &[ChatMessage],
    tools: &[FunctionSpec],
) -> Result<Vec<u32>> {
    let control = |name: &str| {
        tokenizer
            .token_to_id(name)
            .ok_or_else(|| ModelError::ChatTemplate(format!("vocabulary lacks {name}")))
    };
    let (inst, end_inst) = (control("[INST]")?, control("[/INST]")?);
    let bos = tokenizer
        .bos_id()
        .ok_or_else(|| ModelError::ChatTemplate("no BOS token".into()))?;
    let eos = *tokenizer
        .eos_ids()
        .first()
        .ok_or_else(|| ModelError::ChatTemplate("no EOS token".into()))?;

    let (mut turns, system) = split_turns(messages);
    if turns.is_empty() {
        // Only system text: it is all the model gets to read.
        turns.push(Turn::User(String::new()));
    }
    if let Some(system) = system {
        match turns.iter_mut().rev().find_map(|turn| match turn {
            Turn::User(text) => Some(text),
            _ => None,
        }) {
            Some(text) => *text = format!("{system}\n\n{text}"),
            None => turns.insert(0, Turn::User(format!("{system}\n\n"))),
        }
    }
    if !matches!(turns[0], Turn::User(_)) {
        // A conversation opening with the assistant or a tool gets an empty user turn first.
        turns.insert(0, Turn::User(String::new()));
    }
    let last_user = turns
        .iter()
        .rposition(|turn| matches!(turn, Turn::User(_)))
        .expect("the first turn is the user's");

    let mut ids = vec![bos];
    let last = turns.len() - 1;
    for (i, turn) in turns.iter().enumerate() {
        match turn {
            Turn::User(text) => {
                if i == last_user && !tools.is_empty() {
                    ids.extend(tool_format::encode_tools(tokenizer, tools)?);
                }
                ids.push(inst);
                ids.extend(tokenizer.encode(text)?);
                ids.push(end_inst);
            }
            Turn::Assistant { text, calls } => {
                // mistral-common strips trailing spaces of assistant text (not newlines).
                if !text.is_empty() || calls.is_empty() {
                    ids.extend(tokenizer.encode(text.trim_end_matches(' '))?);
                }
                if !calls.is_empty() {
                    ids.extend(tool_format::encode_calls(tokenizer, calls)?);
                }
                if i != last {
                    ids.push(eos);
                }
            }
            Turn::ToolResult { content, call_id } => {
                ids.extend(tool_format::encode_result(
                    tokenizer,
                    content,
                    call_id.as_deref(),
                )?);
            }
        }
    }
    Ok(ids)
}

/// Joins runs of same-role messages with a blank line (skipping empty ones; an assistant run
/// gathers its calls too) and takes out the system text (every non-empty system message,
/// joined likewise). A system message still ends a run: the user messages around it stay
/// separate turns. Tool results stay one turn each.
fn split_turns(messages: &[ChatMessage]) -> (Vec<Turn>, Option<String>) {
    let mut runs: Vec<(Role, Vec<&ChatMessage>)> = Vec::new();
    let mut system: Vec<&str> = Vec::new();
    let mut run_open = false;
    for m in messages {
        if m.role == Role::System {
            system.push(&m.content);
            run_open = false;
            continue;
        }
        match runs.last_mut() {
            Some((role, run)) if run_open && *role == m.role && m.role != Role::Tool => run.push(m),
            _ => runs.push((m.role, vec![m])),
        }
        run_open = true;
    }
    let join = |parts: &mut dyn Iterator<Item = &str>| {
        parts
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    let turns = runs
        .iter()
        .map(|(role, run)| {
            let text = join(&mut run.iter().map(|m| m.content.as_str()));
            match role {
                Role::User => Turn::User(text),
                Role::Assistant => Turn::Assistant {
                    text,
                    calls: run.iter().flat_map(|m| m.tool_calls.clone()).collect(),
                },
                Role::Tool => Turn::ToolResult {
                    content: run[0].content.clone(),
                    call_id: run[0].tool_call_id.clone(),
                },
                Role::System => unreachable!("system messages were taken out above"),
            }
        })
        .collect();
    let system = join(&mut system.iter().copied());
    (turns, (!system.is_empty()).then_some(system))
}
