//! Tools in a conversation: the functions a request offers the model and the calls it made,
//! and JSON as Python writes it. How each format writes them is `tool_format/`.

use serde::Serialize;
use serde_json::{json, Value};

/// A function the model may call (OpenAI's `tools[].function`).
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub name: String,
    pub description: String,
    /// A JSON schema for the arguments object.
    pub parameters: Value,
}

impl FunctionSpec {
    /// The tool as OpenAI and Hugging Face templates write it, keys in mistral-common's order.
    pub fn to_json(&self) -> Value {
        json!({"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}})
    }
}

/// One call the assistant made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Absent in Ollama's history, which has no call ids.
    pub id: Option<String>,
    pub name: String,
    /// The arguments as JSON (a string when a client sent text that is not JSON).
    pub arguments: Value,
}

impl ToolCall {
    /// Arguments a client sent as text, read as mistral-common reads them: JSON when they
    /// parse (none at all is `{}`), else the text itself.
    pub fn arguments_from_text(text: &str) -> Value {
        if text.trim().is_empty() {
            return json!({});
        }
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
    }

    /// A call as a client sent it in a chat's history, its arguments as JSON text (OpenAI's
    /// way, read as above), the object itself (Ollama's, and some OpenAI clients'), or
    /// nothing (`{}`).
    pub fn sent(id: Option<String>, name: &str, arguments: &Value) -> Self {
        let arguments = match arguments {
            Value::String(text) => Self::arguments_from_text(text),
            Value::Null => json!({}),
            arguments => arguments.clone(),
        };
        Self {
            id,
            name: name.to_string(),
            arguments,
        }
    }

    /// `{"name": …, "arguments": …, "id": …}`: how Mistral writes a call, and the shape
    /// `<tool_call>` blocks carry.
    pub fn to_json(&self) -> Value {
        let mut call = json!({"name": self.name, "arguments": self.arguments});
        // mistral-common writes no id for an empty one or "null".
        if let Some(id) = self
            .id
            .as_ref()
            .filter(|id| !id.is_empty() && *id != "null")
        {
            call["id"] = json!(id);
        }
        call
    }
}

/// `value` as Python's `json.dumps(value, ensure_ascii=False)` writes it (`", "` and `": "`
/// between items): what mistral-common and most chat templates put in a prompt.
pub fn python_json(value: &Value) -> String {
    json_with(value, PythonFormatter)
}

/// `value` written by `formatter` (Python's separators, or an indenting one).
pub(super) fn json_with(value: &Value, formatter: impl serde_json::ser::Formatter) -> String {
    let mut out = Vec::new();
    let mut writer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut writer)
        .expect("a JSON value always serializes");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

struct PythonFormatter;

/// `", "` before every item but the first, in arrays and objects alike.
fn item_separator<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_spaces_items_like_json_dumps() {
        let value = json!({"a": [1, 2.5, "é\n\""], "b": {}, "c": [], "d": null});
        assert_eq!(
            python_json(&value),
            r#"{"a": [1, 2.5, "é\n\""], "b": {}, "c": [], "d": null}"#
        );
    }

    #[test]
    fn an_empty_or_null_id_is_no_id_as_in_mistral_common() {
        for id in ["", "null"] {
            let call = ToolCall {
                id: Some(id.into()),
                name: "f".into(),
                arguments: json!({}),
            };
            assert_eq!(
                call.to_json(),
                json!({"name": "f", "arguments": {}}),
                "{id:?}"
            );
        }
    }

    #[test]
    fn a_call_writes_its_id_only_when_it_has_one() {
        let mut call = ToolCall {
            id: None,
            name: "f".into(),
            arguments: json!({"x": 1}),
        };
        assert_eq!(
            python_json(&call.to_json()),
            r#"{"name": "f", "arguments": {"x": 1}}"#
        );
        call.id = Some("abcDEF123".into());
        assert_eq!(
            python_json(&call.to_json()),
            r#"{"name": "f", "arguments": {"x": 1}, "id": "abcDEF123"}"#
        );
    }
}
