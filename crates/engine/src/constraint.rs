//! Constrained decoding: a grammar over the tokens a sequence may generate, applied at
//! sampling. Each step masks the logits to the tokens the grammar allows next, and the sampled
//! token advances it. The grammar's state lives in the sequence, so preemption by recompute
//! (which keeps the sequence and only recomputes its keys and values) keeps it too.
//!
//! Grammars are llguidance's (JSON schema, or Lark for tool calls): compiled once per request
//! against a token table built once per tokenizer.

use ferrollama_model::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// The grammars of one tokenizer: the token table is built on first use (a few tens of ms
/// for a 32k vocabulary), then shared by every request.
#[derive(Default)]
pub struct Grammars {
    factory: OnceLock<Result<ParserFactory, String>>,
}

impl Grammars {
    /// A constraint to any JSON value the schema accepts; a schema llguidance cannot compile
    /// is an error naming the problem. `tokenizer` is the model's, the same at every call.
    pub fn json_schema(&self, tokenizer: &Tokenizer, schema: &Value) -> Result<Grammar, String> {
        if !schema.is_object() && !schema.is_boolean() {
            return Err("a JSON schema must be an object".into());
        }
        let mut schema = schema.clone();
        if let Some(object) = schema.as_object_mut() {
            // Compact JSON: with free whitespace a model can spend its whole budget on
            // newlines and never close the object.
            object
                .entry("x-guidance")
                .or_insert_with(|| json!({"whitespace_flexible": false}));
        }
        self.compile(tokenizer, TopLevelGrammar::from_json_schema(schema))
    }

    /// Any JSON object: Ollama's `format: "json"` and OpenAI's `json_object`.
    pub fn json_object(&self, tokenizer: &Tokenizer) -> Result<Grammar, String> {
        self.json_schema(tokenizer, &json!({"type": "object"}))
    }

    /// A constraint from a Lark grammar (llguidance's dialect: `%json {…}` embeds a schema,
    /// `<[id]>` names a special token); one that does not compile is an error naming why.
    pub fn lark(&self, tokenizer: &Tokenizer, source: &str) -> Result<Grammar, String> {
        self.compile(tokenizer, TopLevelGrammar::from_lark(source.to_string()))
    }

    fn compile(&self, tokenizer: &Tokenizer, grammar: TopLevelGrammar) -> Result<Grammar, String> {
        let factory = self
            .factory
            .get_or_init(|| parser_factory(tokenizer))
            .as_ref()
            .map_err(Clone::clone)?;
        let parser = factory.create_parser(grammar).map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(Grammar(Arc::new(matcher)))
    }
}

/// The token table llguidance needs: each token's bytes (special tokens marked so that no
/// text can produce them), and the end-of-sequence token the grammar allows when complete.
fn parser_factory(tokenizer: &Tokenizer) -> Result<ParserFactory, String> {
    let json: Value = serde_json::from_str(&tokenizer.to_json().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let mut words = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&json))
        .map_err(|_| {
            "this tokenizer's vocabulary cannot be read for constrained decoding".to_string()
        })?
        .map_err(|e| format!("this tokenizer cannot be used for constrained decoding: {e}"))?;
    let vocab = tokenizer.vocab_size().max(words.len());
    words.resize(vocab, Vec::new());
    let eos = *tokenizer
        .eos_ids()
        .first()
        .ok_or("the model has no end-of-sequence token")?;
    let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, eos), &words);
    let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
    let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
    factory.quiet();
    Ok(factory)
}

/// A compiled grammar, ready to start: every choice of a request starts its own copy.
#[derive(Clone)]
pub struct Grammar(Arc<Matcher>);

impl Grammar {
    pub fn start(&self) -> Constraint {
        Constraint {
            matcher: self.0.deep_clone(),
            prepared: None,
        }
    }
}

impl fmt::Debug for Grammar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Grammar")
    }
}

/// One sequence's place in its grammar.
pub struct Constraint {
    matcher: Matcher,
    /// The next step's allowed tokens, computed while the model ran.
    prepared: Option<Result<SimpleVob, String>>,
}

impl Constraint {
    /// Computes the allowed tokens for the next sample ahead of time: the engine calls this
    /// on another thread while the forward runs.
    pub fn prepare(&mut self) {
        self.prepared = Some(
            self.matcher
                .compute_mask_or_eos()
                .map_err(|e| e.to_string()),
        );
    }

    /// Sets the logits of every token the grammar forbids next to minus infinity. Once the
    /// grammar is complete only end-of-sequence remains.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let allowed = match self.prepared.take() {
            Some(prepared) => prepared?,
            None => self
                .matcher
                .compute_mask_or_eos()
                .map_err(|e| e.to_string())?,
        };
        for (token, logit) in logits.iter_mut().enumerate() {
            if token >= allowed.len() || !allowed.is_allowed(token as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past the token sampled under the mask.
    pub fn advance(&mut self, token: u32) -> Result<(), String> {
        self.prepared = None;
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// Nothing may follow: the output is complete (llguidance stops the matcher when the
    /// last token leaves no way on).
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}
