use super::*;

fn logits() -> Vec<f32> {
    vec![1.0, 3.0, 2.0, 0.5, 2.9]
}

#[test]
fn greedy_takes_the_argmax() {
    let mut s = Sampler::new(SamplingParams::greedy());
    assert_eq!(s.sample(&mut logits(), &[], 0), 1);
}

#[test]
fn penalties_change_the_pick() {
    let params = SamplingParams {
        repeat_penalty: 2.0,
        ..SamplingParams::greedy()
    };
    // Token 1 was just said: 3.0 / 2 = 1.5 < 2.9.
    assert_eq!(Sampler::new(params).sample(&mut logits(), &[1], 0), 4);
    let params = SamplingParams {
        frequency_penalty: 0.1,
        ..SamplingParams::greedy()
    };
    // Generated twice: 3.0 - 0.2 < 2.9.
    assert_eq!(Sampler::new(params).sample(&mut logits(), &[7, 1, 1], 2), 4);
}

#[test]
fn seeds_repeat_and_top_k_limits() {
    let params = SamplingParams {
        temperature: 5.0,
        top_k: 2,
        top_p: 1.0,
        seed: Some(42),
        repeat_penalty: 1.0,
        ..SamplingParams::default()
    };
    let draw = |params: &SamplingParams| {
        let mut s = Sampler::new(params.clone());
        (0..50)
            .map(|_| s.sample(&mut logits(), &[], 0))
            .collect::<Vec<_>>()
    };
    let a = draw(&params);
    assert_eq!(a, draw(&params));
    assert!(
        a.iter().all(|&t| t == 1 || t == 4),
        "top_k 2 keeps tokens 1 and 4"
    );
    assert!(a.contains(&1) && a.contains(&4));
    assert_ne!(
        a,
        draw(&SamplingParams {
            seed: Some(43),
            ..params
        })
    );
}

#[test]
fn top_p_and_min_p_cut_the_tail() {
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 0.5,
        seed: Some(1),
        repeat_penalty: 1.0,
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(params.clone());
    // p(1) ≈ 0.39, p(4) ≈ 0.35: top_p 0.5 keeps exactly those two.
    assert!((0..100).all(|_| matches!(s.sample(&mut logits(), &[], 0), 1 | 4)));
    let mut s = Sampler::new(SamplingParams {
        top_p: 1.0,
        min_p: 0.5,
        ..params
    });
    assert!((0..100).all(|_| matches!(s.sample(&mut logits(), &[], 0), 1 | 2 | 4)));
}

/// A row's `n` highest logits by the ranked order, as the device's top-k gives them.
fn top(row: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = row
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    all.sort_by(ranked);
    all.truncate(n);
    all
}

#[test]
fn a_shortlist_draws_what_the_whole_row_draws() {
    // Rows with many equal logits (a top-k line through ties) and penalized tokens crossing
    // it both ways; every parameter mix, with a top-k and without one (a draw over every
    // token, whose shortlist is a head of any length), many seeds. A shortlist that cannot
    // tell gives None and the whole row then decides, as the engine does.
    let mut rng = SplitMix64::new(7);
    let (mut differ, mut told, mut fell_back) = (0, 0, 0);
    for case in 0..6000 {
        let vocab = 50 + (rng.unit() * 200.0) as usize;
        let row: Vec<f32> = (0..vocab)
            .map(|_| ((rng.unit() * 12.0) as i32 - 6) as f32 * 0.5)
            .collect();
        let context: Vec<u32> = (0..(rng.unit() * 80.0) as usize)
            .map(|_| (rng.unit() * vocab as f32) as u32)
            .collect();
        let generated = (rng.unit() * context.len() as f32) as usize;
        let every_token = case % 2 == 1;
        let params = SamplingParams {
            temperature: [0.0, 0.3, 0.8, 1.5][case % 4],
            top_k: if every_token {
                0
            } else {
                1 + (rng.unit() * 60.0) as usize
            },
            top_p: [1.0, 0.9, 0.5][case % 3],
            min_p: [0.0, 0.05][(case / 2) % 2],
            repeat_penalty: [1.0, 1.1, 0.8, 2.0][(case / 4) % 4],
            repeat_last_n: (rng.unit() * 70.0) as usize,
            presence_penalty: [0.0, 0.5, -0.5][(case / 3) % 3],
            frequency_penalty: [0.0, 0.2][(case / 8) % 2],
            seed: Some(case as u64),
        };
        let sampler = Sampler::new(params.clone());
        let ahead = case % 3;
        let penalized = sampler.penalized(&context, generated, ahead);
        let len = if sampler.params().draws_over_every_token() {
            1 + (rng.unit() * vocab as f32) as usize + penalized.len()
        } else {
            params.shortlist_len(penalized.len())
        };
        // A draft of `ahead` tokens ends the context: its rows see the context without the
        // last `ahead`, ..., 0 tokens; each row's penalized tokens are in the shortlist.
        let j = case % (ahead + 1);
        let seen = context.len().saturating_sub(ahead - j);
        let (row_context, row_generated) = (&context[..seen], generated.saturating_sub(ahead - j));
        for t in sampler.penalized(row_context, row_generated, 0) {
            assert!(
                penalized.binary_search(&t).is_ok(),
                "case {case}: {t} is penalized"
            );
        }
        // The normalizer as a device sums it: from the row before penalties.
        let normalizer = Some(Normalizer::of(&row, params.temperature));
        let mut whole = Sampler::new(params.clone());
        let mut short = Sampler::new(params);
        for _ in 0..3 {
            let a = whole.sample_row(&mut row.clone(), normalizer, row_context, row_generated);
            let list = Shortlist {
                top: top(&row, len),
                complete: len >= vocab,
                penalized: penalized.iter().map(|&t| (t, row[t as usize])).collect(),
                normalizer,
            };
            let b = match short.sample_shortlist(list, row_context, row_generated) {
                Some(token) => {
                    told += every_token as usize;
                    token
                }
                None => {
                    fell_back += 1;
                    short.sample_row(&mut row.clone(), normalizer, row_context, row_generated)
                }
            };
            differ += (a != b) as usize;
        }
    }
    assert_eq!(differ, 0, "draws that differ");
    // Both ways were taken without a top-k.
    assert!(
        told > 1000 && fell_back > 1000,
        "{told} told, {fell_back} fell back"
    );
}

