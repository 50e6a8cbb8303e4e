#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, from the prebuilt binaries that
# benches/gpu/pack.sh put in gpu-bundle/ (no Rust, no network needed). At most ~8 minutes:
#   1. our kernels against CPU references (f32, f16, bf16 where built) and the mma fragment
#      layouts against the hardware's; compute-sanitizer memcheck and racecheck over them;
#   2. tiny-mistral on the GPU against the CPU (generic path and our kernels, f32/f16/bf16) and
#      a Q4_0 GGUF against its exact reference (the weights dequantized to f32);
#   3. the same kernel and model tests from the sm_75 bundle (the T4's code path: its PTX runs
#      here through the driver's JIT; correctness, not the T4's speed);
#   4. the attention kernels' micro-benchmark (CUDA events) beside the device copy bandwidth;
#   5. Mistral-7B-shaped random weights, Q4_0 and f16, through `ferrollama serve` measured by
#      `ferrollama bench` with exact token lengths: batch-1 decode beside its roofline, decode
#      at 1k/3k/8k context, prefill of 2k/3k/8k-token prompts, 64 streams (greedy, and Q4_0
#      sampled at OpenAI's defaults), 16 x 1,000-token streams.
# Prints the table last (each row beside its target and the first run's figure); OUT_DIR gets
# the table, this run's output and one archive of every log and JSON (at most 8 files).
#
#   benches/gpu/check.sh OUT_DIR
#
# CHECK_DEVICE=cpu CHECK_SHAPE=tiny runs the serving half on the CPU at a tiny shape (f32): a
# dry run of the script itself where there is no GPU (its GPU rows then fail, as they should).
set -uo pipefail
out="${1:?usage: benches/gpu/check.sh OUT_DIR}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root" || exit 1
mkdir -p "$out"
out="$(cd "$out" && pwd)"
logs="$(mktemp -d)/logs"
mkdir -p "$logs"
exec > >(tee "$out/check.log") 2>&1
budget=${CHECK_BUDGET_S:-460}  # seconds for everything; sections skip rather than overrun
device="${CHECK_DEVICE:-cuda}"
# f16 as on a T4 on a GPU, whatever it could do; f32 in a CPU dry run (native CPU attention).
dtype="${CHECK_DTYPE:-$([ "$device" = cpu ] && echo f32 || echo f16)}"
shape="${CHECK_SHAPE:-mistral-7b}"
tokenizer="$root/models/fixtures/tiny-mistral/tokenizer.json"

table="$out/table.md"
{
  echo "| check | result | target | first run (08f1187, H200) |"
  echo "|---|---|---|---|"
} >"$table"
row() { echo "| $1 | $2 | ${3:-} | ${4:-} |" >>"$table"; }
left() { echo $((budget - SECONDS)); }
finish() {
  tar -C "$(dirname "$logs")" -cf "$out/logs.tar" logs
  if command -v xz >/dev/null; then xz -f -T0 "$out/logs.tar"; else gzip -f "$out/logs.tar"; fi
  echo
  cat "$table"
  exit "${1:-0}"
}

# ---- tools with fallbacks: xz or python's lzma; curl or python's urllib ----
unpack() { # file.xz -> stdout
  if command -v xz >/dev/null; then
    xz -dc "$1"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"
  fi
}
http_ok() {
  if command -v curl >/dev/null; then
    curl -fs -m 2 "$1" >/dev/null 2>&1
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" >/dev/null 2>&1
  fi
}

# ---- the binaries ----
bin=$(mktemp -d)
for bundle in sm90 sm75; do
  [ -d "gpu-bundle/$bundle" ] || continue
  mkdir -p "$bin/$bundle"
  for f in gpu-bundle/"$bundle"/*.xz; do unpack "$f" >"$bin/$bundle/$(basename "$f" .xz)"; done
  chmod +x "$bin/$bundle"/*
done
[ -x "$bin/sm90/ferrollama" ] || { echo "no gpu-bundle/sm90: run benches/gpu/pack.sh first" >&2; exit 1; }
row "build" "$(cat gpu-bundle/BUILD 2>/dev/null)"

# ---- the CUDA libraries: LD_LIBRARY_PATH, else an NVIDIA pip wheel's nvidia/cu13/lib in any
# python3's site-packages, else /usr/local/cuda; the driver's libcuda where it usually is ----
has_cudart() { [ -e "$1/libcudart.so.13" ]; }
cuda_lib=""
IFS=: read -ra search <<<"${LD_LIBRARY_PATH:-}"
for d in "${search[@]}"; do has_cudart "$d" && cuda_lib="$d" && break; done
if [ -z "$cuda_lib" ]; then
  for py in $(command -v -a python3 2>/dev/null) /usr/bin/python3 /opt/*/bin/python3 /opt/*/*/bin/python3 /usr/local/bin/python3; do
    [ -x "$py" ] || continue
    d=$("$py" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null)
    [ -n "$d" ] && has_cudart "$d" && cuda_lib="$d" && break
  done
