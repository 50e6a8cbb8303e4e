//! llguidance vs outlines-core: vocabulary build, schema compile, and per-token mask cost while
//! walking a valid (and an invalid) JSON instance token by token.
//!
//! `grammar-compare [REPEATS] TOKENIZER.json...` runs every (crate, tokenizer, schema) in its own
//! child process (so a compile past the 120 s cap can be killed, and peak RSS is per case) and
//! prints a markdown table. `grammar-compare child CRATE TOKENIZER SCHEMA_IDX REPEATS` is one case.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const COMPILE_CAP: Duration = Duration::from_secs(120);

/// Counts live heap bytes and their high-water mark (resettable), for the memory columns.
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    pub struct Counting;
    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let p = System.alloc(l);
            if !p.is_null() {
                let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
                PEAK.fetch_max(now, Relaxed);
            }
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            System.dealloc(p, l);
            LIVE.fetch_sub(l.size(), Relaxed);
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            let q = System.realloc(p, l, n);
            if !q.is_null() {
                if n > l.size() {
                    let now = LIVE.fetch_add(n - l.size(), Relaxed) + (n - l.size());
                    PEAK.fetch_max(now, Relaxed);
                } else {
                    LIVE.fetch_sub(l.size() - n, Relaxed);
                }
            }
            q
        }
    }
    pub fn live_mb() -> f64 {
        LIVE.load(Relaxed) as f64 / 1048576.0
    }
    pub fn peak_mb() -> f64 {
        PEAK.load(Relaxed) as f64 / 1048576.0
    }
    pub fn reset_peak() {
        PEAK.store(LIVE.load(Relaxed), Relaxed);
    }
}
#[global_allocator]
static GLOBAL: heap::Counting = heap::Counting;

