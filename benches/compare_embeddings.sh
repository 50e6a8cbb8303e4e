#!/usr/bin/env bash
# ferrollama's /v1/embeddings against sentence-transformers in the same process-free way a user
# would call each, on the same texts and the same number of CPU threads, in interleaved rounds:
#   benches/compare_embeddings.sh [--rounds 3] [--threads 2] [--requests 20] [--out DIR] MODEL_DIR
# MODEL_DIR: a sentence-transformers directory (models/minilm-path.sh prints one).
# PEER_PYTHON: a python with sentence-transformers and torch (models/requirements-ref.txt).
# FERROLLAMA_BIN: the server binary (default: the release build).
# Prints inputs/s per batch size for each (median of the rounds) and their ratio.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds=3 threads=2 requests=20 out="$(mktemp -d)"
while [ $# -gt 1 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
model_dir="$(cd "${1:?give a sentence-transformers model directory}" && pwd)"
bin="${FERROLLAMA_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/ferrollama}"
peer="${PEER_PYTHON:?set PEER_PYTHON to a python with sentence-transformers}"
mkdir -p "$out"

# The texts: this repository's README, one sentence-sized line each (10 to 60 words).
texts="$out/texts.txt"
tr -s ' \n' ' ' < "$root/README.md" | fold -s -w 240 | awk 'NF >= 10' | head -256 > "$texts"

# The model in a Hugging Face cache layout, so the server finds it by name.
home="$out/hf"
repo="$home/hub/models--local--embedder"
sha=0000000000000000000000000000000000000000
rm -rf "$repo"; mkdir -p "$repo/refs" "$repo/snapshots"
printf '%s' "$sha" > "$repo/refs/main"
ln -s "$model_dir" "$repo/snapshots/$sha"
port=$((20000 + RANDOM % 10000))
HF_HOME="$home" HF_HUB_OFFLINE=1 RAYON_NUM_THREADS="$threads" OLLAMA_MODELS="$out/store" \
  "$bin" serve --port "$port" --threads "$threads" > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done

for round in $(seq "$rounds"); do
  echo "--- round $round of $rounds"
  "$bin" bench --embeddings --base-url "http://127.0.0.1:$port/v1" --model hf.co/local/embedder \
    --texts "$texts" --num-prompts "$requests" --label ferrollama --json "$out/ferrollama-$round.json"
  "$peer" "$root/benches/embeddings_peer.py" "$model_dir" "$texts" --requests "$requests" \
    --threads "$threads" --json "$out/peer-$round.json"
done

python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def levels(name):
    runs = [json.load(open(f"{out}/{name}-{r}.json"))["levels"] for r in range(1, rounds + 1)]
    return {l["batch"]: [run[i]["inputs_per_s"] for run in runs] for i, l in enumerate(runs[0])}
ours, peer = levels("ferrollama"), levels("peer")
print(f"| batch | ferrollama inputs/s | sentence-transformers inputs/s | ratio (median of rounds) |")
print("|---:|---:|---:|---:|")
for batch in ours:
    ratios = [o / p for o, p in zip(ours[batch], peer[batch])]
    print(f"| {batch} | {statistics.median(ours[batch]):.1f} | {statistics.median(peer[batch]):.1f} "
          f"| {statistics.median(ratios):.2f}x |")
PY
