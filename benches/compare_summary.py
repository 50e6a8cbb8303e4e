"""The table of benches/compare_llamacpp.sh: ferrollama against each peer, per model, from the
JSON files `ferrollama bench` wrote.

    python3 benches/compare_summary.py OUT MODELS THREADS ROUNDS STREAM_ROUNDS PEERS

PEERS: one line per peer, `name<TAB>version<TAB>flags`. Single-stream decode and prompt
processing are medians of ROUNDS rounds, 4 and 16 streams medians of STREAM_ROUNDS rounds, each
with the median of the per-round ratios. A ratio is ferrollama / the peer.
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
    """The CPU's name, family and model (a VM's name is often just "AMD EPYC", and one VM got
    a Zen 3 host one day and a Zen 4 the next) and which of the SIMD sets the kernels pick
    from it has: AVX2 alone and AVX-512 VNNI run different tiles in every server."""
    info = {}
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    if "model name" not in info:
        return platform.processor()
    flags = info.get("flags", "").split()
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return (f"{info['model name']} (family {info.get('cpu family', '?')}, model "
            f"{info.get('model', '?')}; {', '.join(simd) or 'no AVX2'})")


def main():
    out, models, threads, rounds, stream_rounds, peer_list = sys.argv[1:]
    rounds, stream_rounds = int(rounds), int(stream_rounds)
    # Empty fields (no version, no flags) are kept: split the lines, not the whitespace.
    peers = [(line.split("\t") + ["", ""])[:3] for line in peer_list.split("\n") if line]
    names = [name for name, _, _ in peers]

    def per_round(model, server, kind, f, n=rounds):
        return [f(level(out, model, server, f"{kind}-r{r}")) for r in range(1, n + 1)]

    print(f"Machine: {cpu()}, {os.cpu_count()} cores; every server on {threads} threads.")
    for name, version, flags in peers:
        print(f"Peer {name}: {version or 'version unknown'}; its own flags: {flags or 'none'}.")
    print(f"Single-stream decode and prompt processing: medians of {rounds} rounds, 4 and 16 "
          f"streams of {stream_rounds} (the servers' order turning each round), each with the "
          "median of the per-round ratios. A ratio is ferrollama / the peer.\n")
    print("| model | measure | ferrollama | " + " | ".join(f"{n} | ratio" for n in names)
          + " | per-round ratios |")
    print("|---|---|---:|" + "---:|---:|" * len(names) + "---|")
    for model in models.split(","):
        ours_pp = None
        measures = [
            ("single-stream decode (tok/s, 1000/TPOT)", "decode", rounds,
             lambda l: 1000 / l["tpot_ms"]["mean"]),
            ("prompt processing, 1,000 tokens (tok/s)", "prefill", rounds,
             lambda l: l["prefill_throughput"]),
        ]
        has_streams = level(out, model, "ferrollama", "streams16-r1") is not None
        if has_streams:
            measures += [(f"{n} streams, aggregate output (tok/s)", f"streams{n}", stream_rounds,
                          lambda l: l["output_throughput"]) for n in (4, 16)]
        for name, kind, n, f in measures:
            ours = per_round(model, "ferrollama", kind, f, n)
            if kind == "prefill":
                ours_pp = statistics.median(ours)
            cells, notes = [], []
            for peer in names:
                if not level(out, model, peer, f"{kind}-r1"):
                    cells.append("n/a | (single-stream peer)")
                    continue
                theirs = per_round(model, peer, kind, f, n)
                ratios = [a / b for a, b in zip(ours, theirs)]
                cells.append(f"{statistics.median(theirs):.1f} | {statistics.median(ratios):.2f}×")
                notes.append(f"{peer}: {', '.join(f'{x:.2f}' for x in ratios)}")
            print(f"| {model} | {name} | {statistics.median(ours):.1f} | " + " | ".join(cells)
                  + " | " + "; ".join(notes) + " |")
        if has_streams and ours_pp:
            # Output tokens are two thirds of what these requests process (64-token prompts,
            # 128 outputs), so the first ratio is capped near 0.67 when a decode token costs
            # what a prompt token does; the second counts every token processed.
            blank = " |" * (2 * len(names) + 1)
            for what, key in [("output", "output_throughput"),
                              ("every token", "total_token_throughput")]:
                sixteen = statistics.median(
                    per_round(model, "ferrollama", "streams16", lambda l: l[key], stream_rounds))
                print(f"| {model} | ferrollama 16 streams, {what} / its own prompt processing "
                      f"| {sixteen / ours_pp:.2f}× |{blank}")


if __name__ == "__main__":
    main()
