//! OpenAI's request bodies, and how each becomes the serving core's [`Ask`].

use crate::error::ApiError;
use crate::serving::{Api, Ask, Input, Options, Prompt};
use crate::state::Limits;
use crate::structured::OutputFormat;
use crate::tools::Tools;
use ferrollama_model::{ChatMessage, Role, ToolCall};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Parameters shared by chat and text completions.
#[derive(Deserialize)]
pub struct Params {
    pub model: String,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<i64>,
    stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    stream_options: Option<StreamOptions>,
    seed: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    #[allow(dead_code)]
    user: Option<String>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    #[serde(default)]
    ignore_eos: bool,
    /// Speculative decoding for this request (`false` turns it off where the server has it on).
    speculative: Option<bool>,
    /// Structured output (`text`, `json_object`, `json_schema`).
    response_format: Option<Value>,
    /// Functions the model may call, and whether or which it must.
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    // Known fields that we do not honour (yet): a value that asks for them is refused by name
    // rather than silently ignored.
    logprobs: Option<bool>,
    top_logprobs: Option<Value>,
    logit_bias: Option<Map<String, Value>>,
    functions: Option<Vec<Value>>,
    function_call: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
pub struct ChatBody {
    #[serde(flatten)]
    pub params: Params,
    messages: Vec<Message>,
}

#[derive(Deserialize)]
pub(crate) struct Message {
    role: String,
    content: Option<Content>,
    /// An assistant message's calls.
    tool_calls: Option<Vec<MessageToolCall>>,
    /// The call a tool message answers.
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct MessageToolCall {
    id: Option<String>,
    function: FunctionCall,
}

#[derive(Deserialize)]
struct FunctionCall {
    name: String,
    /// JSON text, as OpenAI sends it (some clients send the object itself).
    #[serde(default)]
    arguments: Value,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
pub struct CompletionBody {
    #[serde(flatten)]
    pub params: Params,
    prompt: PromptBody,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptBody {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// Most prompts in one completion request.
const MAX_PROMPTS: usize = 32;

impl ChatBody {
    pub fn ask(&self, limits: &Limits) -> Result<Ask, ApiError> {
        let input = Input::Chat(chat_messages(&self.messages)?);
        self.params.ask("/v1/chat/completions", input, limits)
    }
}

impl CompletionBody {
    pub fn ask(&self, limits: &Limits) -> Result<Ask, ApiError> {
        let prompts: Vec<Prompt> = match &self.prompt {
            PromptBody::Text(t) => vec![Prompt::Text(t.clone())],
            PromptBody::Texts(ts) => ts.iter().cloned().map(Prompt::Text).collect(),
            PromptBody::Tokens(ids) => vec![Prompt::Tokens(ids.clone())],
            PromptBody::TokenLists(lists) => lists.iter().cloned().map(Prompt::Tokens).collect(),
        };
        if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
            return Err(ApiError::invalid(
                "prompt",
                format!("give between 1 and {MAX_PROMPTS} prompts"),
            ));
        }
        self.params
            .ask("/v1/completions", Input::Raw(prompts), limits)
    }
}

impl Params {
    /// The request as the serving core takes it; OpenAI's own rules (`n`, `max_tokens` at
    /// least 1, fields it has and we do not honour) are checked here.
    fn ask(&self, route: &'static str, input: Input, limits: &Limits) -> Result<Ask, ApiError> {
        self.refuse_unhonoured()?;
        let n = self.n.unwrap_or(1);
        let most = limits.max_choices as i64;
        if !(1..=most).contains(&n) {
            return Err(ApiError::invalid(
                "n",
                format!("n must be between 1 and {most}, got {n}"),
            ));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if let Some(m) = max_tokens.filter(|&m| m < 1) {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens must be at least 1, got {m}"),
            ));
        }
        let format = match &self.response_format {
            None => None,
            Some(value) => OutputFormat::from_openai(value)?,
        };
        let tools = Tools::parse(
            self.tools.as_deref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls,
        )?;
        let options = Options {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: None,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            num_predict: max_tokens,
            stop: self.stop.as_ref().map(|stop| match stop {
                Stop::One(s) => vec![s.clone()],
                Stop::Many(v) => v.clone(),
            }),
            speculative: self.speculative,
        };
        Ok(Ask {
            api: Api::OpenAi,
            route,
            model: self.model.clone(),
            input,
            options,
            n: n as usize,
            ignore_eos: self.ignore_eos,
            format,
            tools,
            keep_alive: None,
        })
    }

    /// OpenAI fields whose asked-for behaviour this server does not have: a 400 naming the
    /// field, never silence. Their off values (`logprobs: false`, `functions: []`,
    /// `function_call: "none"`) pass.
    fn refuse_unhonoured(&self) -> Result<(), ApiError> {
        let not_supported = |param: &'static str, what: &str| {
            Err(ApiError::invalid(
                param,
                format!("{param}: {what} is not supported by this server"),
            ))
        };
        if self.logprobs == Some(true) {
            return not_supported("logprobs", "returning log probabilities");
        }
        if self
            .top_logprobs
            .as_ref()
            .is_some_and(|v| v != &Value::from(0))
        {
            return not_supported("top_logprobs", "returning log probabilities");
        }
        if self.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
            return not_supported("logit_bias", "biasing tokens");
        }
        if self.functions.as_ref().is_some_and(|f| !f.is_empty()) {
            return not_supported("functions", "the deprecated `functions` (use `tools`)");
        }
        if self
            .function_call
            .as_ref()
            .is_some_and(|v| v != "none" && v != "auto")
        {
            return not_supported(
                "function_call",
                "the deprecated `function_call` (use `tool_choice`)",
            );
        }
        Ok(())
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// OpenAI's messages as the chat template reads them; errors name the message.
pub(crate) fn chat_messages(messages: &[Message]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role: Role = m.role.parse().map_err(|_| {
                ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role `{}` (system, user, assistant, tool)", m.role),
                )
            })?;
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content"),
                                    format!("unsupported content part `{kind}`"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            let mut message = ChatMessage::new(role, content);
            message.tool_call_id = m.tool_call_id.clone();
            message.tool_calls = m
                .tool_calls
                .iter()
                .flatten()
                .map(|c| ToolCall::sent(c.id.clone(), &c.function.name, &c.function.arguments))
                .collect();
            Ok(message)
        })
        .collect()
}
