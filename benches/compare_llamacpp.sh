#!/usr/bin/env bash
# ferrollama and llama.cpp-family servers side by side on the same GGUF, the same thread count
# and the same context, measured in one run by `ferrollama bench`, reported as ratios against
# each peer.
#
#   PEERS="llama.cpp=/path/llama-server ik_llama.cpp=/other/llama-server" \
#   IK_LLAMA_CPP_ARGS="-rtr" benches/compare_llamacpp.sh [options]
#
# Peers are native `llama-server` builds (continuous batching over -np slots), given as
# NAME=PATH in $PEERS; each one's own best flags in $<NAME>_ARGS (the name upper-cased, every
# other character `_`: LLAMA_CPP_ARGS, IK_LLAMA_CPP_ARGS). This script never builds them.
# $LLAMA_SERVER (and $LLAMA_SERVER_ARGS) alone is the one peer `llama.cpp`. With no peer at all
# it falls back to the PyPI llama-cpp-python server in $LLAMA_CPP_PYTHON_VENV, which serves one
# request at a time and is therefore compared on single streams only.
#
# Options:
#   --models LIST   any of smollm2,q4_0,q8_0,q4_k_m,7b_q4_0 (default: the first four). smollm2
#                   is SmolLM2-135M Q4_1 from PyPI; q4_0, q8_0 and q4_k_m a random 1.3B Mistral
#                   made by models/make_bench_gguf.py (cached in $BENCH_MODELS_DIR); 7b_q4_0 the
#                   same at Mistral-7B's shape (4 GB; slow to make and to run). q4_k_m is the
#                   F16 file through llama.cpp's llama-quantize ($LLAMA_QUANTIZE, default: beside
#                   the first peer), so it needs a llama.cpp build.
#   --threads N     threads for every server (default: every core)
#   --rounds N      single-stream decode and prompt processing are measured N times per server
#                   (default 10; one request each), the servers' order turning each round, with
#                   every server up; the table gives medians and the median of the per-round
#                   ratios, so a drift of the host's speed during the run hits all servers alike
#   --stream-rounds N  the 4- and 16-stream aggregate throughputs are measured N times per
#                   server the same way (default 3; each measure is 32 requests, a minute or
#                   more on 2 cores): in a round every server's 16 streams run back to back,
#                   then every server's 4 streams
#   --stream-requests N  requests in each 4- and 16-stream measure (default 32; 16 is one
#                   wave of 16 streams, for the 7B shape on 2 cores)
#   --quick         fewer requests per measurement (a smoke run, not a result)
#   --out DIR       where the JSON, SVG and summary.md go (default: a new dir under /tmp);
#                   MODEL-compare.svg draws every server on the same axes
#
# Environment: FERROLLAMA_BIN (default: build it), PEERS, <NAME>_ARGS, LLAMA_SERVER,
# LLAMA_SERVER_ARGS, LLAMA_QUANTIZE, LLAMA_CPP_PYTHON_VENV, BENCH_VENV (python with gguf+numpy
# for the model script; made if missing), BENCH_MODELS_DIR.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ferrollama"
models="smollm2,q4_0,q8_0,q4_k_m"
threads="$(nproc)"
quick=0
rounds=10
stream_rounds=3
stream_requests=""
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --models) models="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --stream-rounds) stream_rounds="$2"; shift 2 ;;
        --stream-requests) stream_requests="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done
out="${out:-$(mktemp -d /tmp/ferrollama-compare.XXXXXX)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if [ -z "${FERROLLAMA_BIN:-}" ]; then
    (cd "$root" && cargo build --release --bin ferrollama)
    FERROLLAMA_BIN="${CARGO_TARGET_DIR:-$root/target}/release/ferrollama"
fi

# Peers: name -> binary, flags and version; in the order given.
declare -A peer_bin=() peer_args=() peer_version=()
peers=()
if [ -z "${PEERS:-}" ] && [ -n "${LLAMA_SERVER:-}" ]; then
    PEERS="llama.cpp=$LLAMA_SERVER"
    LLAMA_CPP_ARGS="${LLAMA_CPP_ARGS:-${LLAMA_SERVER_ARGS:-}}"
