"""The VMs' first-boot scripts (deploy/firstboot/), run here with stand-ins on PATH for what only
a VM has: apt-get, apt-cache, docker, systemctl, gitlab-rails, ldd and the like. Each stand-in
logs its arguments to one file, so a test sees what the VM would run, and in which order.
`sleep` is a stand-in too: the scripts' waits then take no time.
"""
import hashlib
import io
import json
import os
import pathlib
import subprocess
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIRSTBOOT = ROOT / "deploy" / "firstboot"


def stand_ins(tmp_path, scripts):
    """PATH with a logging stand-in per name: scripts maps name -> shell run after the log line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{body}\n')
        path.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}", log


def calls(log):
    return log.read_text().splitlines() if log.exists() else []


def run(script, env, timeout=60):
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=timeout)


# --- the AI gateway VM ---------------------------------------------------------------------------

class FakeGateway:
    """The stock self-hosted gateway's monitoring endpoints: /monitoring/ready answers 500 on
    every call (it runs real Vertex and Anthropic calls), /monitoring/healthz 200 once up."""

    def __init__(self, healthy=True):
        self.paths = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                gateway.paths.append(self.path)
                status = {"/monitoring/healthz": 200 if healthy else 503, "/monitoring/ready": 500}.get(self.path, 404)
                raw = json.dumps({"status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def gateway_boot(tmp_path, healthy, firstboot=FIRSTBOOT):
    gateway = FakeGateway(healthy)
    try:
        settings = tmp_path / "settings.env"
        settings.write_text(f"GATEWAY_IMAGE=gitlab/model-gateway:self-hosted-v17.6.0-ee@sha256:{'a' * 64}\n"
                            f"DOMAIN=gitlab.example.com\nGITLAB_IP=10.42.0.10\n"
                            f"GATEWAY_IP=127.0.0.1\nGATEWAY_PORT={gateway.port}\n")
        path, log = stand_ins(tmp_path, {"docker": "", "systemctl": "", "sleep": ""})
        env = dict(os.environ, PATH=path, FERROLLAMA_DEPLOY_SETTINGS=str(settings))
        return run(firstboot / "gateway.sh", env), gateway.paths, calls(log)
    finally:
        gateway.close()


def test_the_gateway_boot_waits_for_healthz_only(tmp_path):
    result, paths, log = gateway_boot(tmp_path, healthy=True)
    assert result.returncode == 0, result.stderr
    assert "AI gateway /monitoring/healthz answers" in result.stdout
    assert paths == ["/monitoring/healthz"]  # never /monitoring/ready, which answers 500
    [docker_run] = [c for c in log if c.startswith("docker run ")]
    assert "/monitoring/healthz" in docker_run and "/monitoring/ready" not in docker_run
    assert f"--publish 127.0.0.1:{docker_run.split('--publish 127.0.0.1:')[1].split(':')[0]}:5052" in docker_run


def test_the_gateway_boot_fails_when_the_gateway_is_not_healthy(tmp_path):
    result, paths, log = gateway_boot(tmp_path, healthy=False)
    assert result.returncode == 1
    assert "/monitoring/healthz failing after 5 minutes" in result.stderr
    assert paths == ["/monitoring/healthz"] * 60 and log.count("sleep 5") == 60


# --- the GitLab VM -------------------------------------------------------------------------------

# `apt-cache madison gitlab-ee` as GitLab's repository answers it (out of order, and with a
# 17.60 that a careless prefix match would take for 17.6).
MADISON = "\n".join(f" gitlab-ee | {v} | https://packages.gitlab.com/gitlab/gitlab-ee/ubuntu/noble noble/main amd64 Packages"
                    for v in ("17.7.0-ee.0", "17.6.9-ee.0", "17.6.10-ee.0", "17.60.1-ee.0", "17.6.0-ee.0",
                              "17.6.2-ee.0", "17.5.5-ee.0"))


def gitlab_boot(tmp_path, version, unreachable=2, firstboot=FIRSTBOOT):
    """gitlab.sh with GITLAB_VERSION=version, the package server unreachable for the first
    `unreachable` tries (as on AWS before the Elastic IP is attached)."""
    settings = tmp_path / "settings.env"
    settings.write_text(f"DOMAIN=gitlab.example.com\nGITLAB_VERSION={version}\nADMIN_TOKEN=glpat-x\n"
                        "ACTIVATION_CODE=\nLICENSED=false\n")
    tries = tmp_path / "tries"
    path, log = stand_ins(tmp_path, {
        # The install script is piped into bash: it logs that it ran. Any other curl is the
        # egress probe, refused until the address is there.
        "curl": f"""case "$*" in
  *script.deb.sh*) echo 'echo "repository-script" >> {tmp_path}/calls.log' ;;
  *) echo x >> {tries}; [ "$(wc -l < {tries})" -gt {unreachable} ] || {{ echo "curl: (7) Failed to connect" >&2; exit 7; }} ;;