fi
if [ -z "$cuda_lib" ]; then
  d=$(find /opt /usr/local /usr/lib /root /home -maxdepth 9 -name libcudart.so.13 -path '*nvidia/cu13/lib/*' 2>/dev/null | head -n 1)
  [ -n "$d" ] && cuda_lib=$(dirname "$d")
fi
[ -z "$cuda_lib" ] && has_cudart /usr/local/cuda/lib64 && cuda_lib=/usr/local/cuda/lib64
export LD_LIBRARY_PATH="${cuda_lib:+$cuda_lib:}${LD_LIBRARY_PATH:-}"
[ -d /usr/local/nvidia/lib64 ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/usr/local/nvidia/lib64"
echo "CUDA libraries: ${cuda_lib:-none found}"
missing=$(for f in "$bin"/*/*; do ldd "$f" 2>&1 | grep 'not found' | sed "s|^|$(basename "$(dirname "$f")")/$(basename "$f"): |"; done | sort -u)
if [ -n "$missing" ]; then
  echo "$missing"
  row "libraries" "FAIL: $(echo "$missing" | tr '\n' ';' | cut -c1-200)"
  finish 1
fi
row "libraries" "${cuda_lib:-system}"

export FERROLLAMA_REQUIRE_GPU=1 RUST_BACKTRACE=1
if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv >"$logs/gpu.txt" 2>&1
  row "GPU" "$(tail -n 1 "$logs/gpu.txt")"
fi

# ---- 1-3: tests (one at a time: one GPU) ----
tests() { # label, binary, then test args
  local label=$1 binary=$2 log="$logs/$1.log"
  shift 2
  if timeout 200 "$binary" --test-threads=1 --nocapture "$@" >"$log" 2>&1; then
    row "$label" "pass: $(grep -c '^test .* ok$' "$log") ok"
  else
    row "$label" "FAIL: $(grep -m1 -A1 -E 'panicked|error|FAILED' "$log" | tr '\n|' '  ' | cut -c1-220)"
  fi
}
tests "kernel tests sm_90" "$bin/sm90/kernels-test"
tests "model tests sm_90" "$bin/sm90/gpu-test"
if [ -x "$bin/sm75/kernels-test" ]; then
  tests "kernel tests sm_75 (PTX JIT)" "$bin/sm75/kernels-test"
  tests "model tests sm_75 (PTX JIT)" "$bin/sm75/gpu-test"
else
  row "sm_75 bundle" "missing"
fi
grep -hE "worst relative|parts from|identical|exact" "$logs"/*tests*.log >"$logs/accuracy.txt" 2>/dev/null
q4=$(grep -hoE 'Q4_0 cuda [A-Za-z0-9]+: worst relative logit error against the exact reference [0-9.e-]+ \(CPU [0-9.e-]+' "$logs/model tests sm_90.log" |
  sed -E 's/: worst relative logit error against the exact reference/:/' | tr '\n' ';')
row "Q4_0 logit error vs its exact reference" "${q4:-n/a}" "GPU <= 2x CPU (+ the dtype's own)" "1.7e-2 (f32) / 2.3e-2 (f16) against the CPU"

sanitizer=""
for s in /usr/local/cuda/bin/compute-sanitizer "$(command -v compute-sanitizer 2>/dev/null)"; do
  [ -x "$s" ] && sanitizer=$s && break
done
if [ -n "$sanitizer" ] && [ "$(left)" -gt 300 ]; then
  # memcheck over every kernel test, racecheck over the attention kernels (the ones with shared
  # memory), small cases: every access is checked, so big ones would take minutes.
  for tool in memcheck racecheck; do
    filter=$([ "$tool" = racecheck ] && echo attention || echo "")
    FERROLLAMA_SMALL_KERNEL_TESTS=1 timeout 100 "$sanitizer" --tool "$tool" --error-exitcode 3 \
      "$bin/sm90/kernels-test" --test-threads=1 "$filter" >"$logs/sanitizer-$tool.log" 2>&1
    status=$?
    summary=$(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$logs/sanitizer-$tool.log")
    case $status in
      0) row "compute-sanitizer $tool" "${summary:-clean}" "0 errors" "memcheck 0 errors" ;;
      124) row "compute-sanitizer $tool" "timed out (100 s)" "0 errors" ;;
      *) row "compute-sanitizer $tool" "FAIL ($status): ${summary:-see log}" "0 errors" ;;
    esac
  done
else
  row "compute-sanitizer" "skipped (${sanitizer:-not found}; $(left) s left)"
fi

# ---- 4: bandwidth roofline and the kernels' speed ----
"$bin/sm90/gpu-test" --ignored --exact device_copy_bandwidth --nocapture >"$logs/bandwidth.log" 2>&1
gbps=$(grep -oE '[0-9]+ GB/s' "$logs/bandwidth.log" | grep -oE '[0-9]+' | head -n 1)
gbps=${gbps:-0}
row "device-to-device copy" "$gbps GB/s" "" "3,120 GB/s"
timeout 120 "$bin/sm90/kernels-test" --ignored --exact attention_kernel_benchmark --nocapture >"$logs/attention-benchmark.log" 2>&1
while read -r line; do
  case "$line" in
    "decode attention"*)
      kv=$(echo "$line" | grep -oE '[0-9]+ GB/s' | grep -oE '[0-9]+')
      pct=$([ "$gbps" -gt 0 ] && echo "$((100 * ${kv:-0} / gbps))%" || echo "?")
      row "${line%%:*}" "${line#*: } = $pct of copy" ">= 60% of copy" "2.7 ms/token at 3k (whole step)" ;;
    "prompt attention"*) row "${line%%:*}" "${line#*: }" ;;
  esac
done < <(grep -E "^(decode|prompt) attention" "$logs/attention-benchmark.log")
[ -s "$logs/attention-benchmark.log" ] && ! grep -q "^decode attention" "$logs/attention-benchmark.log" &&
  row "attention micro-benchmark" "FAIL: $(grep -m1 -A1 -E 'panicked|error' "$logs/attention-benchmark.log" | tr '\n|' '  ' | cut -c1-220)"

# ---- 5: serving ----
# Bytes read per decoded token at the mistral-7b shape: every matrix once (the embedding only
# one row): 32 layers x (2*4096^2 + 2*4096*1024 + 3*4096*14336) + 32768*4096 weights.
params=$((32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 32768 * 4096))
value() { # a JSON file, then the keys down to one number: value F levels 0 tpot_ms median
  python3 - "$@" 2>/dev/null <<'PY' || echo "n/a"
import json, sys
d = json.load(open(sys.argv[1]))
for key in sys.argv[2:]:
    d = d[int(key)] if isinstance(d, list) else d[key]
print(round(d, 1) if isinstance(d, float) else d)
PY
}
per_second() { # milliseconds per token -> tokens per second
  python3 -c 'import sys; print(round(1000 / float(sys.argv[1]), 1))' "$1" 2>/dev/null || echo "n/a"
}
port=11500
for format in q4_0 f16; do
  if [ "$(left)" -lt 90 ]; then
    row "$format serving" "skipped: $(left) s left of the budget"
    continue
  fi
  port=$((port + 1))
  log="$logs/serve-$format.log"
  "$bin/sm90/ferrollama" serve --model "random:$shape:$format" --device "$device" \
    --dtype "$dtype" --port "$port" --max-seqs 64 >"$log" 2>&1 &
  server=$!
  for _ in $(seq 240); do
    http_ok "http://127.0.0.1:$port/api/version" && break
    kill -0 "$server" 2>/dev/null || break
    sleep 1
  done
  if ! http_ok "http://127.0.0.1:$port/api/version"; then
    row "$format serve" "FAIL: $(tail -n 2 "$log" | tr '\n' ' ' | cut -c1-160)"
    kill "$server" 2>/dev/null
    continue
  fi
  row "$format memory plan" "$(grep -m1 '^loaded ' "$log" | cut -c1-200)"
  bench() { # label, then bench flags
    local label=$1
    shift
    timeout 150 "$bin/sm90/ferrollama" bench --base-url "http://127.0.0.1:$port/v1" --warmup 1 \
      --tokenizer "$tokenizer" --json "$logs/bench-$format-$label.json" "$@" \
      >"$logs/bench-$format-$label.log" 2>&1
  }
  j="$logs/bench-$format"
  bench decode --concurrency 1 --num-prompts 4 --input-len 32 --output-len 128
  bytes=$([ "$format" = q4_0 ] && echo $((params * 18 / 32)) || echo $((params * 2)))
  decode=$(per_second "$(value "$j-decode.json" levels 0 tpot_ms median)")
  roofline=$(python3 -c "print(round(${gbps:-0} * 1e9 / $bytes, 1))")
  pct=$(python3 -c "print(round(100 * float('$decode') / $roofline))" 2>/dev/null || echo '?')
  if [ "$format" = q4_0 ]; then
    row "q4_0 batch-1 decode" "$decode tok/s ($pct% of the $roofline tok/s roofline)" ">= 300 tok/s" "149 tok/s"
  else
    row "f16 batch-1 decode" "$decode tok/s ($pct% of the $roofline tok/s roofline)" ">= 180 tok/s" "134 tok/s"
  fi
  # One request per context at a time: its TTFT is the prefill, its TPOT decode at that context.
  for context in 1000 2000 3000 8000; do
    [ "$(left)" -lt 60 ] && { row "$format context $context" "skipped: time"; continue; }
    bench "context-$context" --concurrency 1 --num-prompts 2 --input-len "$context" --output-len 64
  done
  declare -A first_tpot=([1000]="8.1 ms" [3000]="9.4 ms" [8000]="10.3 ms")
  declare -A first_prefill=([2000]="1,913 tok/s" [3000]="1,377 tok/s" [8000]="570 tok/s")
  [ "$format" = f16 ] && first_prefill=([2000]="2,208 tok/s")
  for context in 2000 3000 8000; do
    case $context in
      2000) target=">= 10,000 tok/s" ;;
      8000) target=">= 8,000 tok/s (TTFT ~1 s)" ;;
      *) target="" ;;
    esac
    f="$j-context-$context.json"
    row "$format prefill, $context tokens" \
      "$(value "$f" levels 0 prefill_throughput) tok/s, TTFT $(value "$f" levels 0 ttft_ms median) ms" \
      "$target" "${first_prefill[$context]:-}"
  done
  if [ "$format" = q4_0 ]; then
    for context in 1000 3000 8000; do
      row "q4_0 batch-1 TPOT at $context context" \
        "$(value "$j-context-$context.json" levels 0 tpot_ms median) ms" "" "${first_tpot[$context]}"
    done
  fi
  [ "$(left)" -gt 45 ] && bench streams64 --concurrency 64 --num-prompts 128 --input-len 128 --output-len 128
  row "$format 64 streams, 128 in / 128 out" \
    "$(value "$j-streams64.json" levels 0 output_throughput) tok/s output" \
    ">= 5,000 tok/s" "$([ "$format" = q4_0 ] && echo "1,989 tok/s" || echo "3,113 tok/s")"
  # OpenAI's defaults (temperature 1, no top-k): rows come back as a head and a normalizer.
  if [ "$format" = q4_0 ] && [ "$(left)" -gt 90 ]; then
    bench sampled64 --concurrency 64 --num-prompts 128 --input-len 128 --output-len 128 \
      --temperature 1
    row "q4_0 64 streams sampled, temperature 1, no top-k" \
      "$(value "$j-sampled64.json" levels 0 output_throughput) tok/s output, $(value "$j-sampled64.json" levels 0 failed) failed" \
      ">= 0.9x the greedy row, 0 failed"
  fi
  [ "$(left)" -gt 45 ] && bench long16 --concurrency 16 --num-prompts 32 --input-len 1000 --output-len 256
  row "$format 16 streams x 1,000 in, 256 out" \
    "TPOT $(value "$j-long16.json" levels 0 tpot_ms median) ms, $(value "$j-long16.json" levels 0 output_throughput) tok/s" \
    "TPOT <= 12 ms" "$([ "$format" = q4_0 ] && echo "TPOT 29.6 ms, 392 tok/s")"
  kill "$server" 2>/dev/null
  wait "$server" 2>/dev/null
done

echo
cat "$logs/accuracy.txt" 2>/dev/null
row "check time" "$SECONDS s" "<= 480 s"
finish 0
