//! One streamed request to an OpenAI-compatible server, timed chunk by chunk: when the first
//! text arrived (TTFT), the gaps between later text chunks (ITL), and the whole request.

use crate::workload::{Input, Prompt};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `/completions` with the raw prompt.
    Completions,
    /// `/chat/completions`, the prompt as one user message.
    Chat,
}

/// How every request is sent.
#[derive(Debug, Clone)]
pub struct Target {
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub endpoint: Endpoint,
    pub ignore_eos: bool,
    pub temperature: f32,
    pub timeout: Duration,
    /// OpenAI's `response_format`, sent with every request (structured output's cost).
    pub response_format: Option<Value>,
}

/// What one request measured. Times are seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    pub ok: bool,
    pub error: Option<String>,
    /// From the server's usage report, else what the benchmark knew of the prompt.
    pub prompt_tokens: u64,
    /// From the server's usage report, else the number of text chunks.
    pub output_tokens: u64,
    pub ttft: f64,
    pub e2e: f64,
    /// Gaps between consecutive text chunks after the first.
    #[serde(skip)]
    pub itl: Vec<f64>,
    pub finish_reason: Option<String>,
}

pub async fn send(client: &reqwest::Client, target: &Target, prompt: &Prompt) -> Record {
    let start = Instant::now();
    let mut record = Record::default();
    match stream(client, target, prompt, start, &mut record).await {
        Ok(()) if record.ttft > 0.0 || record.output_tokens > 0 => record.ok = true,
        Ok(()) => record.error = Some("the stream ended without any text".into()),
        Err(e) => record.error = Some(e),
    }
    record.e2e = start.elapsed().as_secs_f64();
    if record.prompt_tokens == 0 {
        record.prompt_tokens = prompt.prompt_tokens.unwrap_or(0) as u64;
    }
    record
}

fn body(target: &Target, prompt: &Prompt) -> Value {
    let mut body = json!({
        "model": target.model,
        "max_tokens": prompt.max_tokens,
        "temperature": target.temperature,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    match (&prompt.input, target.endpoint) {
        (Input::Text(text), Endpoint::Completions) => body["prompt"] = json!(text),
        (Input::Text(text), Endpoint::Chat) => {
            body["messages"] = json!([{"role": "user", "content": text}])
        }
        (Input::Messages(messages), _) => body["messages"] = messages.clone(),
    }
    if target.ignore_eos {
        // vLLM's and llama.cpp's extension: generate exactly max_tokens.
        body["ignore_eos"] = json!(true);
    }
    if let Some(format) = &target.response_format {
        body["response_format"] = format.clone();
    }
    body
}

fn url(target: &Target, prompt: &Prompt) -> String {
    let path = match (&prompt.input, target.endpoint) {
        (Input::Text(_), Endpoint::Completions) => "completions",
        _ => "chat/completions",
    };
    format!("{}/{path}", target.base_url.trim_end_matches('/'))
}

async fn stream(
    client: &reqwest::Client,
    target: &Target,
    prompt: &Prompt,
    start: Instant,
    record: &mut Record,
) -> Result<(), String> {
    let mut request = client
        .post(url(target, prompt))
        .json(&body(target, prompt))
        .timeout(target.timeout);
    if let Some(key) = &target.api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|e| with_causes(&e))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(format!("HTTP {status}: {}", text.trim()));
    }
    let mut bytes = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut last_text: Option<Instant> = None;
    let mut chunks = 0u64;
    let mut usage_tokens = None;
    while let Some(piece) = bytes.next().await {
        let piece = piece.map_err(|e| with_causes(&e))?;
        let now = Instant::now();
        pending.extend_from_slice(&piece);
        // Server-sent events: one `data: {json}` per line.
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let event: Value =
                serde_json::from_str(data).map_err(|e| format!("bad event {data:?}: {e}"))?;
            if let Some(message) = event["error"]["message"].as_str() {
                return Err(format!("error event: {message}"));
            }
            if let Some(n) = event["usage"]["completion_tokens"].as_u64() {
                usage_tokens = Some(n);
                record.prompt_tokens = event["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
            }
            let choice = &event["choices"][0];
            if let Some(reason) = choice["finish_reason"].as_str() {
                record.finish_reason = Some(reason.to_string());
                // A token that decodes to no text still ends the wait for the first token.
                if last_text.is_none() && record.ttft == 0.0 {
                    record.ttft = (now - start).as_secs_f64();
                }
            }
            let text = choice["text"]
                .as_str()
                .or_else(|| choice["delta"]["content"].as_str())
                .unwrap_or("");
            if text.is_empty() {
                continue;
            }
            chunks += 1;
            match last_text {
                None => record.ttft = (now - start).as_secs_f64(),
                Some(previous) => record.itl.push((now - previous).as_secs_f64()),
            }
            last_text = Some(now);
        }
    }
    record.output_tokens = usage_tokens.unwrap_or(chunks);
    Ok(())
}

/// reqwest's message and every cause under it ("error sending request" alone says little).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The first model the server lists, for when none was named.
pub async fn first_model(
    client: &reqwest::Client,
    base_url: &str,
    api_key: Option<&str>,
) -> Result<String, String> {
    let mut request = client.get(format!("{}/models", base_url.trim_end_matches('/')));
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{base_url}: {e}"))?;
    let models: Value = response.json().await.map_err(|e| e.to_string())?;
    models["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{base_url}/models lists no model"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(endpoint: Endpoint) -> Target {
        Target {
            base_url: "http://h/v1/".into(),
            model: "m".into(),
            api_key: None,
            endpoint,
            ignore_eos: true,
            temperature: 0.0,
            timeout: Duration::from_secs(1),
            response_format: None,
        }
    }

    #[test]
    fn bodies_match_the_openai_api() {
        let prompt = Prompt {
            input: Input::Text("hello".into()),
            max_tokens: 5,
            prompt_tokens: None,
        };
        let t = target(Endpoint::Completions);
        assert_eq!(url(&t, &prompt), "http://h/v1/completions");
        let b = body(&t, &prompt);
        assert_eq!(b["prompt"], "hello");
        assert_eq!(b["ignore_eos"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        let t = Target {
            ignore_eos: false,
            ..target(Endpoint::Chat)
        };
        assert_eq!(url(&t, &prompt), "http://h/v1/chat/completions");
        let b = body(&t, &prompt);
        assert_eq!(b["messages"][0]["content"], "hello");
        assert!(b.get("ignore_eos").is_none());
    }
}
