"""--api-key / FERROLLAMA_API_KEY makes a bearer token mandatory; without it any header passes."""
import os
import subprocess
import time

import requests

from conftest import ROOT, free_port


def test_api_key_required_when_set(server):
    # The shared server has no key: the gateway's `Bearer None` is accepted.
    r = requests.get(server + "/v1/models", headers={"Authorization": "Bearer None"})
    assert r.status_code == 200

    port = free_port()
    binary = os.environ.get("FERROLLAMA_BIN", str(ROOT / "target/release/ferrollama"))
    env = {**os.environ, "FERROLLAMA_API_KEY": "s3cret"}
    proc = subprocess.Popen([binary, "serve", "--model", str(ROOT / "models/fixtures/tiny-mistral"), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                requests.get(base + "/", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert requests.get(base + "/v1/models").status_code == 401
        assert requests.get(base + "/v1/models", headers={"Authorization": "Bearer wrong"}).json()["error"]["type"] == "authentication_error"
        assert requests.get(base + "/api/tags").json() == {"error": "missing or wrong API key"}
        assert requests.get(base + "/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
