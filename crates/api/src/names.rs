//! The one place a model name from a request is matched to a model: the names it answers
//! to, with Ollama's short and long forms of a store name being one name.

use ferrollama_store::ModelName;

#[derive(Debug, Clone)]
pub struct ModelNames {
    /// The name the model is listed under.
    pub primary: String,
    /// Every name it answers to, the primary first.
    pub all: Vec<String>,
}

impl ModelNames {
    /// `name` (`--name`, or its store name), else the file name without extension; the
    /// model's path; and `aliases`, the catalog's names for what it is (`mistral:instruct`).
    pub fn new(name: Option<&str>, reference: &str, aliases: &[String]) -> Self {
        let path = std::path::Path::new(reference);
        let derived = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| reference.to_string());
        let primary = name.map(str::to_string).unwrap_or(derived);
        let mut all = vec![primary.clone()];
        for alias in std::iter::once(reference).chain(aliases.iter().map(String::as_str)) {
            if !all.iter().any(|n| n == alias) {
                all.push(alias.to_string());
            }
        }
        Self { primary, all }
    }

    /// A model from the store answers to its name in any of Ollama's forms.
    pub fn of_store(name: &str) -> Self {
        Self {
            primary: name.to_string(),
            all: vec![name.to_string()],
        }
    }

    /// `mistral` is `mistral:latest` and `registry.ollama.ai/library/mistral:latest`.
    pub fn matches(&self, requested: &str) -> bool {
        if self.all.iter().any(|n| n == requested) {
            return true;
        }
        let Ok(wanted) = ModelName::parse(requested) else {
            return false;
        };
        self.all
            .iter()
            .any(|n| ModelName::parse(n).is_ok_and(|n| n == wanted))
    }
}