fi
for entry in ${PEERS:-}; do
    name="${entry%%=*}" bin="${entry#*=}"
    [ -x "$bin" ] || { echo "peer $name: $bin is not executable" >&2; exit 1; }
    bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")" # it starts from $out
    flags_var="$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]' | tr -c 'A-Z0-9' '_')_ARGS"
    peers+=("$name")
    peer_bin[$name]="$bin"
    peer_args[$name]="${!flags_var:-}"
    peer_version[$name]="$("$bin" --version 2>&1 | grep -m1 -i 'version' || true)"
done
venv="${LLAMA_CPP_PYTHON_VENV:-$cache/llama-cpp-python}"
if [ ${#peers[@]} = 0 ]; then
    if [ ! -x "$venv/bin/python" ]; then
        echo "No peer: installing llama-cpp-python's server into $venv (builds llama.cpp; slow)" >&2
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'llama-cpp-python[server]==0.3.36'
    peers=(llama-cpp-python)
    peer_version[llama-cpp-python]="llama-cpp-python $("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
fi
servers=(ferrollama "${peers[@]}")

bench_gguf() { # type path [shape]: writes a random Mistral in a GGUF type
    local py="${BENCH_VENV:-$cache/bench-venv}"
    [ -x "$py/bin/python" ] || python3 -m venv "$py" >&2
    "$py/bin/pip" install --quiet --disable-pip-version-check -r "$root/models/requirements-bench.txt" >&2
    "$py/bin/python" "$root/models/make_bench_gguf.py" --type "$1" --out "$2" \
        --shape "${3:-mistral-1b}" >&2
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
        7b_q4_0)
            local path="$dir/mistral-7b-q4_0.gguf"
            [ -f "$path" ] || bench_gguf q4_0 "$path" mistral-7b
            echo "$path" ;;
        q4_k_m)
            local path="$dir/mistral-1b-q4_k_m.gguf"
            if [ ! -f "$path" ]; then
                local first="${peers[0]}"
                local quantize="${LLAMA_QUANTIZE:-$(dirname "${peer_bin[$first]:-/nonexistent}")/llama-quantize}"
                [ -x "$quantize" ] || { echo "q4_k_m needs llama.cpp's llama-quantize: set LLAMA_QUANTIZE" >&2; exit 1; }
                [ -f "$dir/mistral-1b-f16.gguf" ] || bench_gguf f16 "$dir/mistral-1b-f16.gguf"
                "$quantize" "$dir/mistral-1b-f16.gguf" "$path.partial" Q4_K_M >&2
                mv "$path.partial" "$path"
            fi
            echo "$path" ;;
        *) echo "unknown model $1 (smollm2, q4_0, q8_0, q4_k_m, 7b_q4_0)" >&2; exit 2 ;;
    esac
}

# Every server stays up for the whole model, on its own port, so their measures can alternate.
declare -A port=() pid=()
for i in "${!servers[@]}"; do port[${servers[$i]}]=$((18431 + i)); done
stop_servers() {
    for server in "${!pid[@]}"; do
        kill "${pid[$server]}" 2>/dev/null || true
        wait "${pid[$server]}" 2>/dev/null || true
    done
    pid=()
}
trap stop_servers EXIT

# Every server holds 16 sequences of up to $seq_ctx tokens: 2048, or 1024 for the 7B shape, so
# that three 7B servers fit in 24 GiB (each llama.cpp-family peer clears its whole f16 KV cache
# at start: 4 GiB at 16 x 2048 for this shape; every measure needs at most 1,001 tokens).
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
        llama-cpp-python)
            "$venv/bin/python" -m llama_cpp.server --model "$2" --model_alias bench \
                --host 127.0.0.1 --port "$p" --n_threads "$threads" \
                --n_threads_batch "$threads" --n_ctx "$seq_ctx" >"$3" 2>&1 &
            ;;
        *)
            # From the results directory: some builds write a llama.log where they start.
            # shellcheck disable=SC2086 # the peer's flags are a list
            (cd "$out" && exec "${peer_bin[$1]}" -m "$2" --alias bench --host 127.0.0.1 \
                --port "$p" -t "$threads" -tb "$threads" -np 16 -c $((16 * seq_ctx)) \
                ${peer_args[$1]} >"$3" 2>&1) &
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

