//! Chat templates: a conversation to prompt token ids.
//! - Mistral instruct models (a vocabulary with `[INST]`/`[/INST]` control tokens) are encoded
//!   token for token as `mistral-common` encodes them.
//! - Any other model's jinja `chat_template` is rendered with Hugging Face semantics.
//!
//! A trailing assistant message is a prefix for the model to continue, never a closed turn.
//! Tools offered, calls made and their results go into the prompt in each family's own format
//! (`tools`).

mod jinja;
mod mistral;
pub mod tool_format;
mod tools;

pub use tool_format::{Opening, ToolSyntax};
pub use tools::{python_json, FunctionSpec, ToolCall};

use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result, answering one of the assistant's calls.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            "tool" => Ok(Role::Tool),
            other => Err(ModelError::ChatTemplate(format!("unknown role `{other}`"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// The calls an assistant message made.
    pub tool_calls: Vec<ToolCall>,
    /// Which call a tool message answers (OpenAI's `tool_call_id`; Ollama sends none).
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

pub enum ChatTemplate {
    MistralInstruct,
    Jinja(Box<jinja::JinjaTemplate>),
    /// The model ships no template: only raw prompts can be served.
    None,
}

impl ChatTemplate {
    /// Chooses the template for a model from its vocabulary and its jinja source, if any.
    pub fn for_model(tokenizer: &Tokenizer, jinja_source: Option<&str>) -> Result<Self> {
        if tokenizer.is_control("[INST]") && tokenizer.is_control("[/INST]") {
            return Ok(ChatTemplate::MistralInstruct);
        }
        match jinja_source {
            Some(source) => Ok(ChatTemplate::Jinja(Box::new(jinja::JinjaTemplate::new(
                source,
            )?))),
            None => Ok(ChatTemplate::None),
        }
    }

    /// A jinja template from its source, whatever the vocabulary.
    pub fn jinja(source: &str) -> Result<Self> {
        Ok(ChatTemplate::Jinja(Box::new(jinja::JinjaTemplate::new(
            source,
        )?)))
    }

    pub fn name(&self) -> &'static str {
        match self {
            ChatTemplate::MistralInstruct => "mistral-instruct",
            ChatTemplate::Jinja(_) => "jinja",
            ChatTemplate::None => "none",
        }
    }

    /// How the model writes tool calls; `None` when its template has no way to offer tools.
    pub fn tool_syntax(&self, tokenizer: &Tokenizer) -> Option<ToolSyntax> {
        match self {
            ChatTemplate::MistralInstruct => {
                tool_format::mistral::calls_token(tokenizer).map(ToolSyntax::Token)
            }
            ChatTemplate::Jinja(_) => Some(ToolSyntax::Tagged),
            ChatTemplate::None => None,
        }
    }

    /// The prompt ids for `messages`, ready for generation.
    pub fn encode(&self, tokenizer: &Tokenizer, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.encode_with_tools(tokenizer, messages, &[])
    }

    /// The prompt ids for `messages` with `tools` offered to the model.
    pub fn encode_with_tools(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        tools: &[FunctionSpec],
    ) -> Result<Vec<u32>> {
        if messages.is_empty() {
            return Err(ModelError::ChatTemplate(
                "a conversation needs at least one message".into(),
            ));
        }
        match self {
            ChatTemplate::MistralInstruct => mistral::encode(tokenizer, messages, tools),
            ChatTemplate::Jinja(template) => {
                let text = template.render(tokenizer, messages, tools)?;
                let mut ids = tokenizer.encode(&text)?;
                // Templates usually spell BOS themselves; add it only where one is missing.
                if let (true, Some(bos)) = (tokenizer.add_bos(), tokenizer.bos_id()) {
                    if ids.first() != Some(&bos) {
                        ids.insert(0, bos);
                    }
                }
                Ok(ids)
            }
            ChatTemplate::None => Err(ModelError::ChatTemplate(
                "this model has no chat template; send a raw prompt instead".into(),
            )),
        }
    }
}
