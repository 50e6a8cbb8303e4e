#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, from the prebuilt binaries that
# benches/gpu/pack.sh put in gpu-bundle/ (no Rust, no network needed). At most ~8 minutes:
#   1. our kernels against CPU references (f32, f16, bf16 where built), every output written;
#   2. tiny-mistral on the GPU against the CPU, generic path and our kernels, f32/f16/bf16 and
#      a Q4_0 GGUF: logit errors, and where greedy tokens part, the position and top-2 gap;
#   3. Mistral-7B-shaped random weights, Q4_0 and f16, through `ferrollama serve` measured by
#      `ferrollama bench`: batch-1 decode beside the roofline of a device-to-device copy
#      measured in the same run, aggregate output tok/s at 8, 32 and 64 streams, and prefill
#      tok/s for a 2,000-token prompt.
# Prints a short table last; OUT_DIR gets every log and JSON.
#
#   benches/gpu/check.sh OUT_DIR
#
# CHECK_DEVICE=cpu CHECK_SHAPE=tiny runs the serving half on the CPU at a tiny shape: a dry
# run of the script itself where there is no GPU (its test rows then fail, as they should).
set -uo pipefail
out="${1:?usage: benches/gpu/check.sh OUT_DIR}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root" || exit 1
mkdir -p "$out"
bin=/tmp/ferrollama-gpu
mkdir -p "$bin"
for f in gpu-bundle/*.xz; do xz -dc "$f" >"$bin/$(basename "$f" .xz)"; done
chmod +x "$bin"/* 2>/dev/null
[ -x "$bin/ferrollama" ] || { echo "no gpu-bundle/: run benches/gpu/pack.sh first" >&2; exit 1; }
export FERROLLAMA_REQUIRE_GPU=1 RUST_BACKTRACE=1
table="$out/table.md"
echo "| check | result |" >"$table"
echo "|---|---|" >>"$table"
row() { echo "| $1 | $2 |" >>"$table"; }

nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
row "build" "$(cat gpu-bundle/BUILD)"
row "GPU" "$(tail -n 1 "$out/gpu.txt")"

# 1 and 2: the test binaries (tests run one at a time: one GPU).
for t in kernels gpu; do
  if timeout 240 "$bin/$t-test" --test-threads=1 --nocapture >"$out/$t-tests.log" 2>&1; then
    row "$t tests" "pass: $(grep -c '^test .* ok$' "$out/$t-tests.log") ok"
  else
    row "$t tests" "FAIL (see $t-tests.log): $(grep -m1 -E 'panicked|error' "$out/$t-tests.log" | cut -c1-120)"
  fi
done
grep -hE "worst relative|parts from|identical|exact" "$out"/kernels-tests.log "$out"/gpu-tests.log >"$out/accuracy.txt" || true

# 3: the roofline, then each weight format through the server.
"$bin/gpu-test" --ignored --exact device_copy_bandwidth --nocapture >"$out/bandwidth.log" 2>&1
gbps=$(grep -oE '[0-9]+ GB/s' "$out/bandwidth.log" | grep -oE '[0-9]+' || echo 0)
row "device-to-device copy" "$gbps GB/s"
# Bytes read per decoded token at the mistral-7b shape: every matrix once (the embedding only
# one row): 32 layers x (2*4096^2 + 2*4096*1024 + 3*4096*14336) + 32768*4096 weights.
params=$((32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 32768 * 4096))

port=11500
for format in q4_0 f16; do
  port=$((port + 1))
  log="$out/serve-$format.log"
  # f16 as on a T4, whatever this GPU could do.
  "$bin/ferrollama" serve --model "random:${CHECK_SHAPE:-mistral-7b}:$format" \
    --device "${CHECK_DEVICE:-cuda}" --dtype "${CHECK_DTYPE:-f16}" \
    --port "$port" --max-seqs 64 >"$log" 2>&1 &
  server=$!
  for _ in $(seq 300); do
    curl -fs "http://127.0.0.1:$port/api/version" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || break
    sleep 1
  done
  if ! curl -fs "http://127.0.0.1:$port/api/version" >/dev/null 2>&1; then
    row "$format serve" "FAIL: $(tail -n 2 "$log" | tr '\n' ' ' | cut -c1-160)"
    kill "$server" 2>/dev/null
    continue
  fi
  row "$format memory plan" "$(grep -m1 '^device:' "$log" | cut -c1-160)"
  bench() { # label, then bench flags
    local label=$1
    shift
    timeout 200 "$bin/ferrollama" bench --base-url "http://127.0.0.1:$port/v1" --warmup 1 \
      --json "$out/bench-$format-$label.json" "$@" >"$out/bench-$format-$label.log" 2>&1
  }
  metric() { # json, jq-free: the first value of a key
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@" 2>/dev/null || echo "n/a"
  }
  bench decode --concurrency 1 --num-prompts 4 --input-len 32 --output-len 128
  bench prefill --concurrency 1 --num-prompts 3 --input-len 2000 --output-len 1
  bench streams --concurrency 8,32,64 --input-len 128 --output-len 128
  bytes=$([ "$format" = q4_0 ] && echo $((params * 18 / 32)) || echo $((params * 2)))
  decode=$(metric "$out/bench-$format-decode.json" 'round(1000 / d["levels"][0]["tpot_ms"]["median"], 1)')
  roofline=$(python3 -c "print(round($gbps * 1e9 / $bytes, 1))")
  row "$format batch-1 decode" "$decode tok/s; roofline $roofline tok/s ($(python3 -c "print(round(100 * float('$decode') / $roofline))" 2>/dev/null || echo '?')%; goal >= 60% for q4_0)"
  row "$format prefill, 2,000 tokens" "$(metric "$out/bench-$format-prefill.json" 'round(d["levels"][0]["prefill_throughput"])') tok/s"
  streams64=$(metric "$out/bench-$format-streams.json" "round(d['levels'][2]['output_throughput'] / (1000 / json.load(open('$out/bench-$format-decode.json'))['levels'][0]['tpot_ms']['median']), 1)")
  row "$format 64 streams / batch 1" "${streams64}x (goal >= 25x for f16)"
  for i in 0 1 2; do
    row "$format streams level $i" "$(metric "$out/bench-$format-streams.json" "(d['levels'][$i]['load']['value'], round(d['levels'][$i]['output_throughput'], 1))") (streams, output tok/s)"
  done
  kill "$server" 2>/dev/null
  wait "$server" 2>/dev/null
done

echo
cat "$out/accuracy.txt"
echo
cat "$table"
