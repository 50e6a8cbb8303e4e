//! The terminal table: one row per load level.

use crate::metrics::LevelSummary;

pub fn table(levels: &[LevelSummary]) -> String {
    let header = [
        "load",
        "ok/fail",
        "req/s",
        "out tok/s",
        "tot tok/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "ITL p50",
        "ITL p99",
        "E2E p50",
        "E2E p99",
    ];
    let rows: Vec<Vec<String>> = levels
        .iter()
        .map(|s| {
            vec![
                s.load.to_string(),
                format!("{}/{}", s.completed, s.failed),
                format!("{:.2}", s.request_throughput),
                format!("{:.1}", s.output_throughput),
                format!("{:.1}", s.total_token_throughput),
                ms(s.ttft_ms.median),
                ms(s.ttft_ms.p99),
                ms(s.tpot_ms.median),
                ms(s.tpot_ms.p99),
                ms(s.itl_ms.median),
                ms(s.itl_ms.p99),
                ms(s.e2e_ms.median),
                ms(s.e2e_ms.p99),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
                .max(header[c].len())
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out.push_str(
        "(latencies in ms; TPOT: per output token after the first; ITL: between streamed chunks)\n",
    );
    out
}

fn ms(v: f64) -> String {
    format!("{v:.1}")
}
