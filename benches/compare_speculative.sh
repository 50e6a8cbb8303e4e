#!/usr/bin/env bash
# Speculative decoding on against off, side by side in one run: two `ferrollama serve` of the
# same model (one `--speculative ngram`, one `--speculative off`), both up, measured by
# `ferrollama bench` on the committed workloads (benches/workloads: code editing,
# summarisation, free writing; greedy, replies ending at the model's end token) in interleaved
# rounds, alternating which server goes first. Both run without the prefix cache, so every
# round reads its prompts afresh, as new code-generation requests do. Reports, per server, the
# decode speed a client sees (1000 / mean TPOT, tokens/s after the first) and the output
# tokens/s over the whole run (prefill included), the medians of the per-round ratios, and the
# share of drafted tokens kept; then sends every request of the sets to both servers, greedy and
# seeded-sampled, and counts the replies that are the same (SPEC_IDENTITY=0 skips that).
#
#   benches/compare_speculative.sh [--model PATH] [--rounds N] [--streams LIST] [--out DIR]
#
#   --model    a GGUF or model directory (default: SmolLM2-135M-Instruct Q4_1, from PyPI)
#   --rounds   rounds per row (default 3)
#   --streams  concurrency levels (default 1,16; a level above 1 runs the code set only)
#   --prompts  requests per measurement (default: the whole set at 1 stream, 32 above)
#   --threads  threads for each server (default: every core)
#   --out      where the JSON and summary.md go (default: a new dir under /tmp)
# Environment: FERROLLAMA_BIN (default: build it), FERROLLAMA_SPEC_ARGS (extra serve flags
# for the speculating server, e.g. --num-speculative-tokens 8).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="" rounds=3 streams="1,16" prompts="" threads="$(nproc)" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --streams) streams="$2"; shift 2 ;;
    --prompts) prompts="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
out="${out:-$(mktemp -d /tmp/ferrollama-speculative.XXXXXX)}"
mkdir -p "$out"
model="${model:-$("$root/models/smollm2-path.sh")}"
if [ -z "${FERROLLAMA_BIN:-}" ]; then
  (cd "$root" && cargo build --release --bin ferrollama)
  FERROLLAMA_BIN="${CARGO_TARGET_DIR:-$root/target}/release/ferrollama"
fi

start_server() { # label port flags...
  local label=$1 port=$2
  shift 2
  "$FERROLLAMA_BIN" serve --model "$model" --name m --port "$port" --threads "$threads" \
    --no-prefix-caching "$@" \
    >"$out/serve-$label.log" 2>&1 &
  echo $! >"$out/$label.pid"
  for _ in $(seq 120); do
    curl -fs "http://127.0.0.1:$port/api/version" >/dev/null 2>&1 && return
    sleep 0.5
  done
  echo "server $label did not start: $(tail -n 3 "$out/serve-$label.log")" >&2
  exit 1
}
stop_servers() { for l in on off; do [ -f "$out/$l.pid" ] && kill "$(cat "$out/$l.pid")" 2>/dev/null; done; true; }
trap stop_servers EXIT
# shellcheck disable=SC2086
start_server on 11601 --speculative ngram ${FERROLLAMA_SPEC_ARGS:-}
start_server off 11602 --speculative off

bench() { # label port set concurrency round
  local label=$1 port=$2 set=$3 c=$4 round=$5 n
  n=${prompts:-$([ "$c" = 1 ] && wc -l <"$root/benches/workloads/$set.jsonl" || echo 32)}
  curl -fs "http://127.0.0.1:$port/metrics" >"$out/$set-c$c-r$round-$label.before.prom"
  "$FERROLLAMA_BIN" bench --base-url "http://127.0.0.1:$port/v1" --endpoint chat --model m \
    --dataset "$root/benches/workloads/$set.jsonl" --concurrency "$c" --num-prompts "$n" \
    --no-ignore-eos --warmup 1 --label "$label" \
    --json "$out/$set-c$c-r$round-$label.json" >"$out/$set-c$c-r$round-$label.log" 2>&1
  curl -fs "http://127.0.0.1:$port/metrics" >"$out/$set-c$c-r$round-$label.after.prom"
}

