"""The llm role's systemd unit, run the way systemd would run it, and its own health check.

The unit's ExecStart line and EnvironmentFile are read from deploy/systemd/ferrollama.service;
the environment file is the one up.sh renders for the llm VM (its API key and read-only
setting), with the model, name, address and store pointed at SmolLM2 on 127.0.0.1 and a free
port (on the VM it is Mistral on the private IP). Only the binary's path differs: FERROLLAMA_BIN.
"""
import configparser
import json
import os
import pathlib
import re
import shlex
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from test_dry_run import CUDA_URL, SHA, FakeHub, write_files

ROOT = pathlib.Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy/systemd/ferrollama.service"
HEALTHCHECK = ROOT / "deploy/llm-healthcheck.sh"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_unit():
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read(UNIT)
    return parser["Service"]


def read_env_file(path):
    """systemd EnvironmentFile: KEY=VALUE lines, # comments, optional quotes."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip().strip("\"'")
    return env


def exec_start_argv(line, env):
    """systemd's ExecStart expansion: ${VAR} becomes exactly one argument, $VAR splits on spaces."""
    argv = []
    for word in shlex.split(line):
        whole = re.fullmatch(r"\$\{(\w+)\}", word)
        if whole:
            argv.append(env.get(whole.group(1), ""))
        else:
            argv.extend(re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), word).split())
    return argv


@pytest.fixture(scope="module")
def smollm2():
    path = os.environ.get("SMOLLM2_GGUF") or subprocess.run(
        [str(ROOT / "models/smollm2-path.sh")], capture_output=True, text=True, check=True).stdout.strip()
    assert pathlib.Path(path).is_file(), path
    return path


@pytest.fixture(scope="module")
def ferrollama_bin():
    path = os.environ.get("FERROLLAMA_BIN") or str(
        ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "release/ferrollama")
    assert os.access(path, os.X_OK), f"no ferrollama binary at {path}: build it or set FERROLLAMA_BIN"
    return path


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """What up.sh renders: (the llm VM's ferrollama.env, the GitLab VM's settings.env)."""
    render = tmp_path_factory.mktemp("render")
    hub = FakeHub()
    try:
        result = subprocess.run([str(ROOT / "deploy/up.sh"), "--cloud", "gcp", "--domain", "gitlab.example.com",
                                 "--ferrollama-url", CUDA_URL, "--ferrollama-sha256", SHA, "--dry-run",
                                 "--render-dir", str(render)],
                                env=dict(os.environ, FERROLLAMA_GATEWAY_TAGS_URL=hub.url, HOME=str(render)),
                                capture_output=True, text=True, timeout=60)
    finally:
        hub.close()
    assert result.returncode == 0, result.stderr
    return (write_files(render / "llm.yaml")["/etc/ferrollama/ferrollama.env"],
            write_files(render / "gitlab.yaml")["/etc/ferrollama-deploy/settings.env"])


