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
#   --quick         fewer requests per measurement (a smoke run, not a result)
#   --out DIR       where the JSON, SVG and summary.md go (default: a new dir under /tmp);
#                   MODEL-compare.svg draws both servers on the same axes
#
# Environment: FERROLLAMA_BIN (default: build it), LLAMA_SERVER, LLAMA_QUANTIZE,
# LLAMA_CPP_PYTHON_VENV, BENCH_VENV (python with gguf+numpy for the model script; made if missing), BENCH_MODELS_DIR.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ferrollama"
models="smollm2,q4_0,q8_0,q4_k_m"
threads="$(nproc)"
quick=0
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --models) models="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
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

port=18431
pid=""
stop_server() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
}
trap stop_server EXIT

# Both servers hold 16 sequences of up to 2048 tokens.
start_server() { # which gguf log
    # A leftover server on the port would be measured instead of ours.
    if curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; then
        echo "port $port is already in use; stop what listens there" >&2
        exit 1
    fi
    case "$1" in
        ferrollama)
            RAYON_NUM_THREADS="$threads" "$FERROLLAMA_BIN" serve --model "$2" --name bench \
                --host 127.0.0.1 --port "$port" --max-seqs 16 --kv-cache-memory 3GiB >"$3" 2>&1 &
            ;;
        llama-server)
            "$LLAMA_SERVER" -m "$2" --alias bench --host 127.0.0.1 --port "$port" \
                -t "$threads" -tb "$threads" -np 16 -c $((16 * 2048)) >"$3" 2>&1 &
            ;;
        llama-cpp-python)
            "$venv/bin/python" -m llama_cpp.server --model "$2" --model_alias bench \
                --host 127.0.0.1 --port "$port" --n_threads "$threads" \
                --n_threads_batch "$threads" --n_ctx 2048 >"$3" 2>&1 &
            ;;
    esac
    pid=$!
    for _ in $(seq 600); do
        if curl -fsS "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; then return 0; fi
        kill -0 "$pid" 2>/dev/null || { echo "$1 died; see $3" >&2; tail -5 "$3" >&2; exit 1; }
        sleep 0.5
    done
    echo "$1 did not come up in 300 s; see $3" >&2
    exit 1
}

bench() { # name tokenizer json-prefix args...
    local name="$1" tokenizer="$2" prefix="$3"
    shift 3
    "$FERROLLAMA_BIN" bench --base-url "http://127.0.0.1:$port/v1" --model bench \
        --tokenizer "$tokenizer" --label "$name" --json "$prefix.json" --plot "$prefix.svg" "$@"
}

if [ "$quick" = 1 ]; then n_decode=2; n_pp=1; n_streams=1; else n_decode=4; n_pp=3; n_streams=2; fi

for model in ${models//,/ }; do
    gguf="$(model_path "$model")"
    for server in ferrollama "$peer"; do
        echo "== $model on $server ($gguf, $threads threads)" >&2
        start_server "$server" "$gguf" "$out/$model-$server.log"
        prefix="$out/$model-$server"
        # Single-stream decode: short prompts, long outputs, TPOT.
        bench "$server" "$gguf" "$prefix-decode" --concurrency 1 --num-prompts "$n_decode" \
            --input-len 32 --output-len 128 --warmup 1
        # Prompt processing: a 1,000-token prompt, one output token, prompt tokens / TTFT.
        bench "$server" "$gguf" "$prefix-prefill" --concurrency 1 --num-prompts "$n_pp" \
            --input-len 1000 --output-len 1 --warmup 1
        if [ "$server" != llama-cpp-python ]; then
            # Aggregate throughput with 4 and 16 streams always in flight.
            bench "$server" "$gguf" "$prefix-streams" --concurrency 4,16 \
                --num-prompts $((16 * n_streams)) --input-len 64 --output-len 128 --warmup 1
        fi
        stop_server
    done
    # Both servers on the same axes: single-stream decode (1) and the 4- and 16-stream levels.
    "$FERROLLAMA_BIN" bench --label "$model: ferrollama and $peer, $threads threads" \
        --plot "$out/$model-compare.svg" \
        --compare "$out/$model-ferrollama-decode.json,$out/$model-ferrollama-streams.json,$out/$model-$peer-decode.json$([ "$peer" = llama-cpp-python ] || echo ",$out/$model-$peer-streams.json")"
done

python3 - "$out" "$models" "$peer" "$peer_version" "$threads" <<'EOF' | tee "$out/summary.md"
import json, os, platform, sys
out, models, peer, peer_version, threads = sys.argv[1:]

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

print(f"Machine: {cpu()}, {os.cpu_count()} cores; both servers on {threads} threads.")
print(f"Peer: {peer} ({peer_version}).\n")
print("| model | measure | ferrollama | peer | ratio |")
print("|---|---|---:|---:|---:|")
for model in models.split(","):
    rows = [
        ("single-stream decode (tok/s, 1000/TPOT)", "decode", 0, lambda l: 1000 / l["tpot_ms"]["mean"]),
        ("prompt processing, 1,000 tokens (tok/s)", "prefill", 0, lambda l: l["prefill_throughput"]),
        ("4 streams, aggregate output (tok/s)", "streams", 0, lambda l: l["output_throughput"]),
        ("16 streams, aggregate output (tok/s)", "streams", 1, lambda l: l["output_throughput"]),
    ]
    ours_pp = None
    for name, kind, i, f in rows:
        ours, theirs = level(model, "ferrollama", kind, i), level(model, peer, kind, i)
        if ours is None:
            continue
        a = f(ours)
        if kind == "prefill":
            ours_pp = a
        b = f(theirs) if theirs else None
        ratio = f"{a / b:.2f}×" if b else "n/a (single-stream peer)"
        print(f"| {model} | {name} | {a:.1f} | {'' if b is None else f'{b:.1f}'} | {ratio} |")
    sixteen = level(model, "ferrollama", "streams", 1)
    if sixteen and ours_pp:
        print(f"| {model} | ferrollama 16 streams / its own prompt processing | | | "
              f"{sixteen['output_throughput'] / ours_pp:.2f}× |")
EOF
echo "results: $out" >&2
