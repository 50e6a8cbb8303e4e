"""`/metrics` through a real Prometheus text-format parser: every family parses, and the
counters, histograms and gauges move as this test's requests go through."""
import uuid

import requests
from prometheus_client.parser import text_string_to_metric_families


def scrape(base):
    reply = requests.get(base + "/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move_with_requests(server):
    before = scrape(server)
    route = {"route": "/v1/chat/completions", "status": "200"}
    prompt = f"{uuid.uuid4().hex} " + "count the blocks " * 10  # new, and several blocks long
    for _ in range(2):
        reply = requests.post(server + "/v1/chat/completions", json={
            "model": "mistral:instruct", "max_tokens": 5, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]})
        usage = reply.json()["usage"]
    missing = requests.post(server + "/v1/chat/completions", json={
        "model": "nothing:here", "messages": [{"role": "user", "content": "x"}]})
    assert missing.status_code == 404
    after = scrape(server)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("ferrollama_http_requests_total", **route) == 2
    assert moved("ferrollama_http_requests_total", route="/v1/chat/completions", status="404") == 1
    assert moved("ferrollama_prompt_tokens_total") == 2 * usage["prompt_tokens"]
    assert moved("ferrollama_generation_tokens_total") == 2 * usage["completion_tokens"]
    # The second identical prompt finds the first one's full blocks.
    assert usage["prompt_tokens"] > 40
    assert moved("ferrollama_cached_prompt_tokens_total") == (usage["prompt_tokens"] - 1) // 16 * 16
    for histogram in ["time_to_first_token_seconds", "e2e_request_latency_seconds",
                      "request_queue_time_seconds", "inter_token_latency_seconds"]:
        assert moved(f"ferrollama_{histogram}_count") == 2, histogram
        assert value(after, f"ferrollama_{histogram}_bucket", le="+Inf") == \
            value(after, f"ferrollama_{histogram}_count")
    assert value(after, "ferrollama_time_to_first_token_seconds_bucket", le="2560") >= 2
    assert value(after, "ferrollama_num_requests_running") == 0
    assert value(after, "ferrollama_kv_blocks_used") == 0 and value(after, "ferrollama_kv_blocks_free") > 0
    assert 0 < value(after, "ferrollama_prefix_cache_hit_rate") <= 1
    assert value(after, "ferrollama_model_load_seconds") > 0
    assert ("ferrollama_num_preemptions_total", ()) in after
