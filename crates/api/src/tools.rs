//! Tool calls asked for: the tools a request offers (OpenAI's and Ollama's `tools`, OpenAI's
//! `tool_choice` and `parallel_tool_calls`), and the grammar that holds the model to its own
//! call format (the format's rules are its file in the model crate's `chat/tool_format/`) with
//! each function's arguments matching that function's schema. Reading the calls back out of
//! the output is `tool_calls.rs`.

use crate::error::ApiError;
use crate::resident::Loaded;
use crate::structured::OutputFormat;
use crate::tool_calls::ToolCallReader;
use ferrollama_engine::Grammar;
use ferrollama_model::{FunctionSpec, ToolSyntax};
use serde_json::{json, Value};

/// OpenAI's `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// Text only.
    None,
    /// Text or calls, as the model chooses.
    Auto,
    /// At least one call.
    Required,
    /// One call of this function.
    Function(String),
}

/// What a request asks of tools.
#[derive(Debug, Clone)]
pub struct Tools {
    pub functions: Vec<FunctionSpec>,
    pub choice: ToolChoice,
    /// More than one call in a reply (OpenAI's `parallel_tool_calls`, default true).
    pub parallel: bool,
}

impl Tools {
    /// Reads `tools` (OpenAI's and Ollama's shape, `{"type": "function", "function": {…}}`)
    /// and `tool_choice`; `None` when no tools are offered.
    pub fn parse(
        tools: Option<&[Value]>,
        choice: Option<&Value>,
        parallel: Option<bool>,
    ) -> Result<Option<Self>, ApiError> {
        let functions = tools
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, tool)| function(i, tool))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, f) in functions.iter().enumerate() {
            if functions[..i].iter().any(|g| g.name == f.name) {
                return Err(ApiError::invalid(
                    "tools",
                    format!("tools: the function name `{}` is given twice", f.name),
                ));
            }
        }
        let choice = tool_choice(choice, &functions)?;
        if functions.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            functions,
            choice,
            parallel: parallel.unwrap_or(true),
        }))
    }

    /// How `loaded`'s template writes calls; a 400 naming `tools` when it has no way.
    pub fn syntax(loaded: &Loaded) -> Result<ToolSyntax, ApiError> {
        let model = &loaded.model;
        model
            .chat_template
            .tool_syntax(&model.tokenizer)
            .ok_or_else(|| {
                ApiError::invalid(
                    "tools",
                    format!(
                    "tools: {} does not support tools (its chat template has no tool-call format)",
                    loaded.info.names.primary
                ),
                )
            })
    }

    /// The grammar for this request on `loaded`, whose template writes calls in `syntax`.
    /// `text` is what a reply that is not a call must be (free text when `None`), with the
    /// field that asked for it: a schema there that does not compile is named as its own.
    pub fn grammar(
        &self,
        loaded: &Loaded,
        syntax: ToolSyntax,
        text: Option<(&OutputFormat, &'static str)>,
    ) -> Result<Grammar, ApiError> {
        let source = self.lark(syntax, text.map(|(format, _)| format));
        loaded
            .grammars
            .lark(&loaded.model.tokenizer, &source)
            .map_err(|e| {
                if let Some(Err(own)) = text.map(|(format, param)| format.grammar(loaded, param)) {
                    return own;
                }
                ApiError::invalid(
                    "tools",
                    format!("tools: a function's parameters cannot be used as a JSON schema: {e}"),
                )
            })
    }

    /// The reader for each choice's output, when the model may call.
    pub fn reader(&self, syntax: ToolSyntax) -> Option<ToolCallReader> {
        (self.choice != ToolChoice::None).then(|| ToolCallReader::new(syntax))
    }

    /// The Lark grammar (llguidance's dialect): text or calls, as `tool_choice` allows.
    fn lark(&self, syntax: ToolSyntax, text: Option<&OutputFormat>) -> String {
        let start = match self.choice {
            ToolChoice::None => "start: text",
            ToolChoice::Auto => "start: text | calls",
            ToolChoice::Required | ToolChoice::Function(_) => "start: calls",
        };
        let parallel = self.parallel && !matches!(self.choice, ToolChoice::Function(_));
        let list = if parallel {
            r#"call ("," " "? call)*"#
        } else {
            "call"
        };
        let mut rules = vec![start.to_string()];
        rules.push(match text {
            None => "text: TEXT".into(),
            Some(OutputFormat::JsonObject) => {
                format!("text: %json {}", args_schema(&json!({"type": "object"})))
            }
            Some(OutputFormat::JsonSchema(schema)) => {
                format!("text: %json {}", args_schema(schema))
            }
        });
        rules.extend(syntax.grammar(list, parallel));
        let callable: Vec<&FunctionSpec> = self
            .functions
            .iter()
            .filter(|f| match &self.choice {
                ToolChoice::Function(name) => &f.name == name,
                _ => true,
            })
            .collect();
        let names: Vec<String> = (0..callable.len()).map(|i| format!("call_{i}")).collect();
        rules.push(format!("call: {}", names.join(" | ")));
        for (rule, f) in names.iter().zip(callable) {
            let opening = format!(r#"{{"name": "{}", "arguments": "#, f.name);
            rules.push(format!(
                "{rule}: {} {rule}_arguments CALL_ID? \"}}\"",
                json!(opening)
            ));
            rules.push(format!(
                "{rule}_arguments: %json {}",
                args_schema(&f.parameters)
            ));
        }
        // Mistral writes a call's id in its history, so a model may write one too.
        rules.push(r#"CALL_ID: /, "id": "[A-Za-z0-9]{9}"/"#.into());
        rules.join("\n")
    }
}

/// The functions offered, none when no tools were.
pub fn offered(tools: Option<&Tools>) -> &[FunctionSpec] {
    tools.map_or(&[], |t| &t.functions)
}

/// A schema with JSON written as the models saw it in training: Python's separators, no
/// free whitespace (with which a model can spend its budget on newlines). Keywords llguidance
/// does not enforce (`uniqueItems`, `not`, …) are let through, as OpenAI's non-strict tools are.
fn args_schema(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(|| {
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": ",
                   "lenient": true})
        });
    }
    schema
}

