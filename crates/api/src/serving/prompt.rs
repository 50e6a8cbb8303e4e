//! A request's prompts as token ids, with the grammar its output decodes under and the reader
//! of the calls it may make: the chat template (with the tools offered, in the model's own
//! call format) or the raw texts and token lists, the structured-output grammar, tokenizing.
//! Lengths and token ids are the engine's to check, at its door.

use super::{Ask, Input};
use crate::error::ApiError;
use crate::resident::Loaded;
use crate::tool_calls::ToolCallReader;
use crate::tools::Tools;
use ferrollama_engine::Grammar;

/// One prompt of a raw request.
#[derive(Debug, Clone)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

pub struct Prepared {
    pub prompts: Vec<Vec<u32>>,
    pub grammar: Option<Grammar>,
    pub reader: Option<ToolCallReader>,
}

/// Renders and tokenizes `ask`'s input for `loaded`.
pub fn prepare(loaded: &Loaded, ask: &Ask) -> Result<Prepared, ApiError> {
    let (model, tokenizer) = (&loaded.model, &loaded.model.tokenizer);
    let format_field = ask.api.format_field();
    let text_format = ask.format.as_ref().map(|f| (f, format_field));
    match (&ask.input, &ask.tools) {
        (Input::Chat(messages), Some(tools)) => {
            let syntax = Tools::syntax(loaded)?;
            let prompt = model
                .chat_template
                .encode_with_tools(tokenizer, messages, &tools.functions)
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
            Ok(Prepared {
                prompts: vec![prompt],
                grammar: Some(tools.grammar(loaded, syntax, text_format)?),
                reader: tools.reader(syntax),
            })
        }
        (Input::Chat(messages), None) => {
            let prompt = model
                .chat_template
                .encode(tokenizer, messages)
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
            Ok(Prepared {
                prompts: vec![prompt],
                grammar: format_grammar(loaded, ask)?,
                reader: None,
            })
        }
        (Input::Raw(_), Some(_)) => Err(ApiError::invalid(
            "tools",
            "tools: tool calls need a chat (/v1/chat/completions, /api/chat)",
        )),
        (Input::Raw(prompts), None) => {
            let prompts = prompts
                .iter()
                .enumerate()
                .map(|(i, prompt)| match prompt {
                    Prompt::Tokens(ids) => Ok(ids.clone()),
                    Prompt::Text(text) => tokenizer
                        .encode_prompt(text)
                        .map_err(|e| ApiError::invalid(ask.prompt_field(i), e.to_string())),
                })
                .collect::<Result<_, _>>()?;
            Ok(Prepared {
                prompts,
                grammar: format_grammar(loaded, ask)?,
                reader: None,
            })
        }
    }
}

/// The structured-output grammar, when the request asks for one.
fn format_grammar(loaded: &Loaded, ask: &Ask) -> Result<Option<Grammar>, ApiError> {
    ask.format
        .as_ref()
        .map(|f| f.grammar(loaded, ask.api.format_field()))
        .transpose()
}
