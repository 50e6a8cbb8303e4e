//! Jinja chat templates (tokenizer_config.json's or GGUF's `chat_template`), rendered with
//! minijinja the way transformers' `apply_chat_template` renders them.

use super::{ChatMessage, Role};
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use minijinja::{context, Environment, Error, ErrorKind};

/// minijinja's instruction budget for one rendering.
const JINJA_FUEL: u64 = 2_000_000;

pub struct JinjaTemplate {
    env: Environment<'static>,
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
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(template_err)?;
        Ok(Self { env })
    }

    /// The prompt text. A trailing assistant message is cut right after its content so the model
    /// continues it (transformers' `continue_final_message`).
    pub fn render(&self, tokenizer: &Tokenizer, messages: &[ChatMessage]) -> Result<String> {
        let continued = messages.last().filter(|m| m.role == Role::Assistant);
        let items: Vec<_> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content })
            .collect();
        let template = self.env.get_template("chat").map_err(template_err)?;
        let text = template
            .render(context! {
                messages => items,
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
        let error = template.render(&tokenizer(), &messages).unwrap_err();
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
            template.render(&tokenizer(), &messages).unwrap(),
            "<s>[user]hi<gen></s>"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}";
        let template = JinjaTemplate::new(source).unwrap();
        let err = template
            .render(&tokenizer(), &[ChatMessage::new(Role::Assistant, "x")])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("first message must be from the user"),
            "{err}"
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
