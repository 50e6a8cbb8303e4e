#!/usr/bin/env bash
# ferrollama and llama.cpp's server side by side on the same GGUF, the same thread count and
# the same context, measured in one run by `ferrollama bench`, reported as ratios.
#
#   LLAMA_SERVER=/path/to/llama-server benches/compare_llamacpp.sh [options]
#
# The peer is llama.cpp's native `llama-server` (continuous batching over -np slots), taken
# from $LLAMA_SERVER; this script never builds it. Without one it falls back to the PyPI
# llama-cpp-python server in $LLAMA_CPP_PYTHON_VENV, which serves one request at a time and is
# therefore compared on single streams only.
#
# Options:
#   --models LIST   any of smollm2,q4_0,q8_0,q4_k_m (default: all four). smollm2 is
#                   SmolLM2-135M Q4_1 from PyPI; the others are a random 1.3B Mistral made by
#                   models/make_bench_gguf.py (cached in $BENCH_MODELS_DIR); q4_k_m is its F16
#                   file through llama.cpp's llama-quantize ($LLAMA_QUANTIZE, default: beside
#                   $LLAMA_SERVER), so it needs a llama.cpp build.
#   --threads N     threads for both servers (default: every core)
#   --rounds N      single-stream decode and prompt processing are measured N times per server
#                   (default 5), alternating which server goes first, with both servers up;
#                   the table gives medians and the median of the per-round ratios, so a drift
#                   of the host's speed during the run hits both servers alike
#   --quick         fewer requests per measurement (a smoke run, not a result)
#   --out DIR       where the JSON, SVG and summary.md go (default: a new dir under /tmp);
#                   MODEL-compare.svg draws both servers on the same axes
#
# Environment: FERROLLAMA_BIN (default: build it), LLAMA_SERVER, LLAMA_SERVER_ARGS (the peer's
# own best flags, e.g. ik_llama.cpp's `-rtr -fa`), LLAMA_QUANTIZE,
# LLAMA_CPP_PYTHON_VENV, BENCH_VENV (python with gguf+numpy for the model script; made if missing), BENCH_MODELS_DIR.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ferrollama"
models="smollm2,q4_0,q8_0,q4_k_m"
threads="$(nproc)"
quick=0
rounds=5
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --models) models="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done
out="${out:-$(mktemp -d /tmp/ferrollama-compare.XXXXXX)}"
mkdir -p "$out"

if [ -z "${FERROLLAMA_BIN:-}" ]; then
    (cd "$root" && cargo build --release --bin ferrollama)
    FERROLLAMA_BIN="${CARGO_TARGET_DIR:-$root/target}/release/ferrollama"
fi

if [ -n "${LLAMA_SERVER:-}" ]; then
    [ -x "$LLAMA_SERVER" ] || { echo "LLAMA_SERVER=$LLAMA_SERVER is not executable" >&2; exit 1; }
    peer="llama-server"
    peer_version="$("$LLAMA_SERVER" --version 2>&1 | grep -m1 -i 'version' || true)"
else
    venv="${LLAMA_CPP_PYTHON_VENV:-$cache/llama-cpp-python}"
    if [ ! -x "$venv/bin/python" ]; then
        echo "No LLAMA_SERVER: installing llama-cpp-python's server into $venv (builds llama.cpp; slow)" >&2
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'llama-cpp-python[server]==0.3.36'
    peer="llama-cpp-python"
    peer_version="llama-cpp-python $("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
fi

bench_gguf() { # type path: writes the random 1.3B Mistral in a GGUF type
    local py="${BENCH_VENV:-$cache/bench-venv}"
    [ -x "$py/bin/python" ] || python3 -m venv "$py" >&2
    "$py/bin/pip" install --quiet --disable-pip-version-check -r "$root/models/requirements-bench.txt" >&2
    "$py/bin/python" "$root/models/make_bench_gguf.py" --type "$1" --out "$2" >&2
}

