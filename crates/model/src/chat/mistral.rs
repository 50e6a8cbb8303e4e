//! The Mistral instruct format (tokenizer v3, Mistral-7B-Instruct-v0.3), as `mistral-common`
//! encodes a chat request:
//! `<s>[INST] user[/INST] assistant</s>[INST] system\n\nlast user[/INST]`
//! - consecutive messages of one role are joined with a blank line;
//! - the system text goes in front of the last user message;
//! - each text is encoded on its own (so it starts with SentencePiece's `▁`), assistant text
//!   without trailing spaces;
//! - a final assistant message gets no `</s>`: the model continues it.

use super::{ChatMessage, Role};
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

pub(super) fn encode(tokenizer: &Tokenizer, messages: &[ChatMessage]) -> Result<Vec<u32>> {
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
        turns.push((Role::User, String::new()));
    }
    if let Some(system) = system {
        match turns.iter_mut().rev().find(|(role, _)| *role == Role::User) {
            Some((_, text)) => *text = format!("{system}\n\n{text}"),
            None => turns.insert(0, (Role::User, format!("{system}\n\n"))),
        }
    }
    if turns[0].0 == Role::Assistant {
        // A conversation opening with the assistant gets an empty user turn first.
        turns.insert(0, (Role::User, String::new()));
    }

    let mut ids = vec![bos];
    let last = turns.len() - 1;
    for (i, (role, text)) in turns.iter().enumerate() {
        match role {
            Role::User => {
                ids.push(inst);
                ids.extend(tokenizer.encode(text)?);
                ids.push(end_inst);
            }
            Role::Assistant => {
                // mistral-common strips trailing spaces of assistant text (not newlines).
                ids.extend(tokenizer.encode(text.trim_end_matches(' '))?);
                if i != last {
                    ids.push(eos);
                }
            }
            Role::System => unreachable!("system messages were taken out above"),
        }
    }
    Ok(ids)
}

/// Joins runs of same-role messages with a blank line (skipping empty ones) and takes out the
/// system text (every non-empty system message, joined likewise). A system message still ends
/// a run: the user messages around it stay separate turns.
fn split_turns(messages: &[ChatMessage]) -> (Vec<(Role, String)>, Option<String>) {
    let mut runs: Vec<(Role, Vec<&str>)> = Vec::new();
    let mut system: Vec<&str> = Vec::new();
    let mut run_open = false;
    for m in messages {
        if m.role == Role::System {
            system.push(&m.content);
            run_open = false;
            continue;
        }
        match runs.last_mut() {
            Some((role, parts)) if run_open && *role == m.role => parts.push(&m.content),
            _ => runs.push((m.role, vec![&m.content])),
        }
        run_open = true;
    }
    let join = |parts: &[&str]| {
        parts
            .iter()
            .filter(|p| !p.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    let turns = runs
        .iter()
        .map(|(role, parts)| (*role, join(parts)))
        .collect();
    let system = join(&system);
    (turns, (!system.is_empty()).then_some(system))
}
