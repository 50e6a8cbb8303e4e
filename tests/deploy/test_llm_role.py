"""The llm role's systemd unit, run the way systemd would run it, and its own health check.

The unit's ExecStart line and EnvironmentFile are read from deploy/systemd/ferrollama.service;
the environment file the test writes points the unit at SmolLM2 on 127.0.0.1 and a free port
(on the VM it is Mistral on the private IP). Only the binary's path differs: FERROLLAMA_BIN.
"""
import configparser
import os
import pathlib
import re
import shlex
import socket
import subprocess
import time

import pytest

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
def service(tmp_path_factory, smollm2, ferrollama_bin):
    """Starts the unit's ExecStart with the unit's EnvironmentFile keys; yields the env file."""
    unit = read_unit()
    assert unit["EnvironmentFile"] == "/etc/ferrollama/ferrollama.env"
    env_file = tmp_path_factory.mktemp("etc") / "ferrollama.env"
    port = free_port()
    env_file.write_text(f"FERROLLAMA_MODEL={smollm2}\nFERROLLAMA_NAME=smollm2\nOLLAMA_HOST=127.0.0.1:{port}\n")
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


def test_health_check_fails_when_nothing_listens(tmp_path):
    env_file = tmp_path / "ferrollama.env"
    env_file.write_text(f"FERROLLAMA_NAME=smollm2\nOLLAMA_HOST=127.0.0.1:{free_port()}\n")
    started = time.time()
    result = healthcheck("--env-file", str(env_file), "--wait", "3")
    assert result.returncode == 1 and "does not answer" in result.stderr
    assert time.time() - started >= 3