model_path() {
    local dir="${BENCH_MODELS_DIR:-$cache/bench-models}"
    mkdir -p "$dir"
    case "$1" in
        smollm2) "$root/models/smollm2-path.sh" ;;
        q4_0|q8_0)
            local path="$dir/mistral-1b-$1.gguf"
            [ -f "$path" ] || bench_gguf "$1" "$path"
            echo "$path" ;;
        q4_k_m)
            local path="$dir/mistral-1b-q4_k_m.gguf"
            if [ ! -f "$path" ]; then
                local quantize="${LLAMA_QUANTIZE:-$(dirname "${LLAMA_SERVER:-/nonexistent}")/llama-quantize}"
                [ -x "$quantize" ] || { echo "q4_k_m needs llama.cpp's llama-quantize: set LLAMA_QUANTIZE" >&2; exit 1; }
                [ -f "$dir/mistral-1b-f16.gguf" ] || bench_gguf f16 "$dir/mistral-1b-f16.gguf"
                "$quantize" "$dir/mistral-1b-f16.gguf" "$path.partial" Q4_K_M >&2
                mv "$path.partial" "$path"
            fi
            echo "$path" ;;
        *) echo "unknown model $1 (smollm2, q4_0, q8_0, q4_k_m)" >&2; exit 2 ;;
    esac
}

# Both servers stay up for the whole model, on their own ports, so their measures can alternate.
declare -A port=([ferrollama]=18431 ["$peer"]=18432) pid=()
stop_servers() {
    for server in "${!pid[@]}"; do
        kill "${pid[$server]}" 2>/dev/null || true
        wait "${pid[$server]}" 2>/dev/null || true
    done
    pid=()
}
trap stop_servers EXIT

# Both servers hold 16 sequences of up to 2048 tokens.
start_server() { # which gguf log
    local p="${port[$1]}"
    # A leftover server on the port would be measured instead of ours.
    if curl -fsS "http://127.0.0.1:$p/" >/dev/null 2>&1; then
        echo "port $p is already in use; stop what listens there" >&2
        exit 1
    fi
    case "$1" in
        ferrollama)
            RAYON_NUM_THREADS="$threads" "$FERROLLAMA_BIN" serve --model "$2" --name bench \
                --host 127.0.0.1 --port "$p" --max-seqs 16 --kv-cache-memory 3GiB >"$3" 2>&1 &
            ;;
        llama-server)
            # shellcheck disable=SC2086 # LLAMA_SERVER_ARGS is a list of flags
            "$LLAMA_SERVER" -m "$2" --alias bench --host 127.0.0.1 --port "$p" \
                -t "$threads" -tb "$threads" -np 16 -c $((16 * 2048)) ${LLAMA_SERVER_ARGS:-} >"$3" 2>&1 &
            ;;
        llama-cpp-python)
            "$venv/bin/python" -m llama_cpp.server --model "$2" --model_alias bench \
                --host 127.0.0.1 --port "$p" --n_threads "$threads" \
                --n_threads_batch "$threads" --n_ctx 2048 >"$3" 2>&1 &
            ;;
    esac
    pid[$1]=$!
    for _ in $(seq 600); do
        if curl -fsS "http://127.0.0.1:$p/v1/models" >/dev/null 2>&1; then return 0; fi
        kill -0 "${pid[$1]}" 2>/dev/null || { echo "$1 died; see $3" >&2; tail -5 "$3" >&2; exit 1; }
        sleep 0.5
    done
    echo "$1 did not come up in 300 s; see $3" >&2
    exit 1
}

bench() { # server tokenizer json-prefix args...
    local name="$1" tokenizer="$2" prefix="$3"
    shift 3
    "$FERROLLAMA_BIN" bench --base-url "http://127.0.0.1:${port[$name]}/v1" --model bench \
        --tokenizer "$tokenizer" --label "$name" --json "$prefix.json" --plot "$prefix.svg" "$@"
}

if [ "$quick" = 1 ]; then n_decode=1; n_streams=1; else n_decode=2; n_streams=2; fi

