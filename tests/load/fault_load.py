#!/usr/bin/env python3
"""Fault-and-load run against the real server, on loopback only, bounded in time and count.

Starts `ferrollama serve` on tiny-mistral with a KV cache small enough to force preemption and
a queue limit low enough to trigger 503s, records each prompt's greedy text with the server
unloaded, then runs CLIENTS concurrent clients for DURATION seconds. They mix streaming and
non-streaming requests on both APIs (OpenAI chat and completions, Ollama generate and chat),
and a share of them hang up at random points. It checks:

- no panic and no restart (the same process answers throughout and after);
- every completed request has exactly the text the unloaded run gave;
- every request gets that text, a 503 with Retry-After, or a clear error in its API's shape;
- afterwards no KV block is in use and nothing runs or waits;
- RSS at the end is within 10% of its value after warm-up (the first half of the run: the
  allocator's arenas fill for several seconds under 64 clients, then RSS stays flat; a leak
  keeps growing through the second half).

It prints requests served, outcomes by kind, p50/p99 TTFT (streams) and peak RSS, and exits 1
if any check fails. Short form for CI: --duration 20 --clients 64.
"""
import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    "Count from one to ten.",
    "Name three colours.",
    "Write a haiku about Rust.",
    "What is a KV cache?",
    "Explain preemption in two sentences.",
    "List the planets.",
    "Say hello in French.",
    "Why is the sky blue?",
]
KINDS = ["openai-chat", "openai-completion", "ollama-generate", "ollama-chat"]
MAX_TOKENS = 48


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def request_for(kind, prompt, stream):
    """(path, body) of a greedy request of `kind`."""
    if kind == "openai-chat":
        return "/v1/chat/completions", {
            "model": "tiny", "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": MAX_TOKENS, "stream": stream}
    if kind == "openai-completion":
        return "/v1/completions", {"model": "tiny", "prompt": prompt, "temperature": 0,
                                   "max_tokens": MAX_TOKENS, "stream": stream}
    options = {"temperature": 0, "num_predict": MAX_TOKENS}
    if kind == "ollama-generate":
        return "/api/generate", {"model": "tiny", "prompt": prompt, "options": options,
                                 "stream": stream}
    return "/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": prompt}],
                         "options": options, "stream": stream}


class Broken(Exception):
    """A response that is not text, a 503 or a clear error: a failed check."""


def text_of(kind, body):
    if "error" in body:
        raise Broken(f"error in a 200 body: {body['error']}")
    if kind == "openai-chat":
        return body["choices"][0]["message"]["content"]
    if kind == "openai-completion":
        return body["choices"][0]["text"]
    if kind == "ollama-generate":
        return body["response"]
    return body["message"]["content"]


def piece_of(kind, line):
    """The text in one stream line, None for a line without text, or an error string."""
    if kind.startswith("openai"):
        if not line.startswith("data: ") or line == "data: [DONE]":
            return None
        chunk = json.loads(line[6:])
        if "error" in chunk:
            return ("error", chunk["error"]["message"])
        if not chunk.get("choices"):
            return None
        choice = chunk["choices"][0]
        return choice.get("delta", {}).get("content") if kind == "openai-chat" else choice["text"]
    chunk = json.loads(line)
    if "error" in chunk:
        return ("error", chunk["error"])
    return chunk["response"] if kind == "ollama-generate" else chunk["message"]["content"]


async def one_request(client, base, kind, prompt, stream, hangup_after):
    """Returns (outcome, text or None, ttft or None)."""
    path, body = request_for(kind, prompt, stream)
    started = time.monotonic()

    async def run():
        if not stream:
            reply = await client.post(base + path, json=body)
            return reply, None, None
        async with client.stream("POST", base + path, json=body) as reply:
            if reply.status_code != 200:
                await reply.aread()
                return reply, None, None
            pieces, ttft, error = [], None, None
            async for line in reply.aiter_lines():
                if not line or line.startswith(":"):
                    continue
                piece = piece_of(kind, line)
                if isinstance(piece, tuple):
                    error = piece[1]
                elif piece:
                    ttft = ttft if ttft is not None else time.monotonic() - started
                    pieces.append(piece)
            return reply, ("".join(pieces), error), ttft

    try:
        reply, streamed, ttft = await asyncio.wait_for(run(), hangup_after) if hangup_after \
            else await run()
    except asyncio.TimeoutError:
        return "hung up", None, None
    if reply.status_code == 503:
        if "retry-after" not in reply.headers:
            raise Broken("503 without Retry-After")
        error = reply.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
        if not message:
            raise Broken("503 without a message")
        return "503", None, None
    if reply.status_code != 200:
        raise Broken(f"{kind} answered {reply.status_code}: {reply.text[:200]}")
    if stream:
        text, error = streamed
        if error:
            return "error", error, None
        return "ok", text, ttft
    return "ok", text_of(kind, reply.json()), None


