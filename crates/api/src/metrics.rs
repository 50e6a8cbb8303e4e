//! `GET /metrics` in Prometheus's text format: requests by route and status, tokens, latency
//! histograms with vLLM's bucket edges, and the engine's state read at scrape time.

use ferrollama_engine::{EngineStats, Timings, Usage};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::sync::Mutex;
use std::time::Duration;

const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: [f64; 19] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const LATENCY_BUCKETS: [f64; 21] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    prompt_tokens: IntCounter,
    cached_tokens: IntCounter,
    generated_tokens: IntCounter,
    drafted_tokens: IntCounter,
    accepted_tokens: IntCounter,
    acceptance_rate: Gauge,
    queue_time: Histogram,
    ttft: Histogram,
    inter_token: Histogram,
    e2e: Histogram,
    running: IntGauge,
    waiting: IntGauge,
    blocks_used: IntGauge,
    blocks_free: IntGauge,
    hit_rate: Gauge,
    preemptions: IntCounter,
    model_load: Gauge,
    embedded_inputs: IntCounter,
    embedded_tokens: IntCounter,
    /// The loaded engine's preemption count at the last scrape (it restarts with each model).
    last_preemptions: Mutex<u64>,
}

/// Registers a freshly made metric and hands it back.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let name = |name: &str| format!("ferrollama_{name}");
        let counter = |n: &str, help: &str| register(&registry, IntCounter::new(name(n), help));
        let gauge = |n: &str, help: &str| register(&registry, IntGauge::new(name(n), help));
        let float_gauge = |n: &str, help: &str| register(&registry, Gauge::new(name(n), help));
        let histogram = |n: &str, help: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name(n), help).buckets(buckets.to_vec());
            register(&registry, Histogram::with_opts(opts))
        };
        let requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "ferrollama_http_requests_total",
                    "HTTP requests by route and status.",
                ),
                &["route", "status"],
            ),
        );
        Self {
            requests,
            prompt_tokens: counter("prompt_tokens_total", "Prompt tokens of finished requests."),
            cached_tokens: counter(
                "cached_prompt_tokens_total",
                "Prompt tokens found in the prefix cache.",
            ),
            generated_tokens: counter("generation_tokens_total", "Tokens generated."),
            drafted_tokens: counter(
                "speculative_draft_tokens_total",
                "Draft tokens proposed by speculative decoding.",
            ),
            accepted_tokens: counter(
                "speculative_accepted_tokens_total",
                "Draft tokens the model kept.",
            ),
            acceptance_rate: float_gauge(
                "speculative_acceptance_rate",
                "Share of draft tokens kept, over the server's life.",
            ),
            queue_time: histogram(
                "request_queue_time_seconds",
                "Time waiting for the first step.",
                &LATENCY_BUCKETS,
            ),
            ttft: histogram(
                "time_to_first_token_seconds",
                "Arrival to first token.",
                &TTFT_BUCKETS,
            ),
            inter_token: histogram(
                "inter_token_latency_seconds",
                "Mean time between output tokens, per request.",
                &ITL_BUCKETS,
            ),
            e2e: histogram(
                "e2e_request_latency_seconds",
                "Arrival to the last token.",
                &LATENCY_BUCKETS,
            ),
            running: gauge("num_requests_running", "Sequences in the running batch."),
            waiting: gauge("num_requests_waiting", "Sequences waiting to run."),
            blocks_used: gauge("kv_blocks_used", "KV cache blocks in use."),
            blocks_free: gauge("kv_blocks_free", "KV cache blocks free."),
            hit_rate: float_gauge(
                "prefix_cache_hit_rate",
                "Share of prompt tokens served from the prefix cache, since start.",
            ),
            preemptions: counter(
                "num_preemptions_total",
                "Sequences preempted to free KV blocks.",
            ),
            model_load: float_gauge("model_load_seconds", "How long the last model load took."),
            embedded_inputs: counter("embedding_inputs_total", "Inputs embedded."),
            embedded_tokens: counter("embedding_tokens_total", "Tokens of the inputs embedded."),
            last_preemptions: Mutex::new(0),
            registry,
        }
    }

    /// One HTTP request answered.
    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
    }

    /// One generation finished (every choice counts).
    pub fn finished(&self, usage: &Usage, timings: &Timings) {
        self.prompt_tokens.inc_by(usage.prompt_tokens as u64);
        self.cached_tokens.inc_by(usage.cached_tokens as u64);
        self.generated_tokens.inc_by(usage.generated_tokens as u64);
        self.drafted_tokens.inc_by(usage.drafted_tokens as u64);
        self.accepted_tokens.inc_by(usage.accepted_tokens as u64);
        self.queue_time.observe(timings.queue.as_secs_f64());
        if usage.generated_tokens > 0 {
            self.ttft
                .observe((timings.queue + timings.prefill).as_secs_f64());
        }
        if usage.generated_tokens > 1 {
            let per_token = timings.decode.as_secs_f64() / (usage.generated_tokens - 1) as f64;
            self.inter_token.observe(per_token);
        }
        self.e2e
            .observe((timings.queue + timings.prefill + timings.decode).as_secs_f64());
    }

    /// One embedding request answered.
    pub fn embedded(&self, inputs: usize, tokens: usize) {
        self.embedded_inputs.inc_by(inputs as u64);
        self.embedded_tokens.inc_by(tokens as u64);
    }

    pub fn model_loaded(&self, took: Duration) {
        self.model_load.set(took.as_secs_f64());
    }

    /// The text exposition, with the engine's state as of now (zeros with no model loaded).
    pub fn render(&self, engine: Option<EngineStats>) -> String {
        let stats = engine.unwrap_or_default();
        self.running.set(stats.running as i64);
        self.waiting.set(stats.waiting as i64);
        self.blocks_used
            .set(stats.total_blocks.saturating_sub(stats.free_blocks) as i64);
        self.blocks_free.set(stats.free_blocks as i64);
        {
            let mut last = self.last_preemptions.lock().expect("metrics lock");
            let new = stats
                .preemptions
                .checked_sub(*last)
                .unwrap_or(stats.preemptions);
            self.preemptions.inc_by(new);
            *last = stats.preemptions;
        }
        let drafted = self.drafted_tokens.get();
        if drafted > 0 {
            self.acceptance_rate
                .set(self.accepted_tokens.get() as f64 / drafted as f64);
        }
        let prompt = self.prompt_tokens.get();
        if prompt > 0 {
            self.hit_rate
                .set(self.cached_tokens.get() as f64 / prompt as f64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
