//! Model names as Ollama reads them: `name[:tag]`, `namespace/name[:tag]` and
//! `host/namespace/name[:tag]`, with Ollama's defaults (`registry.ollama.ai`, `library`,
//! `latest`). `hf.co/org/repo[:quant]` is the same shape with Hugging Face as the host.
//!
//! Every part is checked here, once: a name becomes a path under the store, so nothing that
//! could climb out of it (`..`, separators, absolute parts) gets past `parse`.

use std::fmt;
use std::path::PathBuf;

pub const DEFAULT_HOST: &str = "registry.ollama.ai";
pub const DEFAULT_NAMESPACE: &str = "library";
pub const DEFAULT_TAG: &str = "latest";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelName {
    pub host: String,
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid model name \"{name}\": {why}")]
pub struct NameError {
    pub name: String,
    pub why: String,
}

impl ModelName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let fail = |why: String| NameError {
            name: name.to_string(),
            why,
        };
        // The tag follows the last ':' after the last '/': a host may carry a port.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
            None => (name, DEFAULT_TAG),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (host, namespace, model) = match parts.as_slice() {
            [model] => (DEFAULT_HOST, DEFAULT_NAMESPACE, *model),
            [namespace, model] => (DEFAULT_HOST, *namespace, *model),
            [host, namespace, model] => (*host, *namespace, *model),
            _ => return Err(fail("expected [host/][namespace/]name[:tag]".into())),
        };
        check_part("host", host, 350, true).map_err(fail)?;
        check_part("namespace", namespace, 80, false).map_err(fail)?;
        check_part("model", model, 80, false).map_err(fail)?;
        check_part("tag", tag, 80, false).map_err(fail)?;
        Ok(Self {
            host: host.to_string(),
            namespace: namespace.to_string(),
            model: model.to_string(),
            tag: tag.to_string(),
        })
    }

    /// `manifests/<host>/<namespace>/<model>/<tag>`, relative to the store's root.
    pub fn manifest_path(&self) -> PathBuf {
        [
            "manifests",
            &self.host,
            &self.namespace,
            &self.model,
            &self.tag,
        ]
        .iter()
        .collect()
    }
}

/// Ollama's short form: `mistral:latest` for the default host and namespace,
/// `namespace/name:tag` on the default host, the whole name elsewhere.
impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host != DEFAULT_HOST {
            write!(f, "{}/", self.host)?;
        }
        if self.host != DEFAULT_HOST || self.namespace != DEFAULT_NAMESPACE {
            write!(f, "{}/", self.namespace)?;
        }
        write!(f, "{}:{}", self.model, self.tag)
    }
}

/// Letters, digits, `_`, `-` and `.` (and `:` for a host's port), starting with a letter or
/// digit (a tag may start with `_`), never `..`.
fn check_part(what: &str, part: &str, max: usize, is_host: bool) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if part.len() > max {
        return Err(format!("the {what} is longer than {max} characters"));
    }
    if part.contains("..") {
        return Err(format!("the {what} contains \"..\""));
    }
    let first_ok = part
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || (what == "tag" && c == '_'));
    if !first_ok {
        return Err(format!("the {what} must start with a letter or digit"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c) || (is_host && c == ':');
    if let Some(bad) = part.chars().find(|&c| !allowed(c)) {
        return Err(format!("the {what} contains {bad:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(name: &str) -> (String, String, String, String) {
        let n = ModelName::parse(name).unwrap();
        (n.host, n.namespace, n.model, n.tag)
    }

    #[test]
    fn ollama_defaults_fill_missing_parts() {
        let full = |h: &str, n: &str, m: &str, t: &str| {
            (h.to_string(), n.to_string(), m.to_string(), t.to_string())
        };
        assert_eq!(
            parts("mistral"),
            full("registry.ollama.ai", "library", "mistral", "latest")
        );
        assert_eq!(
            parts("mistral:instruct"),
            full("registry.ollama.ai", "library", "mistral", "instruct")
        );
        assert_eq!(
            parts("me/tiny:v1"),
            full("registry.ollama.ai", "me", "tiny", "v1")
        );
        assert_eq!(
            parts("localhost:5000/me/tiny"),
            full("localhost:5000", "me", "tiny", "latest")
        );
        assert_eq!(
            parts("hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M"),
            full("hf.co", "bartowski", "SmolLM2-135M-Instruct-GGUF", "Q4_K_M")
        );
    }

    #[test]
    fn display_is_ollamas_short_form() {
        for (given, shown) in [
            ("mistral", "mistral:latest"),
            (
                "registry.ollama.ai/library/mistral:instruct",
                "mistral:instruct",
            ),
            ("me/tiny:v1", "me/tiny:v1"),
            ("hf.co/org/repo:Q4_0", "hf.co/org/repo:Q4_0"),
        ] {
            assert_eq!(ModelName::parse(given).unwrap().to_string(), shown);
        }
    }

    #[test]
    fn manifest_path_is_ollamas() {
        let p = ModelName::parse("mistral:instruct")
            .unwrap()
            .manifest_path();
        assert_eq!(
            p,
            PathBuf::from("manifests/registry.ollama.ai/library/mistral/instruct")
        );
    }

    #[test]
    fn names_that_could_leave_the_store_are_refused_with_the_name() {
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/abs/name",
            "x/y/z/w",
            "model:..",
            "mo del",
            "m\\x",
            "",
            ":tag",
            "name:",
            "-dash",
            "ns/.hidden",
        ] {
            let err = ModelName::parse(bad).expect_err(bad);
            assert_eq!(err.name, bad);
            assert!(err.to_string().contains(&format!("\"{bad}\"")), "{err}");
        }
    }
}