stream_requests="${stream_requests:-$((quick ? 16 : 32))}"

# Round r's order of the servers given: the list turned r - 1 places (a, b, c; b, c, a; ...).
turned() { # round server...
    local r="$1"
    shift
    local servers=("$@") i
    for i in "${!servers[@]}"; do echo "${servers[$(((i + r - 1) % $#))]}"; done
}

for model in ${models//,/ }; do
    gguf="$(model_path "$model")"
    if [ "$model" = 7b_q4_0 ]; then seq_ctx=1024; else seq_ctx=2048; fi
    for server in "${servers[@]}"; do
        echo "== $model: starting $server ($gguf, $threads threads)" >&2
        start_server "$server" "$gguf" "$out/$model-$server.log"
    done
    # Short measures, in rounds whose order turns (a, b, c; b, c, a; ...). Each round draws new
    # prompts (its own seed), so no prompt cache helps. In a round every server's decode runs
    # back to back, then every server's prompt: the VM's memory bandwidth drifts within a
    # minute, and the ratio of a round compares measures seconds apart. Only the first round
    # warms up.
    for r in $(seq "$rounds"); do
        mapfile -t order < <(turned "$r" "${servers[@]}")
        warmup=$((r == 1 ? 1 : 0))
        for server in "${order[@]}"; do
            echo "== $model, round $r/$rounds: $server, one stream" >&2
            # Single-stream decode: a short prompt, a long output, TPOT.
            bench "$server" "$gguf" "$out/$model-$server-decode-r$r" --concurrency 1 \
                --num-prompts 1 --input-len 32 --output-len 128 --warmup "$warmup" --seed "$r"
        done
        for server in "${order[@]}"; do
            echo "== $model, round $r/$rounds: $server, 1,000-token prompt" >&2
            # Prompt processing: a 1,000-token prompt, one output token, prompt tokens / TTFT.
            bench "$server" "$gguf" "$out/$model-$server-prefill-r$r" --concurrency 1 \
                --num-prompts 1 --input-len 1000 --output-len 1 --warmup "$warmup" \
                --seed "$((100 + r))"
        done
    done
    # Aggregate throughput with 16 and 4 streams always in flight, in turning rounds like the
    # above: a single long measure per server read 0.93x one evening and 1.21x another, as the
    # host's bandwidth drifted between two servers measured minutes apart.
    stream_servers=()
    for server in "${servers[@]}"; do
        [ "$server" = llama-cpp-python ] || stream_servers+=("$server")
    done
    for r in $(seq "$stream_rounds"); do
        mapfile -t order < <(turned "$r" "${stream_servers[@]}")
        for streams in 16 4; do
            for server in "${order[@]}"; do
                echo "== $model, stream round $r/$stream_rounds: $server, $streams streams" >&2
                bench "$server" "$gguf" "$out/$model-$server-streams$streams-r$r" \
                    --concurrency "$streams" --num-prompts "$stream_requests" --input-len 64 \
                    --output-len 128 --warmup "$((r == 1 ? 1 : 0))" --seed "$((100 * streams + r))"
            done
        done
    done
    compared=()
    for server in "${servers[@]}"; do
        compared+=("$out/$model-$server-decode-r1.json")
        [ "$server" = llama-cpp-python ] && continue
        compared+=("$out/$model-$server-streams4-r1.json" "$out/$model-$server-streams16-r1.json")
    done
    stop_servers
    # Every server on the same axes: single-stream decode (1) and the 4- and 16-stream levels.
    "$FERROLLAMA_BIN" bench --label "$model: ${servers[*]}, $threads threads" \
        --plot "$out/$model-compare.svg" --compare "$(IFS=,; echo "${compared[*]}")"
done

peer_list=""
for name in "${peers[@]}"; do
    peer_list+="$name	${peer_version[$name]}	${peer_args[$name]:-}
"
done

python3 "$root/benches/compare_summary.py" "$out" "$models" "$threads" "$rounds" \
    "$stream_rounds" "$peer_list" \
    | tee "$out/summary.md"
echo "results: $out" >&2
