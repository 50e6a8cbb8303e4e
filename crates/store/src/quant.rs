//! Which GGUF file of a Hugging Face repo a tag means (`hf.co/org/repo:Q4_0`), by Ollama's rule:
//! the file whose name carries that quant; `latest` means Q4_K_M when the repo has it, else one
//! reasonable choice.

use crate::name::DEFAULT_TAG;

/// Every quant type llama.cpp writes, longest first so `Q4_0_4_4` is not read as `Q4_0`.
const QUANTS: &[&str] = &[
    "IQ2_XXS", "IQ3_XXS", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "IQ2_XS", "IQ3_XS", "IQ4_XS",
    "IQ4_NL", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "IQ1_S",
    "IQ1_M", "IQ2_S", "IQ2_M", "IQ3_S", "IQ3_M", "TQ1_0", "TQ2_0", "Q2_K", "Q6_K", "Q4_0", "Q4_1",
    "Q5_0", "Q5_1", "Q8_0", "BF16", "F16", "F32",
];

/// What `latest` takes when there is no Q4_K_M: the usual 4-bit choices, then more bits.
const PREFERRED: &[&str] = &[
    "Q4_K_M", "Q4_0", "Q4_K_S", "Q5_K_M", "Q5_0", "Q6_K", "Q8_0", "F16", "BF16",
];

/// One GGUF file of a repo and the quant its name carries (upper-case), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufFile {
    pub path: String,
    pub quant: Option<String>,
}

impl GgufFile {
    /// A repo file, if it is a model GGUF (vision projectors, `mmproj-*`, are not).
    pub fn from_repo_path(path: &str) -> Option<Self> {
        let base = path.rsplit('/').next().unwrap_or(path);
        let stem = base.strip_suffix(".gguf")?;
        if base.to_ascii_lowercase().starts_with("mmproj") {
            return None;
        }
        let upper = stem.to_ascii_uppercase();
        let quant = QUANTS
            .iter()
            .find(|q| has_token(&upper, q))
            .map(|q| q.to_string());
        Some(Self {
            path: path.to_string(),
            quant,
        })
    }

    /// How the file is named in a list of choices: its quant, else its file name.
    pub fn label(&self) -> &str {
        self.quant.as_deref().unwrap_or(&self.path)
    }

    fn matches(&self, tag: &str) -> bool {
        let tag = tag.to_ascii_uppercase();
        match &self.quant {
            Some(q) => *q == tag,
            // A name we cannot read a quant from: the tag must appear in it as a word.
            None => has_token(&self.path.to_ascii_uppercase(), &tag),
        }
    }
}

/// Why no single file answers a tag.
#[derive(Debug, PartialEq, Eq)]
pub enum NoChoice {
    /// No file has that quant: the quants there are.
    Missing(Vec<String>),
    /// Several files do: a split GGUF (`-00001-of-00002`), which is not served.
    Split(Vec<String>),
}

/// The file `tag` means among `files`.
pub fn choose<'a>(files: &'a [GgufFile], tag: &str) -> Result<&'a GgufFile, NoChoice> {
    let found: Vec<&GgufFile> = if tag == DEFAULT_TAG {
        let by_preference = PREFERRED.iter().find_map(|p| {
            let hits: Vec<_> = files.iter().filter(|f| f.matches(p)).collect();
            (!hits.is_empty()).then_some(hits)
        });
        // No usual quant: the first file by name, so the choice is stable.
        by_preference.unwrap_or_else(|| files.iter().min_by_key(|f| &f.path).into_iter().collect())
    } else {
        files.iter().filter(|f| f.matches(tag)).collect()
    };
    match found.as_slice() {
        [one] => Ok(one),
        [] => {
            let mut labels: Vec<String> = files.iter().map(|f| f.label().to_string()).collect();
            labels.sort();
            labels.dedup();
            Err(NoChoice::Missing(labels))
        }
        several => Err(NoChoice::Split(
            several.iter().map(|f| f.path.clone()).collect(),
        )),
    }
}

/// `token` occurs in `text` with a separator (or an end) on both sides: `.`, `-` or `/` before
/// (or `_`, as in `model_Q4_0`), and `.` or `-` after.
fn has_token(text: &str, token: &str) -> bool {
    text.match_indices(token).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + token.len()..].chars().next();
        matches!(before, None | Some('.' | '-' | '_' | '/'))
            && matches!(after, None | Some('.' | '-'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<GgufFile> {
        names
            .iter()
            .filter_map(|n| GgufFile::from_repo_path(n))
            .collect()
    }

    #[test]
    fn reads_the_quant_from_common_file_names() {
        let got = files(&[
            "mistral-7b-instruct-v0.3.Q4_K_M.gguf",
            "tiny-mistral-q4_0.gguf",
            "model-Q4_0_4_4.gguf",
            "Q8_0/model-q8_0.gguf",
            "mmproj-model-f16.gguf",
            "README.md",
            "weird.gguf",
        ]);
        let quants: Vec<_> = got.iter().map(|f| f.quant.as_deref()).collect();
        assert_eq!(
            quants,
            [
                Some("Q4_K_M"),
                Some("Q4_0"),
                Some("Q4_0_4_4"),
                Some("Q8_0"),
                None
            ]
        );
    }

    #[test]
    fn a_tag_picks_its_file_case_blind_and_never_a_longer_quant() {
        let repo = files(&["m-Q4_0_4_4.gguf", "m-q4_0.gguf", "m-Q8_0.gguf"]);
        assert_eq!(choose(&repo, "Q4_0").unwrap().path, "m-q4_0.gguf");
        assert_eq!(choose(&repo, "q8_0").unwrap().path, "m-Q8_0.gguf");
        assert_eq!(
            choose(&repo, "Q5_K_M").unwrap_err(),
            NoChoice::Missing(vec!["Q4_0".into(), "Q4_0_4_4".into(), "Q8_0".into()])
        );
    }

    #[test]
    fn latest_is_q4_k_m_else_a_usual_quant_else_the_first_file() {
        let repo = files(&["m-Q8_0.gguf", "m-Q4_K_M.gguf", "m-Q4_0.gguf"]);
        assert_eq!(choose(&repo, "latest").unwrap().path, "m-Q4_K_M.gguf");
        let repo = files(&["m-Q8_0.gguf", "m-Q4_0.gguf"]);
        assert_eq!(choose(&repo, "latest").unwrap().path, "m-Q4_0.gguf");
        let repo = files(&["b.gguf", "a.gguf"]);
        assert_eq!(choose(&repo, "latest").unwrap().path, "a.gguf");
    }

    #[test]
    fn a_split_gguf_is_refused_with_the_choices() {
        let repo = files(&[
            "m-Q4_K_M-00001-of-00002.gguf",
            "m-Q4_K_M-00002-of-00002.gguf",
        ]);
        assert!(matches!(choose(&repo, "Q4_K_M"), Err(NoChoice::Split(p)) if p.len() == 2));
    }
}
