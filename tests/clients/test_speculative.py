"""Speculative decoding (on by default) through both APIs: the same reply with it on and with
the request's own switch off, and its counts in usage, in Ollama's final line and /metrics."""
import requests
from openai import OpenAI

CODE = ("def area(width, height):\n    return width * height\n\n"
        "a = area(3, 4)\nb = area(5, 6)\nc = area(7, 8)\n") * 3


def test_speculation_changes_no_reply_and_says_what_it_did(server):
    body = {"model": "mistral:instruct", "max_tokens": 200, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Repeat this code:\n" + CODE}]}
    on = requests.post(server + "/v1/chat/completions", json=body).json()
    off = requests.post(server + "/v1/chat/completions", json={**body, "speculative": False}).json()
    assert on["choices"][0]["message"] == off["choices"][0]["message"]
    # Random weights keep few drafts; that drafts were made and counted is what shows here
    # (the engine tests check what is kept, on SmolLM2 too).
    details = on["usage"]["completion_tokens_details"]
    assert details["accepted_prediction_tokens"] + details["rejected_prediction_tokens"] > 0
    assert off["usage"]["completion_tokens_details"] == {
        "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}

    ollama = {"model": "mistral:instruct", "prompt": CODE, "stream": False,
              "options": {"temperature": 0, "num_predict": 200}}
    on = requests.post(server + "/api/generate", json=ollama).json()
    off = requests.post(server + "/api/generate",
                        json={**ollama, "options": {**ollama["options"], "speculative": False}}).json()
    assert on["response"] == off["response"]
    assert on.get("draft_count", 0) > 0 and on["draft_count"] >= on["draft_accepted_count"], on
    assert "draft_count" not in off

    metrics = requests.get(server + "/metrics").text
    drafted = [l for l in metrics.splitlines()
               if l.startswith("ferrollama_speculative_draft_tokens_total ")]
    assert drafted and float(drafted[0].split()[1]) > 0



def test_seeded_choices_are_the_same_with_and_without_it(server):
    """Each of `n` seeded, sampled choices (Ollama's top-k and a top-p, a presence penalty) is
    the one it is without speculation (the real OpenAI client, both ways)."""
    client = OpenAI(base_url=server + "/v1", api_key="none")
    ask = dict(model="mistral:instruct", max_tokens=120, temperature=0.3, top_p=0.95, seed=11,
               n=3, presence_penalty=0.2,
               messages=[{"role": "user", "content": "Repeat this code:\n" + CODE}])
    on = client.chat.completions.create(**ask, extra_body={"top_k": 40})
    off = client.chat.completions.create(**ask, extra_body={"top_k": 40, "speculative": False})
    assert [c.message.content for c in on.choices] == [c.message.content for c in off.choices]
    assert len({c.message.content for c in on.choices}) > 1, "the choices differ"
    assert on.usage.completion_tokens == off.usage.completion_tokens
