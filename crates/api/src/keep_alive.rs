//! How long a model stays loaded after its last request, as Ollama reads it: `keep_alive` in a
//! request or `OLLAMA_KEEP_ALIVE`, a number of seconds or a Go duration (`5m`, `1h30m`,
//! `300ms`); negative keeps the model loaded, zero unloads it after the request.

use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    Forever,
    For(Duration),
}

impl KeepAlive {
    /// Ollama's default.
    pub const DEFAULT: Self = Self::For(Duration::from_secs(300));

    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad =
            || format!("bad duration `{text}`: give seconds or a duration like 5m, 1h30m, -1");
        if let Ok(seconds) = text.parse::<f64>() {
            return Self::seconds(seconds).ok_or_else(bad);
        }
        go_duration(text).and_then(Self::seconds).ok_or_else(bad)
    }

    /// A request's `keep_alive`: a JSON number of seconds or a string.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        match value {
            Value::Number(n) => n
                .as_f64()
                .and_then(Self::seconds)
                .ok_or_else(|| format!("bad duration {n}")),
            Value::String(s) => Self::parse(s),
            other => Err(format!(
                "bad duration {other}: give seconds or a duration string"
            )),
        }
    }

    fn seconds(seconds: f64) -> Option<Self> {
        if seconds.is_nan() {
            None
        } else if seconds < 0.0 {
            Some(Self::Forever)
        } else {
            Duration::try_from_secs_f64(seconds).ok().map(Self::For)
        }
    }

    pub fn is_zero(self) -> bool {
        self == Self::For(Duration::ZERO)
    }
}

/// A Go `time.ParseDuration` string in seconds: a sign, then number-unit pairs.
fn go_duration(text: &str) -> Option<f64> {
    let (sign, mut rest) = match text.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Some(sign * total)
}

#[cfg(test)]
mod tests {
    use super::KeepAlive::{self, For, Forever};
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn ollama_forms() {
        let secs = |s| For(Duration::from_secs(s));
        assert_eq!(KeepAlive::parse("5m").unwrap(), secs(300));
        assert_eq!(KeepAlive::parse("1h30m").unwrap(), secs(5400));
        assert_eq!(
            KeepAlive::parse("300ms").unwrap(),
            For(Duration::from_millis(300))
        );
        assert_eq!(KeepAlive::parse("1.5h").unwrap(), secs(5400));
        assert_eq!(KeepAlive::parse("3600").unwrap(), secs(3600));
        assert_eq!(KeepAlive::parse("0").unwrap(), secs(0));
        assert!(KeepAlive::parse("0s").unwrap().is_zero());
        assert_eq!(KeepAlive::parse("-1").unwrap(), Forever);
        assert_eq!(KeepAlive::parse("-1m").unwrap(), Forever);
        assert_eq!(KeepAlive::from_json(&json!(10)).unwrap(), secs(10));
        assert_eq!(KeepAlive::from_json(&json!(-1)).unwrap(), Forever);
        assert_eq!(KeepAlive::from_json(&json!("10m")).unwrap(), secs(600));
    }

    #[test]
    fn nonsense_is_refused_with_the_value() {
        for bad in ["", "5 minutes", "m", "5x", "1h-2m", "--1"] {
            let error = KeepAlive::parse(bad).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        assert!(KeepAlive::from_json(&json!(true)).is_err());
        assert!(KeepAlive::from_json(&json!([1])).is_err());
    }
}