async def main_async(args):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    binary = os.environ.get("FERROLLAMA_BIN", str(ROOT / "target/release/ferrollama"))
    server = subprocess.Popen(
        [binary, "serve", "--model", str(ROOT / "models/fixtures/tiny-mistral"), "--name", "tiny",
         "--port", str(port), "--kv-cache-memory", args.kv_cache_memory, "--max-seqs", "16",
         "--max-queue", str(args.max_queue)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    failures = []
    try:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=args.clients)
        async with httpx.AsyncClient(timeout=httpx.Timeout(120), limits=limits) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await client.get(base + "/")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start:\n" + Path(log.name).read_text())
                await asyncio.sleep(0.2)

            # The unloaded run: each prompt alone, for every kind.
            reference = {}
            for kind in KINDS:
                for prompt in PROMPTS:
                    outcome, text, _ = await one_request(client, base, kind, prompt, False, None)
                    assert outcome == "ok", (kind, prompt, outcome, text)
                    reference[kind, prompt] = text

            outcomes, ttfts = Counter(), []
            rss = {"warm": None, "peak": rss_kib(server.pid)}
            started = time.monotonic()
            stop_at = started + args.duration

            async def client_loop(seed):
                rng = random.Random(seed)
                while time.monotonic() < stop_at:
                    kind, prompt = rng.choice(KINDS), rng.choice(PROMPTS)
                    stream = rng.random() < 0.5
                    hangup = rng.uniform(0.01, 1.5) if rng.random() < args.hangup else None
                    try:
                        outcome, text, ttft = await one_request(client, base, kind, prompt, stream,
                                                                hangup)
                    except Broken as e:
                        failures.append(str(e))
                        outcomes["broken"] += 1
                        continue
                    except httpx.TransportError as e:
                        failures.append(f"transport error (server gone?): {e!r}")
                        outcomes["transport error"] += 1
                        await asyncio.sleep(0.1)
                        continue
                    outcomes[outcome] += 1
                    if outcome == "ok" and text != reference[kind, prompt]:
                        failures.append(f"{kind} {prompt!r}: {text!r} != {reference[kind, prompt]!r}")
                    if ttft is not None:
                        ttfts.append(ttft)
                    if outcome == "503":
                        await asyncio.sleep(rng.uniform(0.05, 0.3))

            async def watch_memory():
                while time.monotonic() < stop_at:
                    await asyncio.sleep(0.5)
                    now = rss_kib(server.pid)
                    rss["peak"] = max(rss["peak"], now)
                    if rss["warm"] is None and time.monotonic() - started > args.duration * 0.5:
                        rss["warm"] = now

            await asyncio.gather(watch_memory(), *(client_loop(i) for i in range(args.clients)))

            # Afterwards: nothing running or waiting, every block free.
            deadline = time.monotonic() + 30
            while True:
                stats = (await client.get(base + "/ferrollama/stats")).json()
                if stats["running"] == 0 and stats["waiting"] == 0 and \
                        stats["free_blocks"] == stats["total_blocks"]:
                    break
                if time.monotonic() > deadline:
                    failures.append(f"not idle after the run: {stats}")
                    break
                await asyncio.sleep(0.2)
            rss["end"] = rss_kib(server.pid)
            if server.poll() is not None:
                failures.append(f"the server exited with {server.returncode}")
            if rss["warm"] and abs(rss["end"] - rss["warm"]) > 0.10 * rss["warm"]:
                failures.append(f"RSS moved from {rss['warm']} KiB after warm-up to {rss['end']} KiB")
            if stats["preemptions"] == 0:
                failures.append("no preemption happened: make the KV cache smaller")
            if outcomes["503"] == 0:
                failures.append("no 503 happened: lower the queue limit")
    finally:
        server.terminate()
        try:
            code = server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            code = "killed"
        if code != 0:
            failures.append(f"the server did not drain and exit 0 on SIGTERM: {code}")
        server_log = Path(log.name).read_text()
        if "panicked" in server_log:
            failures.append("the server log has a panic:\n" + server_log[-2000:])

    served = sum(outcomes.values())
    ttfts.sort()
    p = lambda q: ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] * 1000 if ttfts else float("nan")
    print(f"{args.clients} clients for {args.duration} s: {served} requests")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(f"TTFT (streams, client side): p50 {p(0.5):.0f} ms, p99 {p(0.99):.0f} ms")
    print(f"preemptions {stats['preemptions']}, RSS after warm-up {rss['warm']} KiB, "
          f"end {rss['end']} KiB, peak {rss['peak']} KiB")
    for failure in failures[:20]:
        print("FAIL:", failure)
    if failures:
        print(f"{len(failures)} failed checks")
        return 1
    print("all checks passed")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--hangup", type=float, default=0.2, help="share of requests cut short")
    parser.add_argument("--max-queue", type=int, default=48)
    parser.add_argument("--kv-cache-memory", default="256KiB")
    args = parser.parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
