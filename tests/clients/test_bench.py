"""`ferrollama bench` against the real server: a smoke run of seconds that keeps the load
generator working. It checks what the report says, never how fast anything was."""
import json
import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("FERROLLAMA_BIN", str(ROOT / "target/release/ferrollama"))
TOKENIZER = ROOT / "models/fixtures/tiny-mistral/tokenizer.json"
METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
STATS = ("mean", "median", "p90", "p99")


def bench(server, tmp_path, *args):
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.svg"
    run = subprocess.run(
        [BINARY, "bench", "--base-url", server + "/v1", "--json", str(out), "--plot", str(plot),
         "--warmup", "1", "--seed", "3", *args],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(out.read_text()), plot.read_text(), run.stdout


def test_concurrency_sweep_reports_every_metric(server, tmp_path):
    report, svg, table = bench(
        server, tmp_path, "--concurrency", "1,3", "--num-prompts", "4",
        "--input-len", "20", "--output-len", "6", "--tokenizer", str(TOKENIZER),
    )
    assert report["model"] == "mistral:instruct"  # the first /v1/models lists
    assert report["ignore_eos"] is True
    assert [l["load"] for l in report["levels"]] == [
        {"mode": "concurrency", "value": 1}, {"mode": "concurrency", "value": 3}]
    for level in report["levels"]:
        assert (level["requests"], level["completed"], level["failed"]) == (4, 4, 0)
        # ignore_eos: every request produced exactly what it asked for...
        assert level["output_tokens"] == 4 * 6 and level["short_outputs"] == 0
        # ...from a prompt of exactly 20 tokens, as the server counts them.
        assert level["prompt_tokens"] == 4 * 20
        for key in ("request_throughput", "output_throughput", "total_token_throughput",
                    "prefill_throughput", "duration_s"):
            assert level[key] > 0, key
        for metric in METRICS:
            d = level[metric]
            assert set(d) == set(STATS)
            assert 0 < d["median"] <= d["p90"] <= d["p99"], (metric, d)
        # TTFT comes before the end of the request.
        assert level["ttft_ms"]["mean"] < level["e2e_ms"]["mean"]
    assert svg.startswith("<svg") and "concurrent requests" in svg
    assert "concurrency 3" in table and "TTFT p50" in table


def test_poisson_rate_chat_endpoint_and_jsonl(server, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3}) + "\n"
        + json.dumps({"prompt": "Once upon a time", "max_tokens": 5}) + "\n")
    report, _, _ = bench(
        server, tmp_path, "--endpoint", "chat", "--request-rate", "50", "--num-prompts", "4",
        "--dataset", str(prompts),
    )
    [level] = report["levels"]
    assert level["load"] == {"mode": "request_rate", "value": 50.0}
    assert (level["completed"], level["failed"]) == (4, 0)
    # The dataset cycles: 3 + 5 + 3 + 5 tokens asked for, all delivered.
    assert level["output_tokens"] == 16


def test_unreachable_server_is_a_clear_error(tmp_path):
    run = subprocess.run(
        [BINARY, "bench", "--base-url", "http://127.0.0.1:9/v1", "--num-prompts", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode != 0
    assert "127.0.0.1:9" in run.stderr