/// `tools[i]`, checked: a function with a name OpenAI accepts and an object schema.
fn function(i: usize, tool: &Value) -> Result<FunctionSpec, ApiError> {
    let invalid = |what: String| Err(ApiError::invalid("tools", format!("tools[{i}]: {what}")));
    match tool.get("type").and_then(Value::as_str) {
        Some("function") | None => {}
        Some(other) => return invalid(format!("unsupported tool type `{other}` (function)")),
    }
    let Some(f) = tool.get("function").filter(|f| f.is_object()) else {
        return invalid("a tool needs a `function` object".into());
    };
    let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
    let well_named = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !well_named {
        return invalid(format!(
            "function.name `{name}` must be 1 to 64 letters, digits, underscores or dashes"
        ));
    }
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p) if p.is_object() && p.get("type").is_none_or(|t| t == "object") => p.clone(),
        Some(_) => return invalid("function.parameters must be a JSON schema of an object".into()),
    };
    Ok(FunctionSpec {
        name: name.to_string(),
        description: f
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        parameters,
    })
}

fn tool_choice(choice: Option<&Value>, functions: &[FunctionSpec]) -> Result<ToolChoice, ApiError> {
    let invalid = |what: String| {
        Err(ApiError::invalid(
            "tool_choice",
            format!("tool_choice: {what}"),
        ))
    };
    let choice = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            // "any" is Mistral's name for it.
            "required" | "any" => ToolChoice::Required,
            other => {
                return invalid(format!(
                    "unknown value `{other}` (none, auto, required, or a function)"
                ))
            }
        },
        Some(object) => match object.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if functions.iter().any(|f| f.name == name) => {
                ToolChoice::Function(name.to_string())
            }
            Some(name) => return invalid(format!("the function `{name}` is not among the tools")),
            None => {
                return invalid(r#"expected {"type": "function", "function": {"name": …}}"#.into())
            }
        },
    };
    if functions.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Function(_)) {
        return invalid("a tool call was asked for, but no tools were given".into());
    }
    Ok(choice)
}

