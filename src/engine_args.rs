//! Engine settings on the command line, shared by every subcommand that runs the engine.

use ferrollama_engine::EngineConfig;

#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Memory for the KV cache, in bytes (suffixes K, M, G, KiB, MiB, GiB accepted).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub kv_cache_memory: usize,
    /// Most tokens in one forward pass: prompt chunks and decodes together.
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Most sequences generating at once.
    #[arg(long, env = "OLLAMA_NUM_PARALLEL", default_value_t = 32)]
    pub max_seqs: usize,
    /// Turn off the prefix cache.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Prefill each prompt in one step instead of in chunks.
    #[arg(long)]
    pub no_chunked_prefill: bool,
    /// Threads for the model's math [default: RAYON_NUM_THREADS, else one per core].
    #[arg(long, env = "FERROLLAMA_THREADS")]
    pub threads: Option<usize>,
}

impl EngineArgs {
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            kv_cache_memory: self.kv_cache_memory,
            max_batch_tokens: self.max_batch_tokens.max(1),
            max_seqs: self.max_seqs.max(1),
            prefix_caching: !self.no_prefix_caching,
            chunked_prefill: !self.no_chunked_prefill,
            threads: self.threads.unwrap_or(0),
            ..EngineConfig::default()
        }
    }
}

fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}`")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512M"), Ok(512_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
    }
}