esac""",
        "apt-get": f'echo "  EXTERNAL_URL=$EXTERNAL_URL" >> {tmp_path}/calls.log',
        "apt-cache": f"cat <<'EOF'\n{MADISON}\nEOF",
        "apt-mark": "", "gitlab-rails": "", "sleep": "",
    })
    env = dict(os.environ, PATH=path, FERROLLAMA_DEPLOY_SETTINGS=str(settings))
    return run(firstboot / "gitlab.sh", env), calls(log)


def test_gitlab_waits_for_egress_then_installs_the_newest_patch_of_its_line(tmp_path):
    result, log = gitlab_boot(tmp_path, "17.6")
    assert result.returncode == 0, result.stderr
    assert "installing gitlab-ee=17.6.10-ee.0" in result.stdout
    commands = [c for c in log if not c.startswith("  ")]
    # Two refused probes and their pauses, then apt: nothing touches a package source before.
    assert commands[:5] == ["curl -sS -o /dev/null --max-time 10 https://packages.gitlab.com/", "sleep 10"] * 2 + [
        "curl -sS -o /dev/null --max-time 10 https://packages.gitlab.com/"]
    hold = commands.index("apt-mark hold gitlab-ee")
    assert commands[5:hold + 1] == [
        "apt-get -o DPkg::Lock::Timeout=600 update",
        "apt-get -o DPkg::Lock::Timeout=600 install -y curl ca-certificates jq openssh-server perl tzdata",
        "curl -fsSL https://packages.gitlab.com/install/repositories/gitlab/gitlab-ee/script.deb.sh",
        "repository-script",
        "apt-cache madison gitlab-ee",
        "apt-get -o DPkg::Lock::Timeout=600 install -y gitlab-ee=17.6.10-ee.0",
        "apt-mark hold gitlab-ee",
    ]
    # Then root's API token, with the value up.sh generated.
    assert commands[hold + 1] == "gitlab-rails runner " and "  token.set_token('glpat-x')" in log
    install = log.index("apt-get -o DPkg::Lock::Timeout=600 install -y gitlab-ee=17.6.10-ee.0")
    assert log[install + 1] == "  EXTERNAL_URL=https://gitlab.example.com"


def test_gitlab_takes_an_exact_version_as_it_is(tmp_path):
    result, log = gitlab_boot(tmp_path, "17.6.3", unreachable=0)
    assert result.returncode == 0, result.stderr
    assert "apt-get -o DPkg::Lock::Timeout=600 install -y gitlab-ee=17.6.3-ee.0" in log
    assert "apt-cache madison gitlab-ee" not in log


def test_gitlab_stops_when_its_line_has_no_package(tmp_path):
    result, log = gitlab_boot(tmp_path, "17.8", unreachable=0)
    assert result.returncode == 1
    assert "GitLab's repository has no gitlab-ee 17.8.x package" in result.stderr
    assert not any("gitlab-ee=" in c for c in log)


def test_gitlab_gives_up_without_egress(tmp_path):
    result, log = gitlab_boot(tmp_path, "17.6", unreachable=1000)
    assert result.returncode == 1
    assert "no route to https://packages.gitlab.com/ after 15 minutes" in result.stderr
    assert log.count("sleep 10") == 89 and not any(c.startswith("apt-get") for c in log)


# --- the llm VM: the release's glibc against the system's ----------------------------------------

def release(tmp_path, manifest):
    """A release tarball laid out as deploy/release.sh makes it, MANIFEST as given."""
    name = "ferrollama-0.1.0-linux-x86_64-cpu"
    path = tmp_path / f"{name}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member, data in ((f"{name}/ferrollama", b"#!/bin/sh\n"), (f"{name}/MANIFEST", manifest.encode())):
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return name, path, hashlib.sha256(path.read_bytes()).hexdigest()


def llm_boot(tmp_path, manifest, system_glibc="2.39", firstboot=FIRSTBOOT):
    """llm.sh against tmp_path/root standing in for /, up to the service user (a stand-in
    useradd ends the run there, exit 97)."""
    name, tarball, digest = release(tmp_path, manifest)
    root = tmp_path / "root"
    (root / "etc/ferrollama-deploy").mkdir(parents=True)
    (root / "etc/ferrollama").mkdir(parents=True)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "etc/ferrollama-deploy/settings.env").write_text(
        f"FERROLLAMA_URL='file://{tarball}'\nFERROLLAMA_SHA256={digest}\nFERROLLAMA_BUILD=cpu\n"
        f"MODEL_SHA256={'c' * 64}\nFERROLLAMA_REGISTRY_URL=''\nNVIDIA_DRIVER=580\n")
    (root / "etc/ferrollama/ferrollama.env").write_text(
        f"FERROLLAMA_MODEL=mistral:7b-instruct-v0.3-q4_0\nFERROLLAMA_NAME=mistral:instruct\n"
        f"OLLAMA_MODELS={root}/var/lib/ferrollama/models\nOLLAMA_HOST=127.0.0.1:11434\n")
    scripts = {"id": "exit 1", "useradd": "exit 97"}
    if system_glibc:
        scripts["ldd"] = f'echo "ldd (Ubuntu GLIBC {system_glibc}-0ubuntu8.4) {system_glibc}"'
    path, log = stand_ins(tmp_path, scripts)
    env = dict(os.environ, PATH=path, FERROLLAMA_FIRSTBOOT_ROOT=str(root))
    return run(firstboot / "llm.sh", env), root, name, calls(log)


@pytest.mark.parametrize("needed", ["2.35", "2.39"])
def test_a_release_for_this_glibc_or_older_is_installed(tmp_path, needed):
    result, root, name, log = llm_boot(tmp_path, f"build=cpu\nglibc={needed}\n")
    assert result.returncode == 97 and log[-1] == "useradd --system --home-dir /var/lib/ferrollama --shell /usr/sbin/nologin ferrollama", \
        result.stdout + result.stderr
    assert f"needs glibc {needed} (this system has 2.39)" in result.stdout
    assert (root / "opt/ferrollama" / name / "ferrollama").is_file()
    assert os.readlink(root / "usr/local/bin/ferrollama") == f"/opt/ferrollama/{name}/ferrollama"
    assert (root / "etc/ferrollama/ferrollama.env").read_text().splitlines()[-1] == "FERROLLAMA_DEVICE=cpu"


@pytest.mark.parametrize("manifest, message", [
    ("build=cpu\nglibc=2.40\n", "the release needs glibc 2.40 or newer; this system has 2.39"),
    ("build=cpu\nglibc=2.39.1\n", "the release needs glibc 2.39.1 or newer; this system has 2.39"),
    ("build=cpu\n", "the release's MANIFEST names no glibc"),
    ("build=cuda-sm75\nglibc=2.35\n", "the release's MANIFEST does not say build=cpu"),
])
def test_a_release_this_system_cannot_run_is_refused_before_anything_is_installed(tmp_path, manifest, message):
    result, root, _, log = llm_boot(tmp_path, manifest)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert not (root / "opt").exists() and not (root / "usr/local/bin/ferrollama").is_symlink()
    assert "FERROLLAMA_DEVICE" not in (root / "etc/ferrollama/ferrollama.env").read_text()