#[cfg(test)]
mod tests {
    use super::*;
    fn tokenizer() -> ferrollama_model::Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/fixtures/tiny-mistral/tokenizer.json"
        );
        ferrollama_model::Tokenizer::from_file(std::path::Path::new(path)).unwrap()
    }

    /// Walks `tokens` through the grammar: each must be allowed when it comes. Returns the
    /// constraint at the end.
    fn walk(
        grammar: &Grammar,
        vocab: usize,
        tokens: &[u32],
    ) -> Result<ferrollama_engine::Constraint, String> {
        let mut constraint = grammar.start();
        for &token in tokens {
            let mut logits = vec![0.0f32; vocab];
            constraint.mask(&mut logits)?;
            if logits[token as usize] == f32::NEG_INFINITY {
                return Err(format!("token {token} refused"));
            }
            constraint.advance(token)?;
        }
        Ok(constraint)
    }

    fn allows(constraint: &mut ferrollama_engine::Constraint, vocab: usize, token: u32) -> bool {
        let mut logits = vec![0.0f32; vocab];
        constraint.mask(&mut logits).unwrap();
        logits[token as usize] != f32::NEG_INFINITY
    }

    #[test]
    fn the_grammar_holds_each_format_to_its_calls_and_schemas() {
        let tokenizer = tokenizer();
        let vocab = tokenizer.vocab_size();
        let grammars = ferrollama_engine::Grammars::default();
        let eos = 2;
        let encode = |text: &str| tokenizer.encode(text).unwrap();
        let compile = |tools: &Tools, syntax| {
            grammars
                .lark(&tokenizer, &tools.lark(syntax, None))
                .unwrap()
        };
        let mut auto = tools(None).unwrap().unwrap();
        let call = r#"[{"name": "get_weather", "arguments": {"city": "Paris"}}]"#;

        // Mistral: the control token, then the array; the grammar is complete at its `]`.
        let grammar = compile(&auto, ToolSyntax::Token(5));
        let mut tokens = vec![5];
        tokens.extend(encode(call));
        assert!(walk(&grammar, vocab, &tokens).unwrap().is_complete());
        // Plain text is a reply too, but a call to an unknown function or with arguments
        // outside the schema is not.
        let mut text = walk(&grammar, vocab, &encode("Hello there")).unwrap();
        assert!(allows(&mut text, vocab, eos));
        let mut unknown = vec![5];
        unknown.extend(encode(r#"[{"name": "get_time", "#));
        assert!(walk(&grammar, vocab, &unknown).is_err());
        let mut bad_arguments = vec![5];
        bad_arguments.extend(encode(
            r#"[{"name": "get_weather", "arguments": {"city": 3"#,
        ));
        assert!(walk(&grammar, vocab, &bad_arguments).is_err());

        // Tagged: `<tool_call>` around an object or an array.
        let grammar = compile(&auto, ToolSyntax::Tagged);
        for reply in [
            format!("<tool_call>{call}</tool_call>"),
            format!("<tool_call>\n{}\n</tool_call>", &call[1..call.len() - 1]),
        ] {
            let mut done =
                walk(&grammar, vocab, &encode(&reply)).unwrap_or_else(|e| panic!("{reply}: {e}"));
            assert!(allows(&mut done, vocab, eos), "{reply}");
        }
        assert!(walk(&grammar, vocab, &encode("<tool_call>[{\"name\": \"x")).is_err());
        let spaced = format!("<tool_call>{call}</tool_call>\n");
        let mut spaced = walk(&grammar, vocab, &encode(&spaced)).unwrap();
        assert!(
            allows(&mut spaced, vocab, eos),
            "a reply may end after a newline"
        );

        // `none`: text only, so no control token; `required`: no text.
        auto.choice = ToolChoice::None;
        let grammar = compile(&auto, ToolSyntax::Token(5));
        assert!(walk(&grammar, vocab, &[5]).is_err());
        assert!(walk(&grammar, vocab, &encode("Hello")).is_ok());
        auto.choice = ToolChoice::Required;
        let grammar = compile(&auto, ToolSyntax::Token(5));
        assert!(walk(&grammar, vocab, &encode("Hello")).is_err());
        let grammar = compile(&auto, ToolSyntax::Tagged);
        assert!(walk(&grammar, vocab, &encode("Hello")).is_err());
    }

    fn tools(choice: Option<Value>) -> Result<Option<Tools>, ApiError> {
        let offered = [
            json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}),
        ];
        Tools::parse(Some(&offered), choice.as_ref(), None)
    }

    #[test]
    fn tool_choice_values() {
        assert_eq!(tools(None).unwrap().unwrap().choice, ToolChoice::Auto);
        assert_eq!(
            tools(Some(json!("none"))).unwrap().unwrap().choice,
            ToolChoice::None
        );
        assert_eq!(
            tools(Some(json!("required"))).unwrap().unwrap().choice,
            ToolChoice::Required
        );
        assert_eq!(
            tools(Some(
                json!({"type": "function", "function": {"name": "get_weather"}})
            ))
            .unwrap()
            .unwrap()
            .choice,
            ToolChoice::Function("get_weather".into())
        );
        for bad in [
            json!("sometimes"),
            json!({"type": "function", "function": {"name": "nope"}}),
            json!({}),
        ] {
            assert!(tools(Some(bad.clone())).is_err(), "{bad}");
        }
        assert!(Tools::parse(None, Some(&json!("required")), None).is_err());
        assert!(Tools::parse(None, Some(&json!("auto")), None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_tools_are_named() {
        for bad in [
            json!({"type": "retrieval"}),
            json!({"type": "function"}),
            json!({"type": "function", "function": {"name": "has space"}}),
            json!({"type": "function", "function": {"name": "f", "parameters": "x"}}),
            json!({"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}),
        ] {
            let err = Tools::parse(Some(std::slice::from_ref(&bad)), None, None).unwrap_err();
            assert!(err.message.contains("tools[0]"), "{bad}: {}", err.message);
        }
        let twice = [
            json!({"function": {"name": "f"}}),
            json!({"function": {"name": "f"}}),
        ];
        assert!(Tools::parse(Some(&twice), None, None).is_err());
    }
}