for model in ${models//,/ }; do
    gguf="$(model_path "$model")"
    for server in ferrollama "$peer"; do
        echo "== $model: starting $server ($gguf, $threads threads)" >&2
        start_server "$server" "$gguf" "$out/$model-$server.log"
    done
    # Short measures, in rounds that alternate which server goes first (ours, peer; peer,
    # ours; ...). Each round draws new prompts (its own seed), so no prompt cache helps.
    for r in $(seq "$rounds"); do
        if [ $((r % 2)) = 1 ]; then order="ferrollama $peer"; else order="$peer ferrollama"; fi
        for server in $order; do
            echo "== $model, round $r/$rounds: $server" >&2
            prefix="$out/$model-$server"
            # Single-stream decode: short prompts, long outputs, TPOT.
            bench "$server" "$gguf" "$prefix-decode-r$r" --concurrency 1 --num-prompts "$n_decode" \
                --input-len 32 --output-len 128 --warmup 1 --seed "$r"
            # Prompt processing: a 1,000-token prompt, one output token, prompt tokens / TTFT.
            bench "$server" "$gguf" "$prefix-prefill-r$r" --concurrency 1 --num-prompts 1 \
                --input-len 1000 --output-len 1 --warmup 1 --seed "$((100 + r))"
        done
    done
    # Aggregate throughput with 4 and 16 streams always in flight: long measures, once each.
    if [ "$peer" != llama-cpp-python ]; then
        for server in ferrollama "$peer"; do
            echo "== $model: 4 and 16 streams on $server" >&2
            bench "$server" "$gguf" "$out/$model-$server-streams" --concurrency 4,16 \
                --num-prompts $((16 * n_streams)) --input-len 64 --output-len 128 --warmup 1
        done
    fi
    stop_servers
    # Both servers on the same axes: single-stream decode (1) and the 4- and 16-stream levels.
    "$FERROLLAMA_BIN" bench --label "$model: ferrollama and $peer, $threads threads" \
        --plot "$out/$model-compare.svg" \
        --compare "$out/$model-ferrollama-decode-r1.json,$out/$model-ferrollama-streams.json,$out/$model-$peer-decode-r1.json$([ "$peer" = llama-cpp-python ] || echo ",$out/$model-$peer-streams.json")"
done

python3 - "$out" "$models" "$peer" "$peer_version" "$threads" "$rounds" <<'EOF' | tee "$out/summary.md"
import json, os, platform, statistics, sys
out, models, peer, peer_version, threads, rounds = sys.argv[1:]
rounds = int(rounds)

def level(model, server, kind, i=0):
    path = f"{out}/{model}-{server}-{kind}.json"
    if not os.path.exists(path):
        return None
    return json.load(open(path))["levels"][i]

def cpu():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()

def per_round(model, server, kind, f):
    return [f(level(model, server, f"{kind}-r{r}")) for r in range(1, rounds + 1)]

print(f"Machine: {cpu()}, {os.cpu_count()} cores; both servers on {threads} threads.")
print(f"Peer: {peer} ({peer_version}), extra flags: {os.environ.get('LLAMA_SERVER_ARGS') or 'none'}.")
print(f"Single-stream decode and prompt processing: medians of {rounds} interleaved rounds, "
      "and the median of the per-round ratios; 4 and 16 streams: one measure each.\n")
print("| model | measure | ferrollama | peer | ratio | per-round ratios |")
print("|---|---|---:|---:|---:|---|")
for model in models.split(","):
    ours_pp = None
    for name, kind, f in [
        ("single-stream decode (tok/s, 1000/TPOT)", "decode", lambda l: 1000 / l["tpot_ms"]["mean"]),
        ("prompt processing, 1,000 tokens (tok/s)", "prefill", lambda l: l["prefill_throughput"]),
    ]:
        ours, theirs = per_round(model, "ferrollama", kind, f), per_round(model, peer, kind, f)
        ratios = [a / b for a, b in zip(ours, theirs)]
        if kind == "prefill":
            ours_pp = statistics.median(ours)
        print(f"| {model} | {name} | {statistics.median(ours):.1f} | {statistics.median(theirs):.1f} | "
              f"{statistics.median(ratios):.2f}× | {', '.join(f'{x:.2f}' for x in ratios)} |")
    for name, i in [("4 streams, aggregate output (tok/s)", 0), ("16 streams, aggregate output (tok/s)", 1)]:
        ours, theirs = level(model, "ferrollama", "streams", i), level(model, peer, "streams", i)
        if ours is None:
            continue
        a = ours["output_throughput"]
        b = theirs["output_throughput"] if theirs else None
        ratio = f"{a / b:.2f}×" if b else "n/a (single-stream peer)"
        print(f"| {model} | {name} | {a:.1f} | {'' if b is None else f'{b:.1f}'} | {ratio} | |")
    sixteen = level(model, "ferrollama", "streams", 1)
    if sixteen and ours_pp:
        # Output tokens are two thirds of what these requests process (64-token prompts, 128
        # outputs), so the first ratio is capped near 0.67 when a decode token costs what a
        # prompt token does; the second counts every token processed.
        print(f"| {model} | ferrollama 16 streams, output / its own prompt processing | | | "
              f"{sixteen['output_throughput'] / ours_pp:.2f}× | |")
        print(f"| {model} | ferrollama 16 streams, every token / its own prompt processing | | | "
              f"{sixteen['total_token_throughput'] / ours_pp:.2f}× | |")
EOF
echo "results: $out" >&2