@pytest.fixture(scope="module")
def service(tmp_path_factory, smollm2, ferrollama_bin, deployed):
    """Starts the unit's ExecStart with the unit's EnvironmentFile keys; yields the env file."""
    unit = read_unit()
    assert unit["EnvironmentFile"] == "/etc/ferrollama/ferrollama.env"
    env_file = tmp_path_factory.mktemp("etc") / "ferrollama.env"
    port = free_port()
    store = tmp_path_factory.mktemp("models")
    # The rendered file, with this machine's model, address and store.
    local = {"FERROLLAMA_MODEL": smollm2, "FERROLLAMA_NAME": "smollm2", "OLLAMA_HOST": f"127.0.0.1:{port}",
             "OLLAMA_MODELS": str(store)}
    lines = [line for line in deployed[0].splitlines() if line.split("=", 1)[0] not in local]
    env_file.write_text("\n".join(lines + [f"{k}={v}" for k, v in local.items()]) + "\n")
    file_env = read_env_file(env_file)
    argv = exec_start_argv(unit["ExecStart"], file_env)
    assert argv[0] == "/usr/local/bin/ferrollama"  # where the first boot installs it
    argv[0] = ferrollama_bin
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "FERROLLAMA_"))}
    environment.update(file_env)
    proc = subprocess.Popen(argv, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield env_file, proc
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def healthcheck(*args):
    return subprocess.run([str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=180)


def test_exec_start_expansion_keeps_one_argument_per_braced_variable():
    assert exec_start_argv("/bin/x --model ${M} --name ${N} $A", {"M": "/a b.gguf", "N": "m:i", "A": "1 2"}) == [
        "/bin/x", "--model", "/a b.gguf", "--name", "m:i", "1", "2"]


def test_health_check_passes_against_the_unit(service):
    env_file, proc = service
    result = healthcheck("--env-file", str(env_file), "--wait", "120")
    assert result.returncode == 0, result.stdout + result.stderr + (
        proc.stdout.read() if proc.poll() is not None else "")
    lines = result.stdout.splitlines()
    port = read_env_file(env_file)["OLLAMA_HOST"].split(":")[1]
    assert lines[0] == f"ok: http://127.0.0.1:{port}/v1/models lists smollm2"
    assert lines[1].startswith("ok: chat completion answered: ") and len(lines[1]) > len("ok: chat completion answered: ")
    assert proc.poll() is None, "the server exited"


def test_health_check_fails_for_a_model_not_served(service):
    env_file, _ = service
    result = healthcheck("--env-file", str(env_file), "--model", "mistral:instruct")
    assert result.returncode == 1
    assert "does not list 'mistral:instruct'" in result.stderr and '"smollm2"' in result.stderr


def call(env_file, method, path, body=None, key=None):
    """(status, JSON body) of one request to the unit's server."""
    url = f"http://{read_env_file(env_file)['OLLAMA_HOST']}{path}"
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_the_deployed_server_refuses_the_store_changes_without_and_with_gitlabs_key(service, deployed):
    env_file, proc = service
    assert healthcheck("--env-file", str(env_file), "--wait", "120").returncode == 0  # up, with the key
    # The key GitLab was given (configure-gitlab.sh --api-token, from the GitLab VM's settings).
    [key] = [line.split("=", 1)[1] for line in deployed[1].splitlines() if line.startswith("LLM_API_KEY=")]
    assert read_env_file(env_file)["FERROLLAMA_API_KEY"] == key
    for method, path, body in (("DELETE", "/api/delete", {"model": "smollm2"}),
                               ("POST", "/api/pull", {"model": "smollm2:latest"}),
                               ("GET", "/v1/models", None)):
        status, _ = call(env_file, method, path, body)
        assert status == 401, (method, path, status)
        status, _ = call(env_file, method, path, body, key="not-" + key)
        assert status == 401, (method, path, status)
    # With the key, read-only (FERROLLAMA_READ_ONLY=true) still refuses the store changes.
    for method, path, body in (("DELETE", "/api/delete", {"model": "smollm2"}),
                               ("POST", "/api/pull", {"model": "smollm2:latest"}),
                               ("POST", "/api/copy", {"source": "smollm2", "destination": "x"})):
        status, reply = call(env_file, method, path, body, key=key)
        assert status == 403 and "read-only" in reply["error"], (method, path, status, reply)
    status, models = call(env_file, "GET", "/v1/models", key=key)
    assert status == 200 and "smollm2" in [m["id"] for m in models["data"]]  # still served
    assert proc.poll() is None, "the server exited"


def test_health_check_fails_when_nothing_listens(tmp_path):
    env_file = tmp_path / "ferrollama.env"
    env_file.write_text(f"FERROLLAMA_NAME=smollm2\nOLLAMA_HOST=127.0.0.1:{free_port()}\n")
    started = time.time()
    result = healthcheck("--env-file", str(env_file), "--wait", "3")
    assert result.returncode == 1 and "does not answer" in result.stderr
    assert time.time() - started >= 3
