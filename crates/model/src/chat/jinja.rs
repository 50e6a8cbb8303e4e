//! Jinja chat templates (tokenizer_config.json's or GGUF's `chat_template`), rendered with
//! minijinja the way transformers' `apply_chat_template` renders them.
//!
//! Tools: a template that writes them itself (it reads `tools` and speaks `<tool_call>`) gets
//! them as transformers passes them. Any other is given the conversation spelled out: the
//! tools and the call format in front of the system prompt, calls as `<tool_call>` text, and
//! results as user turns in `<tool_response>`.

use super::tool_format::tagged;
use super::tools::{self, FunctionSpec};
use super::{ChatMessage, Role};
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use minijinja::{context, Environment, Error, ErrorKind};

/// minijinja's instruction budget for one rendering.
const JINJA_FUEL: u64 = 2_000_000;

pub struct JinjaTemplate {
    env: Environment<'static>,
    /// The template offers tools and reads calls and results itself.
    writes_tools: bool,
}

fn template_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::ChatTemplate(e.to_string())
}

impl JinjaTemplate {
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks, and python string methods.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // A template comes with a model file: one that loops for ever must fail, not hang the
        // server. A real chat template over a long conversation needs far less.
        env.set_fuel(Some(JINJA_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(template_err)?;
        // Templates whose calls are `<tool_call>` + JSON (Hermes, Qwen 2.5); XML-style calls
        // (`<function=…>`, Qwen3-Coder) are another format, so those get ours spelled out.
        let writes_tools = source.contains("tools")
            && source.contains("<tool_call>")
            && source.contains("arguments")
            && !source.contains("<function=");
        Ok(Self { env, writes_tools })
    }

    /// The prompt text. A trailing assistant message is cut right after its content so the model
    /// continues it (transformers' `continue_final_message`).
    pub fn render(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        tools: &[FunctionSpec],
    ) -> Result<String> {
        let has_tool_turns = messages
            .iter()
            .any(|m| m.role == Role::Tool || !m.tool_calls.is_empty());
        if !self.writes_tools && (!tools.is_empty() || has_tool_turns) {
            return self.render(tokenizer, &tagged::spelled_out(messages, tools), &[]);
        }
        let continued = messages
            .last()
            .filter(|m| m.role == Role::Assistant && m.tool_calls.is_empty());
        let items: Vec<_> = messages.iter().map(item).collect();
        let tools: Option<Vec<_>> =
            (!tools.is_empty()).then(|| tools.iter().map(FunctionSpec::to_json).collect());
        let template = self.env.get_template("chat").map_err(template_err)?;
        let text = template
            .render(context! {
                messages => items,
                tools => tools,
                add_generation_prompt => continued.is_none(),
                bos_token => tokenizer.bos_token().unwrap_or_default(),
                eos_token => tokenizer.eos_token().unwrap_or_default(),
            })
            .map_err(template_err)?;
        match continued {
            Some(last) => cut_after_final_message(&text, &last.content),
            None => Ok(text),
        }
    }
}

/// transformers' `tojson`: JSON as Python's `json.dumps` writes it (`", "`, `": "`, no HTML
/// escaping, keys in their order), indented when `indent` is given. minijinja's own is compact
/// and escapes `<`, `>`, `&` and `'`, which would change the prompt.
fn tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<minijinja::Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted for the signature's sake; Python's defaults are what we write.
    let _: Option<minijinja::Value> = kwargs.get("ensure_ascii")?;
    let _: Option<minijinja::Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    if sort_keys == Some(true) {
        json.sort_all_objects();
    }
    let text = match indent {
        None => tools::python_json(&json),
        Some(n) => {
            let spaces = vec![b' '; n];
            tools::json_with(
                &json,
                serde_json::ser::PrettyFormatter::with_indent(&spaces),
            )
        }
    };
    Ok(minijinja::Value::from_safe_string(text))
}