/// (name, schema, valid compact instance, invalid instances: (what it violates, text))
fn cases() -> Vec<(&'static str, Value, String, Vec<(&'static str, String)>)> {
    let digits: Vec<String> = (0..256).map(|i| ((i * 7 + 3) % 10).to_string()).collect();
    let digits_ok = format!("[{}]", digits.join(","));
    let digits_bad = vec![
        ("255 items", format!("[{}]", digits[..255].join(","))),
        ("item 10", format!("[10,{}]", digits[1..].join(","))),
    ];
    let digits_schema: Value = serde_json::from_str(
        &std::fs::read_to_string("/work/main/benches/schemas/digits-256.json")
            .unwrap_or_else(|_| include_str!("digits-256.json").to_string()),
    )
    .unwrap();
    vec![
        (
            "nested object",
            json!({"type":"object","properties":{"name":{"type":"string","maxLength":20},
                "address":{"type":"object","properties":{"city":{"type":"string","maxLength":20},
                "zip":{"type":"string","pattern":"^[0-9]{5}$"}},"required":["city","zip"],
                "additionalProperties":false}},"required":["name","address"],"additionalProperties":false}),
            r#"{"name":"Ada Lovelace","address":{"city":"London","zip":"12345"}}"#.into(),
            vec![("pattern", r#"{"name":"Ada Lovelace","address":{"city":"London","zip":"123456"}}"#.into()),
                 ("maxLength", r#"{"name":"Ada Lovelace Byron King","address":{"city":"London","zip":"12345"}}"#.into())],
        ),
        (
            "array of items",
            json!({"type":"object","properties":{"colors":{"type":"array","items":{"type":"string","maxLength":12},
                "minItems":1,"maxItems":4}},"required":["colors"],"additionalProperties":false}),
            r#"{"colors":["red","green","blue"]}"#.into(),
            vec![("maxItems", r#"{"colors":["red","green","blue","cyan","pink"]}"#.into()),
                 ("minItems", r#"{"colors":[]}"#.into()),
                 ("item maxLength", r#"{"colors":["ultramarine-x"]}"#.into())],
        ),
        (
            "enums",
            json!({"type":"object","properties":{"mood":{"enum":["happy","sad","neutral"]},
                "weather":{"type":"string","enum":["sunny","rainy"]}},"required":["mood","weather"],
                "additionalProperties":false}),
            r#"{"mood":"happy","weather":"sunny"}"#.into(),
            vec![("enum", r#"{"mood":"angry","weather":"sunny"}"#.into())],
        ),
        (
            "bounded numbers",
            json!({"type":"object","properties":{"age":{"type":"integer","minimum":0,"maximum":120},
                "score":{"type":"number","minimum":0,"maximum":1},"active":{"type":"boolean"}},
                "required":["age","score","active"],"additionalProperties":false}),
            r#"{"age":42,"score":0.75,"active":true}"#.into(),
            vec![("int maximum", r#"{"age":500,"score":0.75,"active":true}"#.into()),
                 ("int minimum", r#"{"age":-1,"score":0.75,"active":true}"#.into()),
                 ("number maximum", r#"{"age":42,"score":1.5,"active":true}"#.into())],
        ),
        (
            "required and optional",
            json!({"type":"object","properties":{"title":{"type":"string","maxLength":30},
                "year":{"type":"integer","minimum":1900,"maximum":2100},"note":{"type":"string","maxLength":10}},
                "required":["title","year"],"additionalProperties":false}),
            r#"{"title":"Dune","year":1965,"note":"classic"}"#.into(),
            vec![("int minimum", r#"{"title":"Dune","year":1800}"#.into()),
                 ("required", r#"{"title":"Dune"}"#.into()),
                 ("additionalProperties", r#"{"title":"Dune","year":1965,"x":1}"#.into())],
        ),
        (
            "array of objects with refs",
            json!({"type":"object","$defs":{"step":{"type":"object","properties":{
                "n":{"type":"integer","minimum":1,"maximum":9},"do":{"type":"string","maxLength":15}},
                "required":["n","do"],"additionalProperties":false}},
                "properties":{"steps":{"type":"array","items":{"$ref":"#/$defs/step"},"minItems":1,"maxItems":3}},
                "required":["steps"],"additionalProperties":false}),
            r#"{"steps":[{"n":1,"do":"boil water"},{"n":2,"do":"add pasta"}]}"#.into(),
            vec![("$ref int maximum", r#"{"steps":[{"n":10,"do":"boil water"}]}"#.into()),
                 ("maxItems", r#"{"steps":[{"n":1,"do":"a"},{"n":2,"do":"b"},{"n":3,"do":"c"},{"n":4,"do":"d"}]}"#.into()),
                 ("minItems", r#"{"steps":[]}"#.into())],
        ),
        ("digits-256", digits_schema, digits_ok, digits_bad),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        let idx: usize = args[4].parse().unwrap();
        let repeats: usize = args[5].parse().unwrap();
        child(&args[2], &args[3], idx, repeats);
        return;
    }
    if args.get(1).map(String::as_str) == Some("check-vocab") {
        // Do the hand-built outlines Vocabulary and llguidance's token bytes agree?
        let tok = load_tokenizer(&args[2]);
        let words = llguidance::token_bytes_from_tokenizer_json(&tok.json).unwrap();
        let v = oc::vocabulary(&tok);
        let (mut same, mut differ, mut ids) = (0, 0, 0);
        for (bytes, tids) in v.tokens() {
            for &id in tids {
                ids += 1;
                if words.get(id as usize) == Some(bytes) { same += 1 } else {
                    differ += 1;
                    if differ <= 5 { eprintln!("id {id}: outlines {:?} llg {:?}", String::from_utf8_lossy(bytes), words.get(id as usize).map(|w| String::from_utf8_lossy(w).to_string())); }
                }
            }
        }
        println!("outlines vocabulary: {} byte strings, {ids} ids; same bytes as llguidance: {same}, differ: {differ}; tokenizer ids {}", v.tokens().len(), tok.n_vocab);
        return;
    }
    let mut rest = &args[1..];
    let mut repeats = 20usize;
    if let Some(r) = rest.first().and_then(|s| s.parse().ok()) {
        repeats = r;
        rest = &rest[1..];
    }
    let toks: Vec<String> = if rest.is_empty() {
        vec!["/work/main/models/fixtures/tiny-mistral/tokenizer.json".into()]
    } else {
        rest.to_vec()
    };
    parent(&toks, repeats);
}

// ---------------------------------------------------------------- parent

fn parent(toks: &[String], repeats: usize) {
    let exe = std::env::current_exe().unwrap();
    let n = cases().len();
    println!("| crate | tokenizer | schema | vocab ms | compile ms | 1st mask µs | mask µs mean | mask µs p99 | steps | heap MB vocab / compiled / peak | valid walk | rejects invalid | status |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for tok in toks {
        let tname = std::path::Path::new(tok)
            .parent()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or(tok.clone());
        for krate in ["llguidance", "outlines-core"] {
            for i in 0..n {
                let name = cases()[i].0;
                let r = run_child(&exe, krate, tok, i, repeats);
                let g = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
                let f = |k: &str, p: usize| match g(k).as_f64() {
                    Some(x) => format!("{x:.p$}"),
                    None => "–".into(),
                };
                println!(
                    "| {krate} | {tname} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    f("vocab_ms", 1),
                    f("compile_ms", 1),
                    f("first_mask_us", 1),
                    f("mask_mean_us", 1),
                    f("mask_p99_us", 1),
                    g("steps"),
                    g("heap").as_str().unwrap_or("–"),
                    g("valid").as_str().unwrap_or("–"),
                    g("invalid").as_str().unwrap_or("–"),
                    g("status").as_str().unwrap_or("?"),
                );
            }
        }
    }
}

fn run_child(exe: &std::path::Path, krate: &str, tok: &str, idx: usize, repeats: usize) -> Value {
    let mut child = Command::new(exe)
        .args(["child", krate, tok, &idx.to_string(), &repeats.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut vocab_at: Option<Instant> = None;
    let mut compiled = false;
    let mut vocab_ms = Value::Null;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(ms) = line.strip_prefix("VOCAB ") {
                    vocab_at = Some(Instant::now());
                    vocab_ms = json!(ms.parse::<f64>().unwrap_or(f64::NAN));
                } else if line.starts_with("COMPILED") {
                    compiled = true;
                } else if let Some(js) = line.strip_prefix("RESULT ") {
                    let _ = child.wait();
                    return serde_json::from_str(js).unwrap();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let over_compile = !compiled
                    && vocab_at.map_or(start.elapsed() > COMPILE_CAP * 2, |t| t.elapsed() > COMPILE_CAP);
                let over_walk = compiled && start.elapsed() > COMPILE_CAP * 4;
                if over_compile || over_walk {
                    let _ = child.kill();
                    let _ = child.wait();
                    let what = if over_compile { "compile timeout >120 s" } else { "walk timeout" };
                    return json!({"status": what, "vocab_ms": vocab_ms});
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let st = child.wait();
                return json!({"status": format!("child died: {st:?}"), "vocab_ms": vocab_ms});
            }
        }
    }
}

// ---------------------------------------------------------------- child

struct Tok {
    json: Value,
    tokenizer: tokenizers::Tokenizer,
    n_vocab: usize,
    eos: u32,
}

fn load_tokenizer(path: &str) -> Tok {
    let text = std::fs::read_to_string(path).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    // Encode the instance as generated output, not as a prompt: no Metaspace "▁" prepended to
    // the first word, and no BOS.
    let mut enc = json.clone();
    if enc["pre_tokenizer"]["type"] == "Metaspace" {
        enc["pre_tokenizer"]["prepend_scheme"] = json!("never");
    }
    if enc["normalizer"]["type"] == "Sequence" {
        if let Some(a) = enc["normalizer"]["normalizers"].as_array_mut() {
            a.retain(|n| n["type"] != "Prepend");
        }
    } else if enc["normalizer"]["type"] == "Prepend" {
        enc["normalizer"] = Value::Null;
    }
    let tokenizer: tokenizers::Tokenizer = std::str::FromStr::from_str(&enc.to_string()).unwrap();
    let n_vocab = tokenizer.get_vocab_size(true);
    let eos = ["</s>", "<|endoftext|>", "<|im_end|>", "<|end_of_text|>", "<|eot_id|>"]
        .iter()
        .find_map(|t| tokenizer.token_to_id(t))
        .expect("eos");
    Tok { json, tokenizer, n_vocab, eos }
}

fn encode(tok: &Tok, text: &str) -> Vec<u32> {
    let ids = tok.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    let back = tok.tokenizer.decode(&ids, false).unwrap();
    assert_eq!(back.trim_start(), text, "tokenization round trip");
    ids
}

fn peak_rss_mb() -> f64 {
    rss_mb("VmHWM:")
}

fn rss_mb(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 * 0.99).ceil() as usize).saturating_sub(1).min(v.len() - 1);
    (mean, v[i])
}

/// Outcome of one walk: per-step mask times (µs), and Ok or where it was refused.
type Walk = (Vec<f64>, Result<(), String>);

trait Engine {
    fn walk(&self, ids: &[u32]) -> Walk;
}

fn child(krate: &str, tok_path: &str, idx: usize, repeats: usize) {
    let (name, schema, valid, invalid) = cases().swap_remove(idx);
    let tok = load_tokenizer(tok_path);
    let valid_ids = encode(&tok, &valid);
    let invalid_ids: Vec<(&str, Vec<u32>)> = invalid.iter().map(|(w, t)| (*w, encode(&tok, t))).collect();
    let _ = name;
    // Peak RSS from here on: reset the high-water mark after the tokenizer is loaded.
    let base_rss = rss_mb("VmRSS:");
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let heap0 = heap::live_mb();
    heap::reset_peak();

    let t = Instant::now();
    let vocab_ms;
    let heap_vocab;
    let heap_compiled;
    let (engine, compile_ms): (Result<Box<dyn Engine>, String>, f64) = match krate {
        "llguidance" => {
            let factory = llg::factory(&tok);
            vocab_ms = ms(t.elapsed());
            println!("VOCAB {vocab_ms:.3}");
            heap_vocab = heap::live_mb() - heap0;
            let t = Instant::now();
            let r = llg::compile(&factory, &schema).map(|e| Box::new(e) as Box<dyn Engine>);
            let d = ms(t.elapsed());
            println!("COMPILED {d:.3}");
            heap_compiled = heap::live_mb() - heap0 - heap_vocab;
            (r, d)
        }
        "outlines-core" => {
            let vocab = oc::vocabulary(&tok);
            vocab_ms = ms(t.elapsed());
            println!("VOCAB {vocab_ms:.3}");
            heap_vocab = heap::live_mb() - heap0;
            let t = Instant::now();
            let r = oc::compile(&vocab, &schema, tok.n_vocab).map(|e| Box::new(e) as Box<dyn Engine>);
            let d = ms(t.elapsed());
            println!("COMPILED {d:.3}");
            heap_compiled = heap::live_mb() - heap0 - heap_vocab;
            (r, d)
        }
        _ => panic!("crate?"),
    };
    let engine = match engine {
        Ok(e) => e,
        Err(e) => {
            let e: String = e.chars().take(160).collect();
            let r = json!({"status": format!("compile error: {}", e.replace('|', "/").replace('\n', " ")),
                           "compile_ms": compile_ms, "vocab_ms": vocab_ms, "rss_mb": peak_rss_mb(), "base_rss_mb": base_rss,
                           "heap": format!("{heap_vocab:.1} / {heap_compiled:.1} / {:.1}", heap::peak_mb() - heap0)});
            println!("RESULT {r}");
            return;
        }
    };

    let mut all = Vec::new();
    let mut firsts = Vec::new();
    let mut valid_status = Ok(());
    for _ in 0..repeats.max(1) {
        let (times, st) = engine.walk(&valid_ids);
        if let Some(f) = times.first() {
            firsts.push(*f);
        }
        all.extend(times);
        if st.is_err() {
            valid_status = st;
            break;
        }
    }
    let (mean, p99) = stats(all);
    let accepted: Vec<&str> = invalid_ids
        .iter()
        .filter(|(_, ids)| engine.walk(ids).1.is_ok())
        .map(|(w, _)| *w)
        .collect();
    let inv = if accepted.is_empty() {
        format!("all {}", invalid_ids.len())
    } else {
        format!("{}/{}; accepts: {}", invalid_ids.len() - accepted.len(), invalid_ids.len(), accepted.join(", "))
    };
    let r = json!({
        "status": if valid_status.is_ok() { "ok".to_string() } else { "valid walk refused".to_string() },
        "compile_ms": compile_ms,
        "vocab_ms": vocab_ms,
        "first_mask_us": firsts.iter().sum::<f64>() / firsts.len().max(1) as f64,
        "mask_mean_us": mean,
        "mask_p99_us": p99,
        "steps": valid_ids.len() + 1,
        "rss_mb": peak_rss_mb(),
        "base_rss_mb": base_rss,
        "heap": format!("{heap_vocab:.1} / {heap_compiled:.1} / {:.1}", heap::peak_mb() - heap0),
        "valid": match &valid_status { Ok(()) => "accepted".to_string(), Err(e) => e.clone() },
        "invalid": inv,
    });
    println!("RESULT {r}");
}


// ---------------------------------------------------------------- llguidance

mod llg {
    use super::*;
    use llguidance::api::TopLevelGrammar;
    use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
    use llguidance::{Matcher, ParserFactory};

    /// As /work/main/crates/engine/src/constraint.rs builds it.
    pub fn factory(tok: &Tok) -> ParserFactory {
        let mut words = llguidance::token_bytes_from_tokenizer_json(&tok.json).unwrap();
        let vocab = tok.n_vocab.max(words.len());
        words.resize(vocab, Vec::new());
        let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, tok.eos), &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).unwrap();
        factory.quiet();
        factory
    }

    pub struct Llg {
        template: Matcher,
        eos: u32,
    }

    pub fn compile(factory: &ParserFactory, schema: &Value) -> Result<Llg, String> {
        let mut schema = schema.clone();
        if let Some(o) = schema.as_object_mut() {
            o.entry("x-guidance").or_insert_with(|| json!({"whitespace_flexible": false}));
        }
        let parser = factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| e.to_string())?;
        let template = Matcher::new(Ok(parser));
        if let Some(e) = template.get_error() {
            return Err(e);
        }
        let eos = factory.tok_env().tok_trie().eos_token();
        Ok(Llg { template, eos })
    }

    impl Engine for Llg {
        fn walk(&self, ids: &[u32]) -> Walk {
            let mut m = self.template.deep_clone();
            let mut times = Vec::with_capacity(ids.len() + 1);
            for (i, &id) in ids.iter().chain(std::iter::once(&self.eos)).enumerate() {
                let t = Instant::now();
                let mask = match m.compute_mask_or_eos() {
                    Ok(mask) => mask,
                    Err(e) => return (times, Err(format!("mask error at {i}: {e}"))),
                };
                times.push(t.elapsed().as_secs_f64() * 1e6);
                if (id as usize) >= mask.len() || !mask.is_allowed(id) {
                    let what = if id == self.eos { "EOS".to_string() } else { format!("token {i}") };
                    return (times, Err(format!("{what} not allowed")));
                }
                if id == self.eos {
                    break;
                }
                if let Err(e) = m.consume_token(id) {
                    return (times, Err(format!("consume {i}: {e}")));
                }
            }
            (times, Ok(()))
        }
    }
}

// ---------------------------------------------------------------- outlines-core

mod oc {
    use super::*;
    use outlines_core::index::Index;
    use outlines_core::vocabulary::Vocabulary;

    /// By hand, as outlines-core's (hf-hub-gated) TokenProcessor does for byte-fallback and
    /// byte-level tokenizers; special added tokens and EOS are left out.
    pub fn vocabulary(tok: &Tok) -> Vocabulary {
        let j = &tok.json;
        let special: std::collections::HashSet<u64> = j["added_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["special"].as_bool() == Some(true))
            .filter_map(|t| t["id"].as_u64())
            .collect();
        let decoder = &j["decoder"];
        let byte_level = decoder["type"] == "ByteLevel"
            || decoder["decoders"].as_array().is_some_and(|d| d.iter().any(|d| d["type"] == "ByteLevel"));
        let mut space = "▁".to_string();
        if let Some(ds) = decoder["decoders"].as_array() {
            for d in ds {
                if d["type"] == "Replace" && d["content"] == " " {
                    if let Some(p) = d["pattern"]["String"].as_str() {
                        space = p.to_string();
                    }
                }
            }
        }
        let char_map = byte_level_map();
        let mut v = Vocabulary::new(tok.eos);
        let mut insert = |s: &str, id: u32| {
            let bytes: Vec<u8> = if byte_level {
                s.chars().map(|c| *char_map.get(&c).expect("byte-level char")).collect()
            } else if s.len() == 6 && s.starts_with("<0x") && s.ends_with('>') {
                vec![u8::from_str_radix(&s[3..5], 16).unwrap()]
            } else {
                s.replace(&space, " ").into_bytes()
            };
            v.try_insert(bytes, id).unwrap();
        };
        for (s, id) in j["model"]["vocab"].as_object().unwrap() {
            let id = id.as_u64().unwrap();
            if id as u32 != tok.eos && !special.contains(&id) {
                insert(s, id as u32);
            }
        }
        for t in j["added_tokens"].as_array().unwrap() {
            let id = t["id"].as_u64().unwrap();
            if t["special"].as_bool() != Some(true) && id as u32 != tok.eos {
                let s = t["content"].as_str().unwrap();
                if j["model"]["vocab"].get(s).is_none() {
                    v.try_insert(s.as_bytes().to_vec(), id as u32).unwrap();
                }
            }
        }
        v
    }

    fn byte_level_map() -> std::collections::HashMap<char, u8> {
        let mut m = std::collections::HashMap::new();
        let mut key = 0x100u32;
        for b in 0..=255u8 {
            let c = b as char;
            if matches!(c, '!'..='~' | '\u{00A1}'..='\u{00AC}' | '\u{00AE}'..='\u{00FF}') {
                m.insert(c, b);
            } else {
                m.insert(char::from_u32(key).unwrap(), b);
                key += 1;
            }
        }
        m
    }

    pub struct Oc {
        index: Index,
        n_vocab: usize,
        eos: u32,
    }

    pub fn compile(vocab: &Vocabulary, schema: &Value, n_vocab: usize) -> Result<Oc, String> {
        // Empty whitespace pattern: compact JSON, as llguidance's whitespace_flexible=false.
        let regex = outlines_core::json_schema::regex_from_value(schema, Some(""), None)
            .map_err(|e| format!("json_schema: {e}"))?;
        eprintln!("[outlines regex, {} chars] {regex}", regex.len());
        let index = Index::new(&regex, vocab).map_err(|e| format!("index: {e}"))?;
        Ok(Oc { index, n_vocab, eos: vocab.eos_token_id() })
    }

    impl Engine for Oc {
        fn walk(&self, ids: &[u32]) -> Walk {
            let mut state = self.index.initial_state();
            let mut mask = vec![0u32; self.n_vocab.div_ceil(32)];
            let mut times = Vec::with_capacity(ids.len() + 1);
            for (i, &id) in ids.iter().chain(std::iter::once(&self.eos)).enumerate() {
                // The mask: a bitset over the vocabulary, as a sampler would apply it.
                let t = Instant::now();
                mask.iter_mut().for_each(|w| *w = 0);
                if let Some(it) = self.index.allowed_tokens_iter(&state) {
                    for &a in it {
                        mask[(a / 32) as usize] |= 1 << (a % 32);
                    }
                }
                times.push(t.elapsed().as_secs_f64() * 1e6);
                std::hint::black_box(&mask);
                if mask[(id / 32) as usize] & (1 << (id % 32)) == 0 {
                    let what = if id == self.eos { "EOS".to_string() } else { format!("token {i}") };
                    return (times, Err(format!("{what} not allowed")));
                }
                if id == self.eos {
                    break;
                }
                match self.index.next_state(&state, &id) {
                    Some(s) => state = s,
                    None => return (times, Err(format!("no next state at {i}"))),
                }
            }
            (times, Ok(()))
        }
    }
}
