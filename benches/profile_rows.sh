#!/usr/bin/env bash
# Where a ferrollama server spends its CPU, per model row of compare_llamacpp.sh and per load:
# `perf record` on the serving process while `ferrollama bench` drives one workload, then
# `perf report`'s top symbols as text. Run it on two builds (say, before and after a change)
# with different labels to set the profiles side by side.
#
#   benches/profile_rows.sh [--bin PATH] [--label NAME] [--models LIST] [--out DIR]
#
#   --bin PATH      the ferrollama binary to profile (default: build it); it should carry
#                   symbols (the release profile keeps debuginfo)
#   --label NAME    names the files: MODEL-LOAD-LABEL.txt (default: the binary's git commit, or
#                   "build")
#   --models LIST   any of smollm2,q4_0,q8_0,q4_k_m (default: all four; the models come from
#                   compare_llamacpp.sh's cache, so run that once first)
#   --out DIR       where the .txt top lists go (default: a new dir under /tmp)
#
# BENCH_BIN is the ferrollama that drives the load (default: --bin), for when --bin is an old
# build whose `bench` lacks today's flags.
# Loads, each the compare script's measure in small: decode (one stream, 32-token prompts,
# 64 tokens out), prefill (one 1,000-token prompt, one token out) and streams (16 at once,
# 64-token prompts, 64 tokens out). Needs `perf` and permission to attach to a process.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="" label="" models="smollm2,q4_0,q8_0,q4_k_m" out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin="$2"; shift 2 ;;
        --label) label="$2"; shift 2 ;;
        --models) models="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
if [ -z "$bin" ]; then
    cargo build --release --manifest-path "$root/Cargo.toml" >&2
    bin="${CARGO_TARGET_DIR:-$root/target}/release/ferrollama"
fi
[ -n "$label" ] || label="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo build)"
[ -n "$out" ] || out="$(mktemp -d /tmp/ferrollama-profile-XXXX)"
mkdir -p "$out"
threads="$(nproc)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ferrollama"
models_dir="${BENCH_MODELS_DIR:-$cache/bench-models}"

model_path() {
    case "$1" in
        smollm2) "$root/models/smollm2-path.sh" ;;
        q4_0|q8_0|q4_k_m) echo "$models_dir/mistral-1b-$1.gguf" ;;
        *) echo "unknown model $1" >&2; exit 2 ;;
    esac
}

port=18441
pid=""
stop_server() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
}
trap stop_server EXIT

for model in ${models//,/ }; do
    gguf="$(model_path "$model")"
    [ -f "$gguf" ] || { echo "$gguf is missing: run benches/compare_llamacpp.sh --models $model once" >&2; exit 1; }
    # The same server settings as the compare script.
    RAYON_NUM_THREADS="$threads" "$bin" serve --model "$gguf" --name bench --host 127.0.0.1 \
        --port "$port" --max-seqs 16 --kv-cache-memory 3GiB >"$out/$model-$label.serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
        curl -fsS "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { echo "the server died: $out/$model-$label.serve.log" >&2; exit 1; }
        sleep 0.5
    done
    for load in decode prefill streams; do
        case "$load" in
            decode) args=(--concurrency 1 --num-prompts 2 --input-len 32 --output-len 64) ;;
            prefill) args=(--concurrency 1 --num-prompts 1 --input-len 1000 --output-len 1) ;;
            streams) args=(--concurrency 16 --num-prompts 16 --input-len 64 --output-len 64) ;;
        esac
        base="$out/$model-$load-$label"
        echo "== $model $load ($label)" >&2
        perf record -F 499 -g -p "$pid" -o "$base.data" 2>/dev/null &
        perf_pid=$!
        sleep 1
        "${BENCH_BIN:-$bin}" bench --base-url "http://127.0.0.1:$port/v1" --model bench --tokenizer "$gguf" \
            --warmup 0 "${args[@]}" --json "$base.json" >/dev/null
        kill -INT "$perf_pid"
        wait "$perf_pid" 2>/dev/null || true
        {
            echo "# $model, $load, $label: perf record -F 499 -g on the server during"
            echo "# ferrollama bench ${args[*]}"
            perf report -i "$base.data" --no-children --sort symbol --percent-limit 0.5 \
                --stdio -g none 2>/dev/null | grep -v '^$' | grep -v '^# *$' |
                grep -v 'perf.data header\|^# Total Lost\|(Tip:' | sed -E 's/ +- +- *$//' | head -45
        } >"$base.txt"
        rm -f "$base.data"
    done
    stop_server
done
echo "top lists in $out" >&2
