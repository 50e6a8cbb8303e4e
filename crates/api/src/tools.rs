//! Tool calls: the tools a request offers (OpenAI's and Ollama's `tools`, OpenAI's
//! `tool_choice` and `parallel_tool_calls`), the grammar that holds the model to its own call
//! format with each function's arguments matching that function's schema, and the reader that
//! turns the output back into text or calls, as it streams.

use crate::error::ApiError;
use crate::resident::Loaded;
use crate::structured::OutputFormat;
use ferrollama_engine::Grammar;
use ferrollama_model::{FunctionSpec, ToolCall, ToolSyntax};
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

    /// The grammar for this request on `loaded`, whose template writes calls in `syntax`.
    /// `text` is what a reply that is not a call must be (free text when `None`).
    pub fn grammar(
        &self,
        loaded: &Loaded,
        syntax: ToolSyntax,
        text: Option<&OutputFormat>,
    ) -> Result<Grammar, ApiError> {
        let source = self.lark(syntax, text);
        loaded
            .grammars
            .lark(&loaded.model.tokenizer, &source)
            .map_err(|e| {
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
        match syntax {
            ToolSyntax::Token(id) => {
                // No text can spell a control token, so any text is not a call.
                rules.push(format!(r#"calls: <[{id}]> " "? "[" {list} "]""#));
                rules.push("TEXT: /(?s:.*)/".into());
            }
            ToolSyntax::Tagged => {
                // The opening tag is one lexeme with the space before it: llguidance's lexer
                // takes the longest match, so a separate space would be read as TEXT.
                // Space after the last block may end the reply too.
                let blocks = if parallel { "(TAG block)*" } else { "" };
                rules.push(format!("calls: TAG block {blocks} WS?"));
                rules.push(format!(
                    r#"block: WS? (call | "[" {list} "]") WS? "</tool_call>""#
                ));
                rules.push(r"TAG: /[ \t\n]*<tool_call>/".into());
                rules.push(r"WS: /[ \t\n]+/".into());
                rules.push(r"TEXT: /(?s:.*)/ & ~/[ \t\n]*<tool_call>(?s:.*)/".into());
            }
        }
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

/// What a stretch of output turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    /// A call has begun: its id and function are known (OpenAI streams these first).
    CallStarted {
        id: String,
        name: String,
    },
    /// More of the started call's arguments, as the model writes them.
    Arguments(String),
    /// A whole call: the same id, and the arguments parsed.
    Call(ToolCall),
}

/// Reads one choice's output as it streams: text passes through, a reply that opens with
/// the model's call format becomes calls. Each call is given out as it is written (its start,
/// then its arguments' text) and once more whole when its object closes: streams to OpenAI
/// clients use the first, everything else the second.
#[derive(Debug, Clone)]
pub struct ToolCallReader {
    syntax: ToolSyntax,
    state: State,
    /// Text held back: the start of a reply that may yet be a call, or a call's JSON.
    held: String,
    scanner: ObjectScanner,
    /// The call being written, once its name is known.
    started: Option<Started>,
    calls: usize,
}

#[derive(Debug, Clone)]
struct Started {
    id: String,
    /// Where its arguments begin in the object's text, and how much of them is given out.
    arguments_at: usize,
    sent: usize,
    arguments_done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Undecided,
    Text,
    Calls,
}

const TAG: &str = "<tool_call>";

impl ToolCallReader {
    pub fn new(syntax: ToolSyntax) -> Self {
        Self {
            syntax,
            state: State::Undecided,
            held: String::new(),
            scanner: ObjectScanner::default(),
            started: None,
            calls: 0,
        }
    }

    /// The next token's text (and id); what can be given out now.
    pub fn push(&mut self, text: &str, token: u32) -> Vec<Piece> {
        if self.state == State::Undecided {
            self.state = match self.syntax {
                ToolSyntax::Token(id) if token == id => return self.start_calls(""),
                ToolSyntax::Token(_) => State::Text,
                ToolSyntax::Tagged => {
                    self.held.push_str(text);
                    let start = self.held.trim_start_matches([' ', '\t', '\n']);
                    if start.starts_with(TAG) {
                        let held = std::mem::take(&mut self.held);
                        return self.start_calls(&held);
                    }
                    if TAG.starts_with(start) {
                        return Vec::new(); // could still open a call
                    }
                    return self.become_text();
                }
            };
        }
        match self.state {
            State::Text => vec![Piece::Text(text.to_string())],
            _ => self.read_calls(text),
        }
    }

    /// The end of the output: whatever is still held. A call format cut before any call
    /// began (by `max_tokens`) is given out as the text it was; a call cut midway stays the
    /// start it was streamed as.
    pub fn finish(&mut self) -> Vec<Piece> {
        match self.state {
            State::Undecided => self.become_text(),
            State::Calls if self.calls == 0 && self.started.is_none() => {
                vec![Piece::Text(std::mem::take(&mut self.held))]
            }
            _ => Vec::new(),
        }
    }

    fn become_text(&mut self) -> Vec<Piece> {
        self.state = State::Text;
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            Vec::new()
        } else {
            vec![Piece::Text(held)]
        }
    }

    fn start_calls(&mut self, text: &str) -> Vec<Piece> {
        self.state = State::Calls;
        self.read_calls(text)
    }

    fn read_calls(&mut self, text: &str) -> Vec<Piece> {
        if self.calls == 0 {
            self.held.push_str(text);
        }
        let mut pieces = Vec::new();
        for object in self.scanner.push(text) {
            // The first object closed here is the one being written, if it had begun.
            let started = self.started.take();
            let Some(mut call) = call_of(&object) else {
                continue;
            };
            match started {
                Some(mut started) => {
                    pieces.extend(started.more_arguments(&object));
                    call.id = Some(started.id);
                }
                None => {
                    let id = call.id.clone().unwrap_or_else(new_call_id);
                    pieces.push(Piece::CallStarted {
                        id,
                        name: call.name.clone(),
                    });
                    pieces.push(Piece::Arguments(call.arguments.to_string()));
                }
            }
            self.calls += 1;
            pieces.push(Piece::Call(call));
        }
        if let Some(partial) = self.scanner.partial() {
            match &mut self.started {
                Some(started) => pieces.extend(started.more_arguments(partial)),
                None => {
                    if let Some((name, arguments_at)) = call_opening(partial) {
                        let mut started = Started {
                            id: new_call_id(),
                            arguments_at,
                            sent: 0,
                            arguments_done: false,
                        };
                        pieces.push(Piece::CallStarted {
                            id: started.id.clone(),
                            name: name.to_string(),
                        });
                        pieces.extend(started.more_arguments(partial));
                        self.started = Some(started);
                    }
                }
            }
        }
        pieces
    }
}

impl Started {
    /// The arguments' text written since the last call, from the call object's text so far;
    /// nothing past the arguments' end.
    fn more_arguments(&mut self, object: &str) -> Option<Piece> {
        if self.arguments_done {
            return None;
        }
        let arguments = object.get(self.arguments_at..)?;
        let end = match json_value_end(arguments) {
            Some(end) => {
                self.arguments_done = true;
                end
            }
            None => arguments.len(),
        };
        let fresh = arguments.get(self.sent..end)?;
        self.sent = end;
        (!fresh.is_empty()).then(|| Piece::Arguments(fresh.to_string()))
    }
}

/// `{"name": "NAME", "arguments": ` at the start of a call object (the grammar writes exactly
/// this): the name, and where the arguments begin.
fn call_opening(object: &str) -> Option<(&str, usize)> {
    let rest = object.strip_prefix(r#"{"name": ""#)?;
    let name_end = rest.find('"')?;
    let after = rest[name_end..].strip_prefix(r#"", "arguments": "#)?;
    Some((&rest[..name_end], object.len() - after.len()))
}

/// Where the JSON object or array at the start of `text` ends, once it has; `None` while it
/// is still open (or `text` does not start with one).
fn json_value_end(text: &str) -> Option<usize> {
    if !text.starts_with(['{', '[']) {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// A call object as the model wrote it, with a new id. An id the model wrote itself (Mistral's
/// history shows them) may copy one from the conversation, so it is not used.
fn call_of(object: &str) -> Option<ToolCall> {
    let value: Value = serde_json::from_str(object).ok()?;
    let name = value.get("name")?.as_str()?.to_string();
    let arguments = value.get("arguments").cloned().unwrap_or(json!({}));
    Some(ToolCall {
        id: Some(new_call_id()),
        name,
        arguments,
    })
}

/// A fresh call id: nine letters and digits, the form Mistral's format requires (and any
/// OpenAI client takes).
pub fn new_call_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // RandomState is seeded from the OS once per process; the counter makes each id new.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut bits = hasher.finish();
    (0..9)
        .map(|_| {
            let c = ALPHABET[(bits % 62) as usize] as char;
            bits /= 62;
            c
        })
        .collect()
}

/// Finds the call objects in a stream of JSON text: objects at the top level or directly in
/// a top-level array, each given out whole when it closes. Text outside JSON (`<tool_call>`)
/// is passed over.
#[derive(Debug, Clone, Default)]
struct ObjectScanner {
    /// Open brackets and braces.
    open: Vec<char>,
    in_string: bool,
    escaped: bool,
    /// The call object being read, and how deep its opening brace was.
    current: Option<(String, usize)>,
}

impl ObjectScanner {
    /// The call object being read, so far.
    fn partial(&self) -> Option<&str> {
        self.current.as_ref().map(|(object, _)| object.as_str())
    }

    fn push(&mut self, text: &str) -> Vec<String> {
        let mut done = Vec::new();
        for c in text.chars() {
            if let Some((object, _)) = &mut self.current {
                object.push(c);
            }
            if self.in_string {
                match (self.escaped, c) {
                    (true, _) => self.escaped = false,
                    (false, '\\') => self.escaped = true,
                    (false, '"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' if !self.open.is_empty() => self.in_string = true,
                '[' => self.open.push(c),
                '{' => {
                    let depth = self.open.len();
                    if self.current.is_none() && (depth == 0 || self.open == ['[']) {
                        self.current = Some(("{".to_string(), depth));
                    }
                    self.open.push(c);
                }
                '}' | ']' => {
                    self.open.pop();
                    if c == '}'
                        && self
                            .current
                            .as_ref()
                            .is_some_and(|(_, d)| *d == self.open.len())
                    {
                        done.push(self.current.take().expect("checked").0);
                    }
                }
                _ => {}
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every piece the reader gives out for `tokens`.
    fn read_all(syntax: ToolSyntax, tokens: &[(&str, u32)]) -> Vec<Piece> {
        let mut reader = ToolCallReader::new(syntax);
        let mut pieces: Vec<Piece> = Vec::new();
        for (text, id) in tokens {
            pieces.extend(reader.push(text, *id));
        }
        pieces.extend(reader.finish());
        pieces
    }

    /// The text and whole calls (what a response that is not streamed to OpenAI reads).
    fn read(syntax: ToolSyntax, tokens: &[(&str, u32)]) -> Vec<Piece> {
        read_all(syntax, tokens)
            .into_iter()
            .filter(|p| matches!(p, Piece::Text(_) | Piece::Call(_)))
            .collect()
    }

    #[test]
    fn calls_stream_as_they_are_written() {
        let tokens = [
            ("", 5),
            (" [{\"name\": \"f\", \"arg", 1),
            ("uments\": {\"s\": \"a}", 2),
            (
                "\\\"b\"}, \"id\": \"abcDEF123\"}, {\"name\": \"g\", \"arguments\": {}}",
                3,
            ),
            ("]", 4),
        ];
        let mut reader = ToolCallReader::new(ToolSyntax::Token(5));
        let per_token: Vec<Vec<Piece>> = tokens.iter().map(|(t, id)| reader.push(t, *id)).collect();
        assert!(
            per_token[1].is_empty(),
            "the name is not known yet: {:?}",
            per_token[1]
        );
        // Once `"arguments": ` is written the call starts, and its arguments follow as written.
        let Piece::CallStarted { id, name } = &per_token[2][0] else {
            panic!("{:?}", per_token[2]);
        };
        assert_eq!(name, "f");
        assert_eq!(per_token[2][1], Piece::Arguments("{\"s\": \"a}".into()));
        // The rest of f's arguments (not its id), f whole, then g started, written and whole.
        let rest = &per_token[3];
        assert_eq!(rest[0], Piece::Arguments("\\\"b\"}".into()));
        let Piece::Call(f) = &rest[1] else {
            panic!("{rest:?}")
        };
        assert_eq!(f.id.as_ref(), Some(id));
        assert_eq!(f.arguments, json!({"s": "a}\"b"}));
        assert!(
            matches!(&rest[2], Piece::CallStarted { name, .. } if name == "g"),
            "{rest:?}"
        );
        assert_eq!(rest[3], Piece::Arguments("{}".into()));
        assert!(
            matches!(&rest[4], Piece::Call(g) if g.name == "g"),
            "{rest:?}"
        );
        assert_eq!(rest.len(), 5);
        assert!(reader.push("", 2).is_empty() && reader.finish().is_empty());
    }

    fn call(piece: &Piece) -> (&str, &Value, &str) {
        match piece {
            Piece::Call(c) => (&c.name, &c.arguments, c.id.as_deref().unwrap()),
            other => panic!("not a call: {other:?}"),
        }
    }

    #[test]
    fn mistral_calls_follow_their_control_token() {
        let pieces = read(
            ToolSyntax::Token(5),
            &[
                ("", 5),
                (" [{\"name\": \"f\", ", 1),
                ("\"arguments\": {\"s\": \"}]{\\\"\"}}", 2),
                (
                    ", {\"name\": \"g\", \"arguments\": {}, \"id\": \"abcDEF123\"}]",
                    3,
                ),
            ],
        );
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        let (name, args, id) = call(&pieces[0]);
        assert_eq!((name, args), ("f", &json!({"s": "}]{\""})));
        assert_eq!(id.len(), 9);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
        let (name, args, id) = call(&pieces[1]);
        assert_eq!((name, args), ("g", &json!({})));
        assert_ne!(id, "abcDEF123", "the model's own id is replaced");
    }

    #[test]
    fn text_without_the_control_token_passes_through() {
        let pieces = read(ToolSyntax::Token(5), &[("Hello", 9), (" [{\"name\"", 10)]);
        assert_eq!(
            pieces,
            vec![
                Piece::Text("Hello".into()),
                Piece::Text(" [{\"name\"".into())
            ]
        );
    }

    #[test]
    fn tagged_calls_as_objects_or_arrays() {
        let tokens = [
            ("\n<tool", 1),
            (
                "_call>[{\"name\": \"f\", \"arguments\": {\"a\": [1, {\"b\": 2}]}}]</tool_call>",
                2,
            ),
            (
                "\n<tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call>",
                3,
            ),
        ];
        let pieces = read(ToolSyntax::Tagged, &tokens);
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert_eq!(call(&pieces[0]).1, &json!({"a": [1, {"b": 2}]}));
        assert_eq!(call(&pieces[1]).0, "g");
    }

    #[test]
    fn tagged_text_is_held_only_while_it_could_open_a_call() {
        let pieces = read(
            ToolSyntax::Tagged,
            &[("<to", 1), ("day> is", 2), (" fine", 3)],
        );
        assert_eq!(
            pieces,
            vec![
                Piece::Text("<today> is".into()),
                Piece::Text(" fine".into())
            ]
        );
        assert_eq!(
            read(ToolSyntax::Tagged, &[("<tool", 1)]),
            vec![Piece::Text("<tool".into())]
        );
    }

    #[test]
    fn a_call_cut_short_is_given_out_as_text_until_it_has_begun() {
        let pieces = read(
            ToolSyntax::Token(5),
            &[("", 5), (" [{\"name\": \"f\", \"argu", 1)],
        );
        assert_eq!(
            pieces,
            vec![Piece::Text(" [{\"name\": \"f\", \"argu".into())]
        );
        // Once begun, it stays the start of a call that was streamed.
        let begun = [("", 5), (" [{\"name\": \"f\", \"arguments\": {\"a\"", 1)];
        assert_eq!(read(ToolSyntax::Token(5), &begun), vec![]);
        assert!(matches!(
            read_all(ToolSyntax::Token(5), &begun)[0],
            Piece::CallStarted { .. }
        ));
    }

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
