"""sentence-transformers timed on the texts `ferrollama bench --embeddings` sends: inputs/s at
each batch size, one encode() call per request-sized batch, the same JSON shape as the bench's
--json. Run by benches/compare_embeddings.sh in a venv with sentence-transformers and torch.

    python benches/embeddings_peer.py MODEL_DIR TEXTS --batch 1,16,64 --requests 20 \
        --threads 2 --json OUT.json
"""
import argparse
import json
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("texts")
    p.add_argument("--batch", default="1,16,64")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(args.model_dir, device="cpu")
    lines = [l for l in open(args.texts).read().splitlines() if l.strip()]
    batches = [int(b) for b in args.batch.split(",")]
    texts = [lines[i % len(lines)] for i in range(max(batches) * 4)]
    model.encode(texts[:1])
    levels = []
    for batch in batches:
        rates, latencies = [], []
        for r in range(args.requests):
            start = (r * batch) % len(texts)
            inputs = [texts[(start + i) % len(texts)] for i in range(batch)]
            began = time.perf_counter()
            model.encode(inputs, batch_size=max(batch, 1))
            took = time.perf_counter() - began
            rates.append(batch / took)
            latencies.append(took * 1e3)
        rates.sort()
        latencies.sort()
        levels.append({"batch": batch, "requests": args.requests,
                       "inputs_per_s": rates[len(rates) // 2],
                       "latency_ms_p50": latencies[len(latencies) // 2]})
        print(f"sentence-transformers batch {batch}: {levels[-1]['inputs_per_s']:.1f} inputs/s")
    json.dump({"label": "sentence-transformers", "model": args.model_dir, "levels": levels},
              open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
