//! What the benchmark sends: prompts of fixed or uniformly spread lengths made of random words
//! (each request's prompt differs from its first word, so no server can answer from a prefix
//! cache), or prompts read from a JSONL file.

use anyhow::{bail, Context, Result};
use ferrollama_model::rng::SplitMix64;
use ferrollama_model::Tokenizer;
use serde_json::Value;
use std::path::Path;

/// One request's input: a raw prompt (completions) or chat messages, and how many tokens to
/// ask for.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub input: Input,
    pub max_tokens: u32,
    /// The prompt's length in tokens where the benchmark knows it (it had the tokenizer).
    pub prompt_tokens: Option<u32>,
}

#[derive(Debug, Clone)]
pub enum Input {
    Text(String),
    Messages(Value),
}

/// Lengths in tokens: `len` exactly, or uniform in `len × [1 - ratio, 1 + ratio]`.
#[derive(Debug, Clone, Copy)]
pub struct Lengths {
    pub input: u32,
    pub output: u32,
    pub range_ratio: f64,
}

/// Short common words: one token each in the vocabularies we serve, so a prompt of `n` words
/// is close to `n` tokens even without a tokenizer.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "that",
    "for",
    "was",
    "on",
    "are",
    "as",
    "with",
    "he",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "new",
    "work",
    "place",
    "year",
    "live",
    "back",
    "give",
    "most",
    "very",
    "after",
    "thing",
    "our",
    "just",
    "name",
    "good",
    "man",
    "think",
    "say",
    "great",
    "where",
    "help",
    "through",
    "much",
    "before",
    "line",
    "right",
    "too",
    "mean",
    "old",
    "any",
    "same",
    "tell",
    "boy",
    "follow",
    "came",
    "want",
    "show",
    "also",
    "around",
    "form",
    "three",
    "small",
    "set",
    "put",
    "end",
    "does",
    "another",
    "well",
    "large",
    "must",
    "big",
    "even",
    "such",
    "because",
    "turn",
    "here",
    "why",
    "ask",
    "went",
    "men",
    "read",
    "need",
    "land",
    "different",
    "home",
    "us",
    "move",
    "try",
    "kind",
    "hand",
    "picture",
    "again",
    "change",
    "off",
    "play",
    "spell",
    "air",
    "away",
    "animal",
    "house",
    "point",
    "page",
    "letter",
    "mother",
    "answer",
    "found",
    "study",
    "still",
    "learn",
    "should",
    "world",
    "high",
    "every",
    "near",
    "add",
    "food",
    "between",
    "own",
    "below",
    "country",
    "plant",
    "last",
    "school",
    "father",
    "keep",
    "tree",
    "never",
    "start",
    "city",
    "earth",
    "eye",
    "light",
    "thought",
    "head",
    "under",
    "story",
    "saw",
    "left",
    "few",
    "while",
    "along",
    "might",
    "close",
    "something",
    "seem",
    "next",
    "hard",
    "open",
    "example",
    "begin",
    "life",
    "always",
    "those",
    "both",
    "paper",
    "together",
    "got",
    "group",
    "often",
    "run",
];

/// `count` prompts of random words with lengths from `lengths`.
pub fn random_prompts(
    count: usize,
    lengths: Lengths,
    tokenizer: Option<&Tokenizer>,
    rng: &mut SplitMix64,
) -> Result<Vec<Prompt>> {
    (0..count)
        .map(|_| {
            let input_len = spread(lengths.input, lengths.range_ratio, rng).max(1);
            let max_tokens = spread(lengths.output, lengths.range_ratio, rng).max(1);
            let (text, prompt_tokens) = match tokenizer {
                Some(t) => exact_length_text(t, input_len, rng)?,
                None => (random_words(input_len as usize, rng), None),
            };
            Ok(Prompt {
                input: Input::Text(text),
                max_tokens,
                prompt_tokens,
            })
        })
        .collect()
}

fn spread(len: u32, ratio: f64, rng: &mut SplitMix64) -> u32 {
    if ratio <= 0.0 {
        return len;
    }
    let (lo, hi) = (len as f64 * (1.0 - ratio), len as f64 * (1.0 + ratio));
    (lo + (hi - lo) * rng.unit() as f64).round() as u32
}

