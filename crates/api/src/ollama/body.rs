//! Ollama's request bodies for /api/generate and /api/chat, and how each becomes the serving
//! core's [`Ask`].

use crate::error::ApiError;
use crate::keep_alive::KeepAlive;
use crate::serving::{Api, Ask, Input, Options, Prompt};
use crate::structured::OutputFormat;
use crate::tools::Tools;
use ferrollama_model::{ChatMessage, Role, ToolCall};
use serde::Deserialize;
use serde_json::{Map, Value};

/// What /api/generate and /api/chat bodies share.
#[derive(Deserialize)]
pub struct Common {
    model: String,
    pub stream: Option<bool>,
    keep_alive: Option<Value>,
    /// Ollama's options; the model's defaults fill what they leave unset.
    #[serde(default)]
    options: Map<String, Value>,
    /// Structured output: `"json"` or a JSON schema.
    #[serde(default)]
    format: Value,
}

#[derive(Deserialize)]
pub struct GenerateBody {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    /// Known, not honoured: refused when non-empty.
    images: Option<Vec<Value>>,
}

#[derive(Deserialize)]
pub struct ChatBody {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    messages: Vec<ChatMessageBody>,
    /// Functions the model may call.
    tools: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct ChatMessageBody {
    role: String,
    #[serde(default)]
    content: String,
    /// Known, not honoured: refused when non-empty.
    images: Option<Vec<Value>>,
    /// An assistant message's calls (arguments as JSON objects; Ollama gives no ids).
    tool_calls: Option<Vec<OllamaToolCall>>,
    /// The call a tool message answers, from clients that send one.
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct OllamaToolCall {
    function: OllamaFunctionCall,
}

#[derive(Deserialize)]
struct OllamaFunctionCall {
    name: String,
    #[serde(default)]
    arguments: Value,
}

/// A request with nothing to generate: Ollama loads the model (or with `keep_alive: 0`
/// unloads it) and says so.
pub struct LoadOnly {
    pub model: String,
    pub keep_alive: Option<KeepAlive>,
}

impl GenerateBody {
    /// The ask, or a load when the prompt is empty.
    pub fn ask(&self) -> Result<Result<Ask, LoadOnly>, ApiError> {
        let keep_alive = keep_alive(&self.common.keep_alive)?;
        let options = Options::from_map(&self.common.options)?;
        refuse_unhonoured("images", "images are", self.images.as_ref())?;
        let format = OutputFormat::from_ollama(&self.common.format)?;
        if self.prompt.is_empty() {
            return Ok(Err(LoadOnly {
                model: self.common.model.clone(),
                keep_alive,
            }));
        }
        let input = if self.raw {
            Input::Raw(vec![Prompt::Text(self.prompt.clone())])
        } else {
            let mut messages = Vec::new();
            if let Some(system) = &self.system {
                messages.push(ChatMessage::new(Role::System, system.clone()));
            }
            messages.push(ChatMessage::new(Role::User, self.prompt.clone()));
            Input::Chat(messages)
        };
        Ok(Ok(ask(
            "/api/generate",
            &self.common.model,
            input,
            options,
            format,
            None,
            keep_alive,
        )))
    }
}

impl ChatBody {
    /// The ask, or a load when there are no messages.
    pub fn ask(&self) -> Result<Result<Ask, LoadOnly>, ApiError> {
        let keep_alive = keep_alive(&self.common.keep_alive)?;
        let options = Options::from_map(&self.common.options)?;
        // Ollama's API cannot force a call; `options.tool_choice` (OpenAI's values) can, and
        // ollama-python passes options through.
        let tools = Tools::parse(
            self.tools.as_deref(),
            self.common.options.get("tool_choice"),
            None,
        )?;
        for m in &self.messages {
            refuse_unhonoured("images", "images are", m.images.as_ref())?;
        }
        let format = OutputFormat::from_ollama(&self.common.format)?;
        if self.messages.is_empty() {
            return Ok(Err(LoadOnly {
                model: self.common.model.clone(),
                keep_alive,
            }));
        }
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = m.role.parse().map_err(|_| {
                    ApiError::invalid(
                        format!("messages[{i}].role"),
                        format!("unknown role `{}` (system, user, assistant, tool)", m.role),
                    )
                })?;
                let mut message = ChatMessage::new(role, m.content.clone());
                message.tool_call_id = m.tool_call_id.clone();
                message.tool_calls = m
                    .tool_calls
                    .iter()
                    .flatten()
                    .map(|c| ToolCall::sent(None, &c.function.name, &c.function.arguments))
                    .collect();
                Ok(message)
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let input = Input::Chat(messages);
        Ok(Ok(ask(
            "/api/chat",
            &self.common.model,
            input,
            options,
            format,
            tools,
            keep_alive,
        )))
    }
}

fn ask(
    route: &'static str,
    model: &str,
    input: Input,
    options: Options,
    format: Option<OutputFormat>,
    tools: Option<Tools>,
    keep_alive: Option<KeepAlive>,
) -> Ask {
    Ask {
        api: Api::Ollama,
        route,
        model: model.to_string(),
        input,
        options,
        n: 1,
        ignore_eos: false,
        format,
        tools,
        keep_alive,
    }
}

fn keep_alive(value: &Option<Value>) -> Result<Option<KeepAlive>, ApiError> {
    value
        .as_ref()
        .map(|v| {
            KeepAlive::from_json(v)
                .map_err(|e| ApiError::invalid("keep_alive", format!("keep_alive: {e}")))
        })
        .transpose()
}

/// Ollama fields whose asked-for behaviour (`what`) this server does not have: a 400 naming
/// the field when the list is not empty.
fn refuse_unhonoured(
    param: &'static str,
    what: &str,
    values: Option<&Vec<Value>>,
) -> Result<(), ApiError> {
    match values {
        Some(v) if !v.is_empty() => Err(ApiError::invalid(
            param,
            format!("{param}: {what} not supported by this server"),
        )),
        _ => Ok(()),
    }
}
