//! The embedding loader's edge cases on a tiny random BERT written here (safetensors with a
//! hand-made WordPiece tokenizer.json, and the same weights as a GGUF in llama.cpp's layout).
//! The real all-MiniLM-L6-v2 against sentence-transformers is tests/clients/test_embeddings.py.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use ferrollama_model::{Encoder, ModelSource, Pooling};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

const HIDDEN: usize = 8;
const FF: usize = 16;
const LAYERS: usize = 2;
const POSITIONS: usize = 12;
const VOCAB: [&str; 14] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", ".",
    "dog", "##gy",
];

fn tensors(prefix: &str) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let mut seed = 0u64;
    let mut rand = |dims: &[usize]| {
        seed += 1;
        let n: usize = dims.iter().product();
        // A fixed pseudo-random fill (an LCG): the same weights every run.
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.8
            })
            .collect();
        Tensor::from_vec(data, dims, &dev).unwrap()
    };
    let mut t = HashMap::new();
    let mut put = |name: &str, dims: &[usize], t: &mut HashMap<String, Tensor>| {
        let mut w = rand(dims);
        if name.ends_with("LayerNorm.weight") {
            // Near 1, as trained norms are: random scales around 0 flatten every output alike.
            w = (w + 1.0).unwrap();
        }
        t.insert(format!("{prefix}{name}"), w);
    };
    put(
        "embeddings.word_embeddings.weight",
        &[VOCAB.len(), HIDDEN],
        &mut t,
    );
    put(
        "embeddings.position_embeddings.weight",
        &[POSITIONS, HIDDEN],
        &mut t,
    );
    put(
        "embeddings.token_type_embeddings.weight",
        &[2, HIDDEN],
        &mut t,
    );
    put("embeddings.LayerNorm.weight", &[HIDDEN], &mut t);
    put("embeddings.LayerNorm.bias", &[HIDDEN], &mut t);
    for i in 0..LAYERS {
        let p = format!("encoder.layer.{i}.");
        for m in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ] {
            put(&format!("{p}{m}.weight"), &[HIDDEN, HIDDEN], &mut t);
            put(&format!("{p}{m}.bias"), &[HIDDEN], &mut t);
        }
        put(
            &format!("{p}intermediate.dense.weight"),
            &[FF, HIDDEN],
            &mut t,
        );
        put(&format!("{p}intermediate.dense.bias"), &[FF], &mut t);
        put(&format!("{p}output.dense.weight"), &[HIDDEN, FF], &mut t);
        put(&format!("{p}output.dense.bias"), &[HIDDEN], &mut t);
        for m in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(&format!("{p}{m}.weight"), &[HIDDEN], &mut t);
            put(&format!("{p}{m}.bias"), &[HIDDEN], &mut t);
        }
    }
    t
}

fn config() -> serde_json::Value {
    json!({"model_type": "bert", "architectures": ["BertModel"], "vocab_size": VOCAB.len(),
           "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
           "intermediate_size": FF, "max_position_embeddings": POSITIONS, "hidden_act": "gelu",
           "layer_norm_eps": 1e-12, "type_vocab_size": 2, "position_embedding_type": "absolute"})
}

fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    json!({
        "version": "1.0", "truncation": {"max_length": 4, "strategy": "LongestFirst", "stride": 0,
                                          "direction": "Right"},
        "padding": null, "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

/// A sentence-transformers directory; `modules` and `pooling` as given (None: left out).
fn write_dir(dir: &Path, prefix: &str, pooling: Option<serde_json::Value>, normalize: bool) {
    std::fs::write(dir.join("config.json"), config().to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    candle_core::safetensors::save(&tensors(prefix), dir.join("model.safetensors")).unwrap();
    if let Some(pooling) = pooling {
        let mut modules = vec![
            json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
            json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
        ];
        if normalize {
            modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
        }
        std::fs::write(dir.join("modules.json"), json!(modules).to_string()).unwrap();
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        std::fs::write(dir.join("1_Pooling/config.json"), pooling.to_string()).unwrap();
        std::fs::write(
            dir.join("sentence_bert_config.json"),
            json!({"max_seq_length": 10}).to_string(),
        )
        .unwrap();
    }
}

fn mean() -> serde_json::Value {
    json!({"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true})
}

fn load(dir: &Path) -> ferrollama_model::Result<Encoder> {
    Encoder::load(
        &ModelSource::Safetensors(dir.to_path_buf()),
        &Device::Cpu,
        &mut |_, _| {},
    )
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn an_input_gets_the_same_vector_alone_and_padded_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), "", Some(mean()), true);
    let e = load(dir.path()).unwrap();
    let short = e.tokenize("the cat").unwrap();
    let long = e.tokenize("the dogs sat on the mat.").unwrap();
    assert_eq!(short, vec![2, 5, 6, 3]);
    assert_eq!(
        long,
        vec![2, 5, 12, 10, 7, 8, 5, 9, 11, 3],
        "tokenizer.json's own truncation (4) is off"
    );
    let alone = e.embed(std::slice::from_ref(&short)).unwrap();
    let batch = e.embed(&[long.clone(), short.clone(), long]).unwrap();
    assert_eq!(batch.len(), 3);
    for (a, b) in alone[0].iter().zip(&batch[1]) {
        assert!(
            (a - b).abs() < 1e-5,
            "padding leaked into the short input: {a} vs {b}"
        );
    }
    let c = cosine(&batch[0], &batch[1]);
    assert!(c < 0.99, "different inputs, different vectors: cosine {c}");
    let norm: f32 = batch[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
}

/// The CPU's packed forward (no padding rows, its own attention kernel) against padded
/// batches through candle's ops (the GPU's way), on the same inputs of different lengths.
#[test]
fn packed_and_padded_forwards_agree() {
    for pooling in [
        mean(),
        serde_json::json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), "", Some(pooling), true);
        let packed = load(dir.path()).unwrap();
        let padded = load(dir.path()).unwrap().with_padded_batches();
        let inputs: Vec<Vec<u32>> = [
            "the cat",
            "the dogs sat on the mat.",
            "mat",
            "on the cat sat",
        ]
        .iter()
        .map(|t| packed.tokenize(t).unwrap())
        .collect();
        let a = packed.embed(&inputs).unwrap();
        let b = padded.embed(&inputs).unwrap();
        for (x, y) in a.iter().zip(&b) {
            for (p, q) in x.iter().zip(y) {
                assert!((p - q).abs() < 1e-5, "packed {p} vs padded {q}");
            }
        }
        // On a pool of its own (the server's --threads), the same vectors.
        let own = load(dir.path()).unwrap().with_threads(1).unwrap();
        for (x, y) in own.embed(&inputs).unwrap().iter().zip(&a) {
            for (p, q) in x.iter().zip(y) {
                assert!((p - q).abs() < 1e-6, "own pool {p} vs global {q}");
            }
        }
    }
}

#[test]
fn pooling_and_normalisation_follow_modules_json() {
    let mean_dir = tempfile::tempdir().unwrap();
    write_dir(mean_dir.path(), "", Some(mean()), false);
    let cls_dir = tempfile::tempdir().unwrap();
    let cls = json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false});
    write_dir(cls_dir.path(), "bert.", Some(cls), true);
    let bare = tempfile::tempdir().unwrap();
    write_dir(bare.path(), "", None, false);

    let m = load(mean_dir.path()).unwrap();
    let c = load(cls_dir.path()).unwrap();
    let b = load(bare.path()).unwrap();
    assert_eq!(
        (m.pooling(), m.normalizes(), m.max_tokens()),
        (Pooling::Mean, false, 10)
    );
    assert_eq!((c.pooling(), c.normalizes()), (Pooling::Cls, true));
    // No modules.json: mean, not normalised, the model's positions as the limit.
    assert_eq!(
        (b.pooling(), b.normalizes(), b.max_tokens()),
        (Pooling::Mean, false, POSITIONS)
    );
    let ids = m.tokenize("the cat sat").unwrap();
    let mv = &m.embed(std::slice::from_ref(&ids)).unwrap()[0];
    let cv = &c.embed(std::slice::from_ref(&ids)).unwrap()[0];
    assert!(
        (mv.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() > 1e-3,
        "not normalised"
    );
    let c = cosine(mv, cv);
    assert!(
        c < 0.99,
        "CLS pooling differs from mean pooling: cosine {c}"
    );
    assert_eq!(
        mv,
        &b.embed(&[ids]).unwrap()[0],
        "a bare BERT pools by the mean"
    );
}

#[test]
fn truncation_keeps_the_closing_sep() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), "", Some(mean()), true);
    let e = load(dir.path()).unwrap();
    let mut ids = e
        .tokenize("the cat sat on the mat the cat sat on the mat")
        .unwrap();
    assert!(ids.len() > 10);
    e.truncate(&mut ids);
    assert_eq!(ids.len(), 10);
    assert_eq!((ids[0], ids[9]), (2, 3));
    let too_long = vec![5u32; 11];
    let err = e.embed(&[too_long]).unwrap_err().to_string();
    assert!(err.contains("11 tokens"), "{err}");
}