pub fn random_words(n: usize, rng: &mut SplitMix64) -> String {
    let words: Vec<&str> = (0..n)
        .map(|_| WORDS[(rng.next_u64() % WORDS.len() as u64) as usize])
        .collect();
    words.join(" ")
}

/// Random words cut to exactly `len` prompt tokens (the beginning-of-sequence token counted,
/// as servers count it in `usage.prompt_tokens`).
fn exact_length_text(
    tokenizer: &Tokenizer,
    len: u32,
    rng: &mut SplitMix64,
) -> Result<(String, Option<u32>)> {
    let body = len as usize - usize::from(tokenizer.add_bos()).min(len as usize - 1);
    let mut ids = tokenizer.encode(&random_words(body + 8, rng))?;
    ids.truncate(body);
    let text = tokenizer.decode(&ids)?;
    // Decoding and encoding again can merge pieces differently: report what the server sees.
    let seen = tokenizer.encode_prompt(&text)?.len() as u32;
    Ok((text, Some(seen)))
}

/// Prompts from a JSONL file: each line has `prompt` (a string) or `messages` (a chat), and
/// optionally `max_tokens` (else `default_output`).
pub fn read_jsonl(path: &Path, default_output: u32) -> Result<Vec<Prompt>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{} line {}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).with_context(where_)?;
        let input = match (&v["prompt"], &v["messages"]) {
            (Value::String(p), _) => Input::Text(p.clone()),
            (_, Value::Array(_)) => Input::Messages(v["messages"].clone()),
            _ => bail!(
                "{}: needs `prompt` (a string) or `messages` (a list)",
                where_()
            ),
        };
        let max_tokens = v["max_tokens"]
            .as_u64()
            .map_or(default_output, |n| n as u32);
        prompts.push(Prompt {
            input,
            max_tokens,
            prompt_tokens: None,
        });
    }
    if prompts.is_empty() {
        bail!("{} has no prompts", path.display());
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_spread_within_the_ratio() {
        let mut rng = SplitMix64::new(1);
        let lengths = Lengths {
            input: 100,
            output: 10,
            range_ratio: 0.5,
        };
        let prompts = random_prompts(200, lengths, None, &mut rng).unwrap();
        let outs: Vec<u32> = prompts.iter().map(|p| p.max_tokens).collect();
        assert!(outs.iter().all(|&n| (5..=15).contains(&n)));
        assert!(outs.iter().min() < outs.iter().max(), "lengths must vary");
        let words: Vec<usize> = prompts
            .iter()
            .map(|p| match &p.input {
                Input::Text(t) => t.split(' ').count(),
                Input::Messages(_) => unreachable!(),
            })
            .collect();
        assert!(words.iter().all(|&n| (50..=150).contains(&n)));
    }

    #[test]
    fn prompts_differ_from_the_first_word() {
        let mut rng = SplitMix64::new(7);
        let lengths = Lengths {
            input: 30,
            output: 4,
            range_ratio: 0.0,
        };
        let prompts = random_prompts(50, lengths, None, &mut rng).unwrap();
        let firsts: std::collections::HashSet<String> = prompts
            .iter()
            .map(|p| match &p.input {
                Input::Text(t) => t.split(' ').take(2).collect::<Vec<_>>().join(" "),
                Input::Messages(_) => unreachable!(),
            })
            .collect();
        assert!(firsts.len() > 40, "only {} distinct openings", firsts.len());
    }

    #[test]
    fn jsonl_reads_prompts_and_chats() {
        let dir = std::env::temp_dir().join(format!("ferrollama-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"hi\", \"max_tokens\": 3}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"yo\"}]}\n",
        )
        .unwrap();
        let prompts = read_jsonl(&path, 9).unwrap();
        assert_eq!(prompts.len(), 2);
        assert_eq!(prompts[0].max_tokens, 3);
        assert_eq!(prompts[1].max_tokens, 9);
        assert!(matches!(prompts[1].input, Input::Messages(_)));
        std::fs::write(&path, "{\"text\": 1}\n").unwrap();
        let err = read_jsonl(&path, 9).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
