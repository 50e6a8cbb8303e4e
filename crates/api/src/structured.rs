//! Structured output: what a request asks its text to be (any JSON object, or JSON matching a
//! schema), read from OpenAI's `response_format` and Ollama's `format`, and compiled into the
//! grammar the engine decodes under.

use crate::error::ApiError;
use crate::resident::Loaded;
use ferrollama_engine::Grammar;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object: OpenAI's `json_object`, Ollama's `"json"`.
    JsonObject,
    /// JSON that the schema accepts.
    JsonSchema(Value),
}

impl OutputFormat {
    /// OpenAI's `response_format`: `{"type": "text" | "json_object" | "json_schema", ...}`.
    /// llama.cpp's `{"type": "json_object", "schema": {...}}` is read too.
    pub fn from_openai(value: &Value) -> Result<Option<Self>, ApiError> {
        const PARAM: &str = "response_format";
        let invalid = |message: String| Err(ApiError::invalid(PARAM, message));
        let Some(kind) = value.get("type").and_then(Value::as_str) else {
            return invalid("response_format must be an object with a `type`".into());
        };
        match kind {
            "text" => Ok(None),
            "json_object" => Ok(Some(match value.get("schema") {
                Some(schema) => Self::JsonSchema(schema.clone()),
                None => Self::JsonObject,
            })),
            "json_schema" => match value.pointer("/json_schema/schema") {
                Some(schema) => Ok(Some(Self::JsonSchema(schema.clone()))),
                None => invalid("response_format.json_schema.schema is required".into()),
            },
            other => invalid(format!(
                "unsupported response_format type `{other}` (text, json_object, json_schema)"
            )),
        }
    }

    /// Ollama's `format`: `""` (none), `"json"`, or a JSON schema object.
    pub fn from_ollama(value: &Value) -> Result<Option<Self>, ApiError> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) if s == "json" => Ok(Some(Self::JsonObject)),
            Value::Object(_) => Ok(Some(Self::JsonSchema(value.clone()))),
            other => Err(ApiError::invalid(
                "format",
                format!("format must be \"json\" or a JSON schema object, got {other}"),
            )),
        }
    }

    /// The grammar for `loaded`'s tokenizer; a schema that does not compile is a 400 naming
    /// `param` and the problem.
    pub fn grammar(&self, loaded: &Loaded, param: &'static str) -> Result<Grammar, ApiError> {
        let tokenizer = &loaded.model.tokenizer;
        match self {
            Self::JsonObject => loaded.grammars.json_object(tokenizer),
            Self::JsonSchema(schema) => loaded.grammars.json_schema(tokenizer, schema),
        }
        .map_err(|e| {
            ApiError::invalid(
                param,
                format!("{param}: this JSON schema cannot be used: {e}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::OutputFormat;
    use serde_json::json;

    #[test]
    fn openai_and_ollama_shapes() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            OutputFormat::from_openai(&json!({"type": "text"})).unwrap(),
            None
        );
        assert_eq!(
            OutputFormat::from_openai(&json!({"type": "json_object"})).unwrap(),
            Some(OutputFormat::JsonObject)
        );
        assert_eq!(
            OutputFormat::from_openai(&json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}})).unwrap(),
            Some(OutputFormat::JsonSchema(schema.clone()))
        );
        for bad in [
            json!({"type": "json_schema"}),
            json!({"type": "yaml"}),
            json!("json"),
        ] {
            assert!(OutputFormat::from_openai(&bad).is_err(), "{bad}");
        }
        assert_eq!(OutputFormat::from_ollama(&json!("")).unwrap(), None);
        assert_eq!(
            OutputFormat::from_ollama(&json!("json")).unwrap(),
            Some(OutputFormat::JsonObject)
        );
        assert_eq!(
            OutputFormat::from_ollama(&schema).unwrap(),
            Some(OutputFormat::JsonSchema(schema))
        );
        for bad in [json!("xml"), json!(3), json!([1])] {
            assert!(OutputFormat::from_ollama(&bad).is_err(), "{bad}");
        }
    }
}