#[test]
fn unsupported_encoders_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        "",
        Some(json!({"pooling_mode_max_tokens": true})),
        false,
    );
    let err = load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("pooling_mode_max_tokens"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), "", Some(mean()), false);
    let mut c = config();
    c["hidden_act"] = json!("relu");
    std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
    let err = load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("relu"), "{err}");

    c["hidden_act"] = json!("gelu");
    c["hidden_size"] = json!(HIDDEN * 2);
    std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
    let err = load(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("word embeddings") && err.contains("shape"),
        "{err}"
    );

    c["hidden_size"] = json!(HIDDEN);
    c["model_type"] = json!("mistral");
    std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
    assert!(!ferrollama_model::is_encoder(&ModelSource::Safetensors(
        dir.path().to_path_buf()
    )));
    let err = load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("mistral is not an embedding model"), "{err}");
    c["model_type"] = json!("nomic_bert");
    std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
    // A nomic-bert loads from safetensors, or says what of its config it does not run.
    let err = load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("nomic-bert with activation `gelu`"), "{err}");
    c["model_type"] = json!("jina-bert-v2");
    std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
    // Known as an embedding model, so a request for it is told it is not supported yet.
    assert!(ferrollama_model::is_encoder(&ModelSource::Safetensors(
        dir.path().to_path_buf()
    )));
    let err = load(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("jina-bert-v2") && err.contains("does not run yet"),
        "{err}"
    );
}

/// The GGUF name of each tensor, as llama.cpp's converter writes them.
fn gguf_tensors() -> Vec<(String, QTensor)> {
    let mut out: Vec<_> = tensors("")
        .into_iter()
        .map(|(hf, t)| {
            let name = ferrollama_model::encoder::bert::gguf_name(&hf).unwrap();
            let t = if t.rank() == 2 {
                t.to_dtype(DType::F16).unwrap()
            } else {
                t
            };
            let dtype = if t.dtype() == DType::F16 {
                GgmlDType::F16
            } else {
                GgmlDType::F32
            };
            (name, QTensor::quantize(&t, dtype).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn phantom(token: &str) -> String {
    if token.starts_with('[') {
        token.to_string()
    } else if let Some(rest) = token.strip_prefix("##") {
        rest.to_string()
    } else {
        format!("\u{2581}{token}")
    }
}

/// A GGUF of `arch` at the test shape (two heads, mean pooling) with the test vocabulary,
/// `extra` metadata and `tensors`, as llama.cpp's converter lays them out.
fn write_gguf(
    path: &Path,
    arch: &str,
    extra: Vec<(String, gguf_file::Value)>,
    tensors: &[(String, QTensor)],
) {
    use gguf_file::Value as V;
    let tokens: Vec<V> = VOCAB.iter().map(|t| V::String(phantom(t))).collect();
    let mut metadata: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.into())),
        (format!("{arch}.context_length"), V::U32(POSITIONS as u32)),
        (format!("{arch}.embedding_length"), V::U32(HIDDEN as u32)),
        (format!("{arch}.feed_forward_length"), V::U32(FF as u32)),
        (format!("{arch}.block_count"), V::U32(LAYERS as u32)),
        (format!("{arch}.attention.head_count"), V::U32(2)),
        (
            format!("{arch}.attention.layer_norm_epsilon"),
            V::F32(1e-12),
        ),
        (format!("{arch}.pooling_type"), V::U32(1)),
        ("tokenizer.ggml.model".into(), V::String("bert".into())),
        ("tokenizer.ggml.tokens".into(), V::Array(tokens)),
        ("tokenizer.ggml.bos_token_id".into(), V::U32(2)),
        ("tokenizer.ggml.seperator_token_id".into(), V::U32(3)),
        ("tokenizer.ggml.unknown_token_id".into(), V::U32(1)),
    ];
    metadata.extend(extra);
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(
        &mut file,
        &metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect::<Vec<_>>(),
        &tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t))
            .collect::<Vec<_>>(),
    )
    .unwrap();
}

