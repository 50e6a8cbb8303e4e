//! Tool-call formats: how a model is offered tools and writes its calls. Each format is one
//! file with its three parts: how it goes into the prompt, its grammar (the rules that hold the
//! model to the format while it writes), and how its output opens a call (for the reader that
//! turns output back into calls). A new format is a new file and a variant here.
//! - `mistral.rs`: Mistral's control tokens (`[AVAILABLE_TOOLS]`, `[TOOL_CALLS]`, `[TOOL_RESULTS]`).
//! - `tagged.rs`: `<tool_call>` blocks (Hermes, Qwen 2.5, SmolLM2, and the instructions this
//!   server gives a template that knows no tools).

pub mod mistral;
pub mod tagged;

/// How a model writes its calls, so that the server can hold it to the format and read the
/// calls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    /// A control token, then a JSON array of calls (Mistral's `[TOOL_CALLS]`).
    Token(u32),
    /// `<tool_call>` … `</tool_call>` around a call object or an array of them.
    Tagged,
}

/// What the start of a reply turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// Calls: this text (the reply so far, less what only opened the calls) is their JSON.
    Calls(String),
    /// Text, not calls.
    Text,
    /// Not known yet: it could still open a call.
    Undecided,
}

impl ToolSyntax {
    /// Lark rules (llguidance's dialect) for `calls`, a reply of calls in this format, and
    /// `TEXT`, a reply that is not one. `list` is the rule for the calls inside the format's
    /// array (one `call`, or several); `parallel`, whether several blocks may follow.
    pub fn grammar(self, list: &str, parallel: bool) -> Vec<String> {
        match self {
            ToolSyntax::Token(id) => mistral::grammar(id, list),
            ToolSyntax::Tagged => tagged::grammar(list, parallel),
        }
    }

    /// Whether a reply that begins with `held` (its last token `token`) opens calls.
    pub fn opening(self, held: &str, token: u32) -> Opening {
        match self {
            ToolSyntax::Token(id) => mistral::opening(id, token),
            ToolSyntax::Tagged => tagged::opening(held),
        }
    }
}
