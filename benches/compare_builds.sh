#!/usr/bin/env bash
# Two builds of ferrollama side by side in one run: the baseline and the candidate each serve
# the same model in turn (one at a time, so neither takes the other's cores), measured by
# `ferrollama bench` with the same arguments, in interleaved rounds that alternate which goes
# first. Prints, per concurrency level, each build's output tokens/s and 1000 / mean TPOT
# (rounds and median) and the median of the per-round ratios (candidate / baseline).
#
#   benches/compare_builds.sh BASELINE_BIN CANDIDATE_BIN [--rounds N] [--model PATH]
#       [--threads N] [--out DIR] -- BENCH_ARGS...
#
#   e.g. the sampler at OpenAI's defaults (temperature 1, no top-k):
#   benches/compare_builds.sh /tmp/ferrollama-old target/release/ferrollama -- \
#       --concurrency 1,16 --temperature 1 --input-len 64 --output-len 128
#
# Default model: SmolLM2-135M-Instruct Q4_1 (from PyPI); servers run without the prefix cache.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 2 ] || { sed -n '2,14p' "$0"; exit 2; }
baseline="$1" candidate="$2"
shift 2
rounds=3 model="" threads="$(nproc)" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option: $1 (bench arguments go after --)" >&2; exit 2 ;;
  esac
done
model="${model:-$("$root/models/smollm2-path.sh")}"
out="${out:-$(mktemp -d /tmp/ferrollama-builds.XXXXXX)}"
mkdir -p "$out"
port=$((12000 + RANDOM % 2000))

measure() { # label binary round bench-args...
  local label=$1 bin=$2 round=$3
  shift 3
  "$bin" serve --model "$model" --name m --port "$port" --threads "$threads" \
    --no-prefix-caching >"$out/serve-$label-r$round.log" 2>&1 &
  local pid=$!
  for _ in $(seq 120); do
    curl -fs "http://127.0.0.1:$port/api/version" >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$candidate" bench --base-url "http://127.0.0.1:$port/v1" --model m --label "$label" \
    --json "$out/$label-r$round.json" "$@" >"$out/$label-r$round.log" 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  if [ $((round % 2)) = 1 ]; then order="baseline candidate"; else order="candidate baseline"; fi
  for label in $order; do
    if [ "$label" = baseline ]; then bin="$baseline"; else bin="$candidate"; fi
    measure "$label" "$bin" "$round" "$@"
  done
done

python3 - "$out" "$rounds" <<'EOF' | tee "$out/summary.md"
import json, pathlib, statistics, sys
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
runs = {label: [json.loads((out / f"{label}-r{r}.json").read_text())["levels"]
                for r in range(1, rounds + 1)] for label in ("baseline", "candidate")}
print("| load | measure | baseline (rounds) | candidate (rounds) | ratio, median of rounds |")
print("|---|---|---|---|---:|")
for i, level in enumerate(runs["baseline"][0]):
    for name, get in [("output tok/s", lambda l: l["output_throughput"]),
                      ("1000 / mean TPOT", lambda l: 1000 / l["tpot_ms"]["mean"])]:
        b = [get(r[i]) for r in runs["baseline"]]
        c = [get(r[i]) for r in runs["candidate"]]
        ratio = statistics.median(x / y for x, y in zip(c, b))
        fmt = lambda xs: f"{statistics.median(xs):.1f} ({', '.join(f'{x:.1f}' for x in xs)})"
        load = f"{level['load']['mode']} {level['load']['value']}"
        print(f"| {load} | {name} | {fmt(b)} | {fmt(c)} | {ratio:.2f}x |")
EOF
echo "logs and JSON: $out" >&2