IFS=, read -ra levels <<<"$streams"
for c in "${levels[@]}"; do
  sets="${SPEC_SETS:-code-editing summarisation free-writing}"
  [ "$c" = 1 ] || sets="code-editing"
  for set in $sets; do
    for round in $(seq "$rounds"); do
      # Alternate which server goes first, so a drift of the host's speed hits both alike.
      if [ $((round % 2)) = 1 ]; then order="on off"; else order="off on"; fi
      for label in $order; do
        port=$([ "$label" = on ] && echo 11601 || echo 11602)
        bench "$label" "$port" "$set" "$c" "$round"
      done
      echo "$set, $c stream(s), round $round done"
    done
  done
done

python3 - "$out" "$rounds" "$streams" <<'PY' | tee "$out/summary.md"
import json, os, pathlib, statistics, sys
out, rounds, levels = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
def counter(path, name):
    for line in path.read_text().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
def decode(level):  # tokens/s after the first, as the client sees them
    return 1000 / level["tpot_ms"]["mean"]
print("| set | streams | decode tok/s on | off | on/off | output tok/s on | off | on/off | drafted tokens kept |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in levels:
    sets = os.environ.get("SPEC_SETS", "code-editing summarisation free-writing").split()
    for s in (sets if c == "1" else ["code-editing"]):
        rows = {"dec": ([], [], []), "out": ([], [], [])}
        drafted = kept = 0
        for r in range(1, rounds + 1):
            on = json.loads((out / f"{s}-c{c}-r{r}-on.json").read_text())["levels"][0]
            off = json.loads((out / f"{s}-c{c}-r{r}-off.json").read_text())["levels"][0]
            for key, f in (("dec", decode), ("out", lambda l: l["output_throughput"])):
                rows[key][0].append(f(on)); rows[key][1].append(f(off))
                rows[key][2].append(f(on) / f(off))
            for name in ("draft", "accepted"):
                metric = f"ferrollama_speculative_{name}_tokens_total"
                delta = counter(out / f"{s}-c{c}-r{r}-on.after.prom", metric) - \
                    counter(out / f"{s}-c{c}-r{r}-on.before.prom", metric)
                if name == "draft": drafted += delta
                else: kept += delta
        cells = []
        for key in ("dec", "out"):
            on, off, ratio = (statistics.median(v) for v in rows[key])
            cells += [f"{on:.1f}", f"{off:.1f}", f"{ratio:.2f}x"]
        share = f"{kept / drafted:.0%} of {drafted:.0f}" if drafted else "none"
        print(f"| {s} | {c} | " + " | ".join(cells) + f" | {share} |")
PY
# Identity: every request of the sets, greedy and seeded-sampled, to both servers: the same text.
if [ "${SPEC_IDENTITY:-1}" = 1 ]; then
  # shellcheck disable=SC2086
  python3 - "$root/benches/workloads" ${SPEC_SETS:-code-editing summarisation free-writing} <<'PY' | tee -a "$out/summary.md"
import json, pathlib, sys, urllib.request
def ask(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                 json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))["choices"][0]["message"]["content"]
same = total = 0
for name in sys.argv[2:]:
    for line in (pathlib.Path(sys.argv[1]) / f"{name}.jsonl").read_text().splitlines():
        row = json.loads(line)
        for sampling in ({"temperature": 0}, {"temperature": 0.7, "seed": 1}):
            body = {"model": "m", "messages": row["messages"], "max_tokens": row["max_tokens"], **sampling}
            total += 1
            same += ask(11601, body) == ask(11602, body)
print(f"identity: {same} of {total} replies (greedy and seeded) the same with speculation on and off")
PY
fi
# What the speculating server drafted and kept, over the whole run.
curl -fs http://127.0.0.1:11601/metrics | grep -E '^ferrollama_speculative_' | tee -a "$out/summary.md"
echo "results in $out"