#[test]
fn a_draw_over_every_token_follows_the_softmax() {
    // 2,000 tokens, a few likely ones and a long tail with a third of the mass, so the draw
    // ranks past its first head now and then; each token's share of the draws is its
    // probability.
    let row: Vec<f32> = (0..2000)
        .map(|i| {
            if i % 500 == 7 {
                4.0 - (i / 500) as f32
            } else {
                (i % 13) as f32 * 0.1 - 3.0
            }
        })
        .collect();
    for (top_p, min_p) in [(1.0, 0.0), (0.6, 0.0), (1.0, 0.02)] {
        let params = SamplingParams {
            temperature: 0.9,
            top_k: 0,
            top_p,
            min_p,
            repeat_penalty: 1.0,
            seed: Some(5),
            ..SamplingParams::default()
        };
        // The reference: the whole softmax, then the same cuts, in plain f64.
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((row[i] - 4.0) as f64 / 0.9).exp())
            .collect();
        let z: f64 = weights.iter().sum();
        let mut kept = 0;
        let mut mass = 0.0;
        for w in &weights {
            if w / z < weights[0] / z * min_p as f64 {
                break;
            }
            kept += 1;
            mass += w / z;
            if top_p < 1.0 && mass >= top_p as f64 {
                break;
            }
        }
        let kept_mass: f64 = weights[..kept].iter().sum();
        let mut expected = vec![0.0; row.len()];
        for k in 0..kept {
            expected[order[k]] = weights[k] / kept_mass;
        }
        let mut s = Sampler::new(params);
        let draws = 20_000;
        let mut counts = vec![0usize; row.len()];
        for _ in 0..draws {
            counts[s.sample(&mut row.clone(), &[], 0) as usize] += 1;
        }
        for (i, (&n, &p)) in counts.iter().zip(&expected).enumerate() {
            let share = n as f64 / draws as f64;
            let sd = (p * (1.0 - p) / draws as f64).sqrt();
            assert!(
                (share - p).abs() <= 5.0 * sd + 1e-9,
                "top_p {top_p} min_p {min_p}: token {i} drawn {share}, p {p}"
            );
        }
        if top_p == 1.0 && min_p == 0.0 {
            // The tail is drawn too: past any first head.
            assert!(counts
                .iter()
                .enumerate()
                .any(|(i, &n)| n > 0 && i % 500 != 7));
        }
    }
}

#[test]
fn the_top_k_line_breaks_ties_by_id() {
    // Four equal logits, top_k 2: always the two lowest ids, whatever the row's order.
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 2,
        top_p: 1.0,
        repeat_penalty: 1.0,
        seed: Some(3),
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(params);
    let picks: Vec<u32> = (0..200)
        .map(|_| s.sample(&mut [0.0, 1.0, 1.0, 1.0, 1.0], &[], 0))
        .collect();
    assert!(picks.iter().all(|&t| t == 1 || t == 2), "{picks:?}");
}

#[test]
fn penalties_move_a_devices_normalizer_as_summing_the_penalized_row_would() {
    let params = SamplingParams {
        temperature: 0.7,
        top_k: 0,
        repeat_penalty: 1.3,
        presence_penalty: 0.4,
        frequency_penalty: -0.3,
        ..SamplingParams::default()
    };
    let sampler = Sampler::new(params);
    let raw = logits();
    let mut row = raw.clone();
    // Tokens 1 and 4 (the two likeliest) repeated, 4 and 0 generated, 4 twice.
    let changes = sampler.penalize(&mut row[..], &[1, 4, 4, 0], 3);
    assert_eq!(changes.len(), 3);
    let moved = Normalizer::of(&raw, 0.7)
        .penalized(0.7, changes.into_iter())
        .unwrap();
    let expected: f64 = row.iter().map(|&l| ((l - 3.0) / 0.7).exp() as f64).sum();
    assert_eq!(moved.max, 3.0);
    assert!(
        (moved.sum - expected).abs() < 1e-6 * expected,
        "{} != {expected}",
        moved.sum
    );
}

#[test]
fn a_penalty_that_raises_a_logit_past_exps_range_is_summed_again() {
    // Negative OpenAI penalties lift tokens 1 and 2 from 0 to 110 and 120, far above the
    // raw row's max of 10: a device's normalizer cannot be moved that far, and the draw is
    // the penalized row's softmax (token 2: 1 − e^−10), on the GPU's way as on the CPU's.
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        repeat_penalty: 1.0,
        presence_penalty: -100.0,
        frequency_penalty: -10.0,
        seed: Some(9),
        ..SamplingParams::default()
    };
    let raw = vec![10.0, 0.0, 0.0];
    let context = [1, 2, 2];
    let mut s = Sampler::new(params);
    let device = Some(Normalizer::of(&raw, 1.0));
    let twos = (0..200)
        .filter(|_| s.sample_row(&mut raw.clone(), device, &context, 3) == 2)
        .count();
    assert_eq!(twos, 200);
}
