"""The table of benches/compare_llamacpp.sh: ferrollama against each peer, per model, from the
JSON files `ferrollama bench` wrote.

    python3 benches/compare_summary.py OUT MODELS THREADS ROUNDS PEERS

PEERS: one line per peer, `name<TAB>version<TAB>flags`. Single-stream decode and prompt
processing are medians of ROUNDS rounds, with the median of the per-round ratios; 4 and 16
streams are one measure each. A ratio is ferrollama / the peer.
"""
import json
import os
import platform
import statistics
import sys


def level(out, model, server, kind, i=0):
    path = f"{out}/{model}-{server}-{kind}.json"
    if not os.path.exists(path):
        return None
    return json.load(open(path))["levels"][i]


def cpu():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    out, models, threads, rounds, peer_list = sys.argv[1:]
    rounds = int(rounds)
    # Empty fields (no version, no flags) are kept: split the lines, not the whitespace.
    peers = [(line.split("\t") + ["", ""])[:3] for line in peer_list.split("\n") if line]
    names = [name for name, _, _ in peers]

    def per_round(model, server, kind, f):
        return [f(level(out, model, server, f"{kind}-r{r}")) for r in range(1, rounds + 1)]

    print(f"Machine: {cpu()}, {os.cpu_count()} cores; every server on {threads} threads.")
    for name, version, flags in peers:
        print(f"Peer {name}: {version or 'version unknown'}; its own flags: {flags or 'none'}.")
    print(f"Single-stream decode and prompt processing: medians of {rounds} rounds (the "
          "servers' order turning each round), and the median of the per-round ratios; 4 and "
          "16 streams: one measure each. A ratio is ferrollama / the peer.\n")
    print("| model | measure | ferrollama | " + " | ".join(f"{n} | ratio" for n in names)
          + " | per-round ratios |")
    print("|---|---|---:|" + "---:|---:|" * len(names) + "---|")
    for model in models.split(","):
        ours_pp = None
        for name, kind, f in [
            ("single-stream decode (tok/s, 1000/TPOT)", "decode",
             lambda l: 1000 / l["tpot_ms"]["mean"]),
            ("prompt processing, 1,000 tokens (tok/s)", "prefill",
             lambda l: l["prefill_throughput"]),
        ]:
            ours = per_round(model, "ferrollama", kind, f)
            if kind == "prefill":
                ours_pp = statistics.median(ours)
            cells, notes = [], []
            for peer in names:
                theirs = per_round(model, peer, kind, f)
                ratios = [a / b for a, b in zip(ours, theirs)]
                cells.append(f"{statistics.median(theirs):.1f} | {statistics.median(ratios):.2f}×")
                notes.append(f"{peer}: {', '.join(f'{x:.2f}' for x in ratios)}")
            print(f"| {model} | {name} | {statistics.median(ours):.1f} | " + " | ".join(cells)
                  + " | " + "; ".join(notes) + " |")
        for name, i in [("4 streams, aggregate output (tok/s)", 0),
                        ("16 streams, aggregate output (tok/s)", 1)]:
            ours = level(out, model, "ferrollama", "streams", i)
            if ours is None:
                continue
            a = ours["output_throughput"]
            cells = []
            for peer in names:
                theirs = level(out, model, peer, "streams", i)
                b = theirs["output_throughput"] if theirs else None
                cells.append(f"{b:.1f} | {a / b:.2f}×" if b else " | n/a (single-stream peer)")
            print(f"| {model} | {name} | {a:.1f} | " + " | ".join(cells) + " | |")
        sixteen = level(out, model, "ferrollama", "streams", 1)
        if sixteen and ours_pp:
            # Output tokens are two thirds of what these requests process (64-token prompts,
            # 128 outputs), so the first ratio is capped near 0.67 when a decode token costs
            # what a prompt token does; the second counts every token processed.
            blank = " |" * (2 * len(names) + 1)
            for what, key in [("output", "output_throughput"),
                              ("every token", "total_token_throughput")]:
                print(f"| {model} | ferrollama 16 streams, {what} / its own prompt processing "
                      f"| {sixteen[key] / ours_pp:.2f}× |{blank}")


if __name__ == "__main__":
    main()
