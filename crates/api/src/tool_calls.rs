//! Reading tool calls back: one choice's output, as it streams, turned into text or calls in
//! the model's own format (`ferrollama_model::ToolSyntax`: the format says how a reply opens
//! calls; reading their JSON is the same for all).

use ferrollama_model::{Opening, ToolCall, ToolSyntax};
use serde_json::{json, Value};

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
            self.held.push_str(text);
            return match self.syntax.opening(&self.held, token) {
                Opening::Calls(json) => {
                    self.held.clear();
                    self.start_calls(&json)
                }
                Opening::Text => self.become_text(),
                Opening::Undecided => Vec::new(),
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
            let Some(mut call) = call_of(&object.text) else {
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
                    if let Some((name, arguments_at)) = call_opening(&partial.text) {
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
    /// The arguments' text written since the last call, from the call object so far; nothing
    /// past the arguments' end (the first value nested in the object).
    fn more_arguments(&mut self, object: &CallObject) -> Option<Piece> {
        if self.arguments_done {
            return None;
        }
        let end = match object.nested_end {
            Some(end) => {
                self.arguments_done = true;
                end
            }
            None => object.text.len(),
        };
        let fresh = object.text.get(self.arguments_at + self.sent..end)?;
        self.sent += fresh.len();
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
    /// The call object being read.
    current: Option<CallObject>,
}

/// A call object's text, so far or whole.
#[derive(Debug, Clone)]
struct CallObject {
    text: String,
    /// How many brackets were open around its opening brace.
    depth: usize,
    /// Where the first value nested in it (a call's arguments) ends, once it has.
    nested_end: Option<usize>,
}

impl ObjectScanner {
    /// The call object being read, so far.
    fn partial(&self) -> Option<&CallObject> {
        self.current.as_ref()
    }

    fn push(&mut self, text: &str) -> Vec<CallObject> {
        let mut done = Vec::new();
        for c in text.chars() {
            if let Some(object) = &mut self.current {
                object.text.push(c);
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
                        self.current = Some(CallObject {
                            text: "{".to_string(),
                            depth,
                            nested_end: None,
                        });
                    }
                    self.open.push(c);
                }
                '}' | ']' => {
                    self.open.pop();
                    let Some(object) = &mut self.current else {
                        continue;
                    };
                    if c == '}' && object.depth == self.open.len() {
                        done.extend(self.current.take());
                    } else if object.depth + 1 == self.open.len() && object.nested_end.is_none() {
                        object.nested_end = Some(object.text.len());
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
}