#[test]
fn a_gguf_of_the_same_weights_gives_the_same_ids_and_vectors() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), "", Some(mean()), true);
    let path = dir.path().join("tiny-bert.gguf");
    write_gguf(&path, "bert", Vec::new(), &gguf_tensors());
    let source = ModelSource::Gguf(path);
    assert!(ferrollama_model::is_encoder(&source));
    let g = Encoder::load(&source, &Device::Cpu, &mut |_, _| {}).unwrap();
    let s = load(dir.path()).unwrap();
    for text in ["the dogs sat on the mat.", "The DOGGY cat", "zebra"] {
        let ids = s.tokenize(text).unwrap();
        assert_eq!(g.tokenize(text).unwrap(), ids, "{text}");
        let (gv, sv) = (
            &g.embed(std::slice::from_ref(&ids)).unwrap()[0],
            &s.embed(&[ids]).unwrap()[0],
        );
        // The GGUF's matrices are f16.
        assert!(cosine(gv, sv) > 0.9999, "{text}: cosine {}", cosine(gv, sv));
    }
    assert_eq!(
        s.tokenize("zebra").unwrap(),
        vec![2, 1, 3],
        "unknown words are [UNK]"
    );
    assert_eq!(
        (g.pooling(), g.normalizes(), g.max_tokens()),
        (Pooling::Mean, true, POSITIONS)
    );
}

/// A tiny random nomic-bert GGUF in llama.cpp's layout (f32), with the test vocabulary.
fn write_nomic_gguf(path: &Path) {
    use gguf_file::Value as V;
    let dev = Device::Cpu;
    let mut seed = 100u64;
    let mut rand = |dims: &[usize], around: f32| {
        seed += 1;
        let n: usize = dims.iter().product();
        let mut state = seed.wrapping_mul(6364136223846793005);
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                around + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.8
            })
            .collect();
        QTensor::quantize(&Tensor::from_vec(data, dims, &dev).unwrap(), GgmlDType::F32).unwrap()
    };
    let mut tensors = vec![
        (
            "token_embd.weight".to_string(),
            rand(&[VOCAB.len(), HIDDEN], 0.0),
        ),
        ("token_types.weight".to_string(), rand(&[2, HIDDEN], 0.0)),
        ("token_embd_norm.weight".to_string(), rand(&[HIDDEN], 1.0)),
        ("token_embd_norm.bias".to_string(), rand(&[HIDDEN], 0.0)),
    ];
    for i in 0..LAYERS {
        for (name, dims, around) in [
            ("attn_qkv.weight", vec![3 * HIDDEN, HIDDEN], 0.0),
            ("attn_output.weight", vec![HIDDEN, HIDDEN], 0.0),
            ("attn_output_norm.weight", vec![HIDDEN], 1.0),
            ("attn_output_norm.bias", vec![HIDDEN], 0.0),
            ("ffn_up.weight", vec![FF, HIDDEN], 0.0),
            ("ffn_gate.weight", vec![FF, HIDDEN], 0.0),
            ("ffn_down.weight", vec![HIDDEN, FF], 0.0),
            ("layer_output_norm.weight", vec![HIDDEN], 1.0),
            ("layer_output_norm.bias", vec![HIDDEN], 0.0),
        ] {
            tensors.push((format!("blk.{i}.{name}"), rand(&dims, around)));
        }
    }
    let rope = ("nomic-bert.rope.freq_base".to_string(), V::F32(1000.0));
    write_gguf(path, "nomic-bert", vec![rope], &tensors);
}

/// nomic-bert from a GGUF: the CPU's packed forward (rotary positions turned on the rows by
/// our own loop) against padded batches through candle's ops (candle's rope), and the order
/// of words matters (positions are in the attention, not the embeddings).
#[test]
fn nomic_bert_packed_and_padded_agree_and_word_order_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-nomic.gguf");
    write_nomic_gguf(&path);
    let source = ModelSource::Gguf(path);
    assert!(ferrollama_model::is_encoder(&source));
    let packed = Encoder::load(&source, &Device::Cpu, &mut |_, _| {}).unwrap();
    let padded = Encoder::load(&source, &Device::Cpu, &mut |_, _| {})
        .unwrap()
        .with_padded_batches();
    assert_eq!(packed.description().architecture, "nomic-bert");
    assert_eq!(packed.description().pooling, Some(Pooling::Mean));
    let inputs: Vec<Vec<u32>> = [
        "the cat sat on the mat.",
        "the dog",
        "mat cat the sat on the.",
    ]
    .iter()
    .map(|t| packed.tokenize(t).unwrap())
    .collect();
    let a = packed.embed(&inputs).unwrap();
    let b = padded.embed(&inputs).unwrap();
    for (x, y) in a.iter().zip(&b) {
        let norm: f32 = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "unit vectors, as Ollama gives");
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() < 1e-5, "packed {p} vs padded {q}");
        }
    }
    // The same words in another order: mean pooling alone would not tell them apart. (Small
    // random weights attend almost evenly, so the difference is small, yet far above the
    // 1e-5 the two forwards agree to.)
    let moved = a[0]
        .iter()
        .zip(&a[2])
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-3,
        "word order changes the vector: at most {moved}"
    );
}