/// A message as transformers hands it to a template: calls in OpenAI's shape with their
/// arguments as objects.
fn item(m: &ChatMessage) -> minijinja::Value {
    let calls: Vec<_> = m
        .tool_calls
        .iter()
        .map(|c| {
            serde_json::json!({"id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect();
    context! {
        role => m.role.as_str(),
        content => m.content,
        tool_calls => (!calls.is_empty()).then_some(calls),
        tool_call_id => m.tool_call_id,
    }
}

fn cut_after_final_message(text: &str, message: &str) -> Result<String> {
    let at = text.rfind(message.trim()).ok_or_else(|| {
        ModelError::ChatTemplate(
            "the template dropped the final assistant message; cannot continue it".into(),
        )
    })?;
    // Keep the message's own trailing spaces where the template kept them.
    let keep = if text[at..].starts_with(message.trim_start()) {
        message.trim_start().len()
    } else {
        message.trim().len()
    };
    Ok(text[..at + keep].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/fixtures/tiny-mistral/tokenizer.json"
        );
        Tokenizer::from_file(std::path::Path::new(path)).unwrap()
    }

    #[test]
    fn a_template_that_never_ends_fails_instead_of_hanging() {
        let endless =
            "{% for i in range(10000) %}{% for j in range(10000) %}{{ j }}{% endfor %}{% endfor %}";
        let template = JinjaTemplate::new(endless).unwrap();
        let messages = [ChatMessage::new(Role::User, "hi".to_string())];
        let error = template.render(&tokenizer(), &messages, &[]).unwrap_err();
        assert!(error.to_string().contains("fuel"), "{error}");
    }

    #[test]
    fn renders_with_hugging_face_variables() {
        let source = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content | trim }}{% endfor %}\n\
                      {% if add_generation_prompt %}<gen>{% endif %}{{ eos_token }}";
        let template = JinjaTemplate::new(source).unwrap();
        let messages = [ChatMessage::new(Role::User, " hi ")];
        // trim_blocks drops the newline after `{% endfor %}`, as transformers renders it.
        assert_eq!(
            template.render(&tokenizer(), &messages, &[]).unwrap(),
            "<s>[user]hi<gen></s>"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}";
        let template = JinjaTemplate::new(source).unwrap();
        let err = template
            .render(&tokenizer(), &[ChatMessage::new(Role::Assistant, "x")], &[])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("first message must be from the user"),
            "{err}"
        );
    }

    fn weather() -> FunctionSpec {
        FunctionSpec {
            name: "get_weather".into(),
            description: "Weather in a city".into(),
            parameters: serde_json::json!({"type": "object"}),
        }
    }

    fn tool_conversation() -> Vec<ChatMessage> {
        let mut call = ChatMessage::new(Role::Assistant, "");
        call.tool_calls = vec![super::super::ToolCall {
            id: Some("abcDEF123".into()),
            name: "get_weather".into(),
            arguments: serde_json::json!({"city": "Paris"}),
        }];
        let mut result = ChatMessage::new(Role::Tool, "sunny");
        result.tool_call_id = Some("abcDEF123".into());
        vec![
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "Weather?"),
            call,
            result,
        ]
    }

    #[test]
    fn results_of_parallel_calls_share_one_user_turn() {
        let chatml = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}";
        let template = JinjaTemplate::new(chatml).unwrap();
        let mut messages = tool_conversation();
        messages.push(ChatMessage::new(Role::Tool, "rain"));
        let text = template
            .render(&tokenizer(), &messages, &[weather()])
            .unwrap();
        assert!(
            text.contains("<|user|><tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>\n"),
            "{text}"
        );
    }

    #[test]
    fn a_template_without_tools_gets_them_spelled_out() {
        let chatml =
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>";
        let template = JinjaTemplate::new(chatml).unwrap();
        let text = template
            .render(&tokenizer(), &tool_conversation(), &[weather()])
            .unwrap();
        let expected_call = r#"<|assistant|><tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcDEF123"}]</tool_call>"#;
        assert!(
            text.starts_with("<|system|>Be brief.\n\nYou can call functions"),
            "{text}"
        );
        assert!(text.contains(r#"<tools>[{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object"}}}]</tools>"#), "{text}");
        assert!(text.contains(expected_call), "{text}");
        assert!(
            text.contains("<|user|><tool_response>\nsunny\n</tool_response>"),
            "{text}"
        );
        assert!(text.ends_with("<|assistant|>"), "{text}");
    }

    #[test]
    fn a_template_with_tools_gets_them_as_transformers_passes_them() {
        let source = "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}\
                      {% for m in messages %}{% if m.tool_calls %}<tool_call>{{ m.tool_calls[0].function.name }}{{ m.tool_calls[0].function.arguments | tojson }}</tool_call>\
                      {% elif m.role == 'tool' %}[{{ m.tool_call_id }}:{{ m.content }}]{% else %}{{ m.role }}:{{ m.content }};{% endif %}{% endfor %}";
        let template = JinjaTemplate::new(source).unwrap();
        let text = template
            .render(&tokenizer(), &tool_conversation(), &[weather()])
            .unwrap();
        // Keys in the given order, Python's separators, nothing escaped: as transformers renders.
        assert!(text.starts_with(r#"<tools>[{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object"}}}]</tools>"#), "{text}");
        assert!(text.ends_with(r#"system:Be brief.;user:Weather?;<tool_call>get_weather{"city": "Paris"}</tool_call>[abcDEF123:sunny]"#), "{text}");
    }

    #[test]
    fn tojson_writes_what_transformers_writes() {
        let source = "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(sort_keys=true) }}";
        let template = JinjaTemplate::new(source).unwrap();
        let env = &template.env;
        let x = serde_json::json!({"b": "<a & 'q'>", "a": [1, {}]});
        let text = env
            .get_template("chat")
            .unwrap()
            .render(minijinja::context! { x => x })
            .unwrap();
        assert_eq!(
            text,
            "{\"b\": \"<a & 'q'>\", \"a\": [1, {}]}|{\n  \"b\": \"<a & 'q'>\",\n  \"a\": [\n    1,\n    {}\n  ]\n}|{\"a\": [1, {}], \"b\": \"<a & 'q'>\"}"
        );
    }

    #[test]
    fn cuts_after_a_continued_message() {
        let text = "<|im_start|>assistant\nThought: <|im_end|>\n";
        assert_eq!(
            cut_after_final_message(text, "Thought: ").unwrap(),
            "<|im_start|>assistant\nThought: "
        );
        let trimmed = "<|im_start|>assistant\nThought:<|im_end|>\n";
        assert_eq!(
            cut_after_final_message(trimmed, "Thought: ").unwrap(),
            "<|im_start|>assistant\nThought:"
        );
    }
}
