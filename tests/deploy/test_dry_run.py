"""up.sh and down.sh --dry-run: the cloud CLI calls they print, and the cloud-init files up.sh
renders. Fake `aws` and `gcloud` commands on PATH record any call, so a dry run that runs a
cloud CLI fails the test.
"""
import base64
import gzip
import hashlib
import io
import json
import os
import pathlib
import re
import shlex
import subprocess
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PRIVATE = "10.42.0.0/16"
BYPASS = "AIGW_AUTH__BYPASS_EXTERNAL"
SHA = "ab" * 32
TYPES = {
    "aws": {"gitlab": "c6i.xlarge", "gateway": "t2.medium", "llm": "g4dn.xlarge"},
    "gcp": {"gitlab": "c2-standard-4", "gateway": "e2-medium", "llm": "n1-standard-4"},
}
DISKS = {"gitlab": 50, "gateway": 20, "llm": 50}
IPS = {"gitlab": "10.42.0.10", "gateway": "10.42.1.11", "llm": "10.42.1.12"}
CUDA_URL = "https://example.com/ferrollama-0.1.0-linux-x86_64-cuda-sm75.tar.gz"
# Docker Hub's tags of the gateway image, as the stand-in lists them (two pages).
HUB_TAGS = {f"self-hosted-v{v}-ee": "sha256:" + hashlib.sha256(v.encode()).hexdigest()
            for v in ("17.5.2", "17.6.0", "17.6.2", "17.6.10", "17.6.9", "17.9.1", "17.10.0")}
HUB_TAGS["self-hosted-v17.6.11-ee-rc1"] = "sha256:" + "1" * 64  # not a release tag


class FakeHub:
    """Docker Hub's tag listing for gitlab/model-gateway: ?name= filters by substring, two
    results a page with `next` links, as the real API pages."""

    def __init__(self):
        self.requests = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                query = parse_qs(url.query)
                hub.requests.append(self.path)
                name = query.get("name", [""])[0]
                page = int(query.get("page", ["1"])[0])
                names = [t for t in HUB_TAGS if name in t]
                chunk = names[(page - 1) * 2: page * 2]
                more = page * 2 < len(names)
                body = {"count": len(names), "results": [{"name": t, "digest": HUB_TAGS[t]} for t in chunk],
                        "next": f"{hub.url}?page_size=100&name={name}&page={page + 1}" if more else None}
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2/namespaces/gitlab/repositories/model-gateway/tags"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub():
    hub = FakeHub()
    yield hub
    hub.close()


@pytest.fixture
def fake_clis(tmp_path, hub):
    """PATH with `aws` and `gcloud` that log their arguments and fail; the gateway's tags from
    the Docker Hub stand-in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "cli-calls.log"
    for cli in ("aws", "gcloud"):
        fake = bin_dir / cli
        fake.write_text(f'#!/bin/sh\necho "{cli} $*" >> {log}\nexit 1\n')
        fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(tmp_path),
               FERROLLAMA_GATEWAY_TAGS_URL=hub.url)
    yield env, log
    assert not log.exists(), "a dry run ran a cloud CLI:\n" + log.read_text()


def run(env, script, *args):
    return subprocess.run([str(DEPLOY / script), *args], env=env, capture_output=True, text=True, timeout=60)


def dry_up(fake_clis, tmp_path, cloud, *extra, name="demo", release=("--ferrollama-url", CUDA_URL,
                                                                     "--ferrollama-sha256", SHA)):
    env, _ = fake_clis
    render = tmp_path / f"render-{cloud}"
    result = run(env, "up.sh", "--cloud", cloud, "--domain", "gitlab.example.com", "--name", name,
                 *release, "--dry-run", "--render-dir", str(render), *extra)
    assert result.returncode == 0, result.stderr
    calls = [shlex.split(line) for line in result.stdout.splitlines()]
    assert calls and all(c[0] == {"aws": "aws", "gcp": "gcloud"}[cloud] for c in calls), result.stdout
    return calls, render, result


def opt(call, flag):
    """The value after FLAG in a call (None when absent)."""
    return call[call.index(flag) + 1] if flag in call else None


def write_files(path):
    """path -> decoded content of a rendered cloud-init file's write_files."""
    doc = yaml.safe_load(path.read_text())
    files = {}
    for f in doc["write_files"]:
        content = f.get("content", "")
        files[f["path"]] = base64.b64decode(content).decode() if f.get("encoding") == "b64" else content
    return files


def everything_rendered(render):
    return "\n".join(p.read_text() + "\n".join(write_files(p).values()) for p in render.glob("*.yaml"))


# --- AWS ---

def aws_role(call):
    for spec in call[call.index("--tag-specifications") + 1:]:
        if spec.startswith("ResourceType=instance,"):
            return spec.split("Key=Name,Value=demo-")[1].rstrip("}]")


def test_aws_instances_types_disks_and_no_public_address(fake_clis, tmp_path):
    calls, render, _ = dry_up(fake_clis, tmp_path, "aws")
    runs = {aws_role(c): c for c in calls if c[1:3] == ["ec2", "run-instances"]}
    assert sorted(runs) == ["gateway", "gitlab", "llm"]
    for role, call in runs.items():
        assert opt(call, "--instance-type") == TYPES["aws"][role]
        assert f"VolumeSize={DISKS[role]}," in opt(call, "--block-device-mappings")
        assert opt(call, "--private-ip-address") == IPS[role]
        assert "--no-associate-public-ip-address" in call and "--associate-public-ip-address" not in call
        # Gzipped (cloud-init unpacks it), as bytes: fileb://, not file://, which reads text.
        assert opt(call, "--user-data") == f"fileb://{render}/{role}.yaml.gz"
        assert gzip.decompress((render / f"{role}.yaml.gz").read_bytes()) == (render / f"{role}.yaml").read_bytes()
        assert (render / f"{role}.yaml.gz").stat().st_size <= 16384  # EC2's user-data limit
    # The only public address goes to GitLab.
    associations = [c for c in calls if c[1:3] == ["ec2", "associate-address"]]
    assert len(associations) == 1 and opt(associations[0], "--instance-id") == "dryrun-instance-gitlab"
    nat = next(c for c in calls if c[1:3] == ["ec2", "create-nat-gateway"])
    assert opt(nat, "--allocation-id") != opt(associations[0], "--allocation-id")
    assert all(opt(c, "--region") == "us-east-1" for c in calls)


def test_aws_ports_5052_and_11434_only_from_the_private_range(fake_clis, tmp_path):
    calls, _, _ = dry_up(fake_clis, tmp_path, "aws")
    rules = [(opt(c, "--group-id"), opt(c, "--port"), opt(c, "--cidr"))
             for c in calls if c[1:3] == ["ec2", "authorize-security-group-ingress"]]
    assert sorted(rules) == sorted([
        ("dryrun-sg-gitlab", "22", "0.0.0.0/0"), ("dryrun-sg-gitlab", "80", "0.0.0.0/0"),
        ("dryrun-sg-gitlab", "443", "0.0.0.0/0"),
        ("dryrun-sg-gateway", "22", PRIVATE), ("dryrun-sg-gateway", "5052", PRIVATE),
        ("dryrun-sg-llm", "22", PRIVATE), ("dryrun-sg-llm", "11434", PRIVATE),
    ])
    runs = {aws_role(c): opt(c, "--security-group-ids") for c in calls if c[1:3] == ["ec2", "run-instances"]}
    assert runs == {"gitlab": "dryrun-sg-gitlab", "gateway": "dryrun-sg-gateway", "llm": "dryrun-sg-llm"}


def test_aws_everything_created_is_tagged(fake_clis, tmp_path):
    calls, _, _ = dry_up(fake_clis, tmp_path, "aws")
    creating = [c for c in calls if c[2].split("-")[0] in ("create", "allocate", "import", "run")
                and c[2] not in ("create-route",)]
    assert len(creating) == 16
    for call in creating:
        specs = call[call.index("--tag-specifications") + 1:]
        specs = [s for s in specs if s.startswith("ResourceType=")]
        assert specs and all("{Key=ferrollama-deploy,Value=demo}" in s for s in specs), call


# --- GCP ---

def test_gcp_instances_types_disks_gpu_and_one_public_address(fake_clis, tmp_path):
    calls, render, _ = dry_up(fake_clis, tmp_path, "gcp", "--project", "my-project")
    creates = {c[4].removeprefix("demo-"): c for c in calls if c[1:4] == ["compute", "instances", "create"]}
    assert sorted(creates) == ["gateway", "gitlab", "llm"]
    for role, call in creates.items():
        assert opt(call, "--machine-type") == TYPES["gcp"][role]
        assert opt(call, "--boot-disk-size") == f"{DISKS[role]}GB"
        assert opt(call, "--private-network-ip") == IPS[role]
        assert opt(call, "--image-family") == "ubuntu-2404-lts-amd64"
        assert opt(call, "--labels") == f"ferrollama-deploy=demo,ferrollama-role={role}"
        assert opt(call, "--metadata-from-file") == f"user-data={render}/{role}.yaml"
        assert opt(call, "--project") == "my-project"
        if role == "gitlab":
            assert opt(call, "--address") == "demo-gitlab-ip" and "--no-address" not in call
        else:
            assert "--no-address" in call and "--address" not in call
    assert opt(creates["llm"], "--accelerator") == "type=nvidia-tesla-t4,count=1"
    assert opt(creates["llm"], "--maintenance-policy") == "TERMINATE"
    assert "--accelerator" not in creates["gitlab"] + creates["gateway"]


def test_gcp_ports_5052_and_11434_only_from_the_private_range(fake_clis, tmp_path):
    calls, _, _ = dry_up(fake_clis, tmp_path, "gcp")
    rules = {c[4]: c for c in calls if c[1:4] == ["compute", "firewall-rules", "create"]}
    allowed = {name: set(opt(c, "--allow").split(",")) for name, c in rules.items()}
    assert allowed == {"demo-gitlab-public": {"tcp:22", "tcp:80", "tcp:443"},
                       "demo-gateway-private": {"tcp:22", "tcp:5052"},
                       "demo-llm-private": {"tcp:22", "tcp:11434"},
                       "demo-iap-ssh": {"tcp:22"}}
    assert opt(rules["demo-gitlab-public"], "--target-tags") == "demo-gitlab"
    for name in ("demo-gateway-private", "demo-llm-private"):
        assert opt(rules[name], "--source-ranges") == PRIVATE
        assert opt(rules[name], "--target-tags") == name.removesuffix("-private")
    # ssh onto the private VMs through IAP: from Google's IAP range, port 22 only.
    assert opt(rules["demo-iap-ssh"], "--source-ranges") == "35.235.240.0/20"
    assert opt(rules["demo-iap-ssh"], "--target-tags") == "demo-gateway,demo-llm"
    # Each VM carries only its own tag, so only GitLab is behind the public rule.
    tags = {c[4]: opt(c, "--tags") for c in calls if c[1:4] == ["compute", "instances", "create"]}
    assert tags == {"demo-gitlab": "demo-gitlab", "demo-gateway": "demo-gateway", "demo-llm": "demo-llm"}


def test_gcp_everything_without_labels_has_the_description(fake_clis, tmp_path):
    calls, _, _ = dry_up(fake_clis, tmp_path, "gcp")
    for call in calls:
        if call[-1] == "create" or "create" in call[:5]:
            if call[2:4] == ["routers", "nats"]:
                continue  # deleted with its router
            assert "--labels" in call or opt(call, "--description") == "ferrollama-deploy=demo", call


# --- cloud-init contents, both clouds ---

@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_bypass_only_with_eval(fake_clis, tmp_path, cloud):
    calls, render, result = dry_up(fake_clis, tmp_path, cloud)
    assert BYPASS not in result.stdout + result.stderr + everything_rendered(render)

    calls, render, result = dry_up(fake_clis, tmp_path, cloud, "--eval")
    assert "must never face the internet" in result.stderr
    env = write_files(render / "gateway.yaml")["/etc/gitlab-ai-gateway/gateway.env"]
    assert f"{BYPASS}=true" in env.splitlines()
    for role in ("gitlab", "llm"):
        assert BYPASS not in (render / f"{role}.yaml").read_text() + "".join(write_files(render / f"{role}.yaml").values())


def test_rendered_roles(fake_clis, tmp_path):
    license_file = tmp_path / "duo.gitlab-license"
    license_file.write_text("LICENCE-DATA\n")
    _, render, _ = dry_up(fake_clis, tmp_path, "aws", "--license", str(license_file),
                          "--gateway-tag", "self-hosted-v17.9.1-ee", "--email", "admin@example.com")

    gitlab = write_files(render / "gitlab.yaml")
    rb = gitlab["/etc/gitlab/gitlab.rb"]
    assert "external_url 'https://gitlab.example.com'" in rb
    assert "letsencrypt['enable'] = true" in rb
    assert "letsencrypt['contact_emails'] = ['admin@example.com']" in rb
    assert "gitlab_rails['env'] = { 'AI_GATEWAY_URL' => 'http://10.42.1.11:5052' }" in rb
    assert "gitlab_rails['initial_license_file'] = '/etc/gitlab/ferrollama.gitlab-license'" in rb
    assert gitlab["/etc/gitlab/ferrollama.gitlab-license"] == "LICENCE-DATA\n"
    settings = gitlab["/etc/ferrollama-deploy/settings.env"]
    # The gateway tag's line: the VM installs its newest GitLab patch (test_firstboot.py).
    assert "GITLAB_VERSION=17.9" in settings.splitlines()
    assert "LLM_URL=http://10.42.1.12:11434" in settings
    # No apt in cloud-init's own modules: on AWS there is no route out until the Elastic IP.
    doc = yaml.safe_load((render / "gitlab.yaml").read_text())
    assert "package_update" not in doc and "packages" not in doc
    assert gitlab["/usr/local/bin/ferrollama-verify"] == (DEPLOY / "verify.sh").read_text()
    assert gitlab["/usr/local/sbin/ferrollama-firstboot"] == (DEPLOY / "firstboot/gitlab.sh").read_text()

    gateway = write_files(render / "gateway.yaml")
    env = gateway["/etc/gitlab-ai-gateway/gateway.env"].splitlines()
    assert "AIGW_GITLAB_URL=https://gitlab.example.com" in env
    assert "AIGW_GITLAB_API_URL=https://gitlab.example.com/api/v4/" in env
    settings = gateway["/etc/ferrollama-deploy/settings.env"].splitlines()
    assert f"GATEWAY_IMAGE=gitlab/model-gateway:self-hosted-v17.9.1-ee@{HUB_TAGS['self-hosted-v17.9.1-ee']}" in settings
    # The gateway calls GitLab by its domain, sent to GitLab's private address.
    assert "DOMAIN=gitlab.example.com" in settings and "GITLAB_IP=10.42.0.10" in settings
    unit = gateway["/usr/local/sbin/ferrollama-firstboot"]
    assert '--add-host "$DOMAIN:$GITLAB_IP"' in unit
    assert "/monitoring/healthz" in unit

    llm = write_files(render / "llm.yaml")
    assert llm["/etc/systemd/system/ferrollama.service"] == (DEPLOY / "systemd/ferrollama.service").read_text()
    assert llm["/usr/local/bin/ferrollama-healthcheck"] == (DEPLOY / "llm-healthcheck.sh").read_text()
    env = llm["/etc/ferrollama/ferrollama.env"].splitlines()
    assert "FERROLLAMA_NAME=mistral:instruct" in env and "OLLAMA_HOST=10.42.1.12:11434" in env
    settings = llm["/etc/ferrollama-deploy/settings.env"]
    assert f"FERROLLAMA_URL='{CUDA_URL}'" in settings and f"FERROLLAMA_SHA256={SHA}" in settings
    assert "FERROLLAMA_BUILD=cuda-sm75" in settings and "NVIDIA_DRIVER=580" in settings
    assert "MODEL_SHA256=ff82381e2bea77d91c1b824c7afb83f6fb73e9f7de9dda631bcdbca564aa5435" in settings
    # The model is a store name that the first boot pulls, pinned to that digest.
    assert "FERROLLAMA_MODEL=mistral:7b-instruct-v0.3-q4_0" in env
    assert "OLLAMA_MODELS=/var/lib/ferrollama/models" in env
    assert "FERROLLAMA_REGISTRY_URL=''" in settings
    # The API key: in the service's environment (root only) and GitLab's settings, the same.
    [key] = [line.split("=", 1)[1] for line in env if line.startswith("FERROLLAMA_API_KEY=")]
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert f"LLM_API_KEY={key}" in gitlab["/etc/ferrollama-deploy/settings.env"].splitlines()
    assert "FERROLLAMA_READ_ONLY=true" in env
    [entry] = [f for f in yaml.safe_load((render / "llm.yaml").read_text())["write_files"]
               if f["path"] == "/etc/ferrollama/ferrollama.env"]
    assert entry["permissions"] == "0600" and entry["owner"] == "root:root"
    firstboot = llm["/usr/local/sbin/ferrollama-firstboot"]
    assert 'ferrollama pull "$FERROLLAMA_MODEL" --model-sha256 "$MODEL_SHA256"' in firstboot
    assert "MODEL_URL" not in firstboot, "the model comes from ferrollama pull, not curl"


def test_model_and_registry_overrides_reach_the_llm_vm(fake_clis, tmp_path):
    _, render, _ = dry_up(fake_clis, tmp_path, "aws", "--model", "mistral:7b-instruct-v0.3-q8_0",
                          "--model-sha256", "a" * 64, "--registry", "https://mirror.example.com")
    llm = write_files(render / "llm.yaml")
    assert "FERROLLAMA_MODEL=mistral:7b-instruct-v0.3-q8_0" in llm["/etc/ferrollama/ferrollama.env"]
    settings = llm["/etc/ferrollama-deploy/settings.env"]
    assert f"MODEL_SHA256={'a' * 64}" in settings
    assert "FERROLLAMA_REGISTRY_URL='https://mirror.example.com'" in settings


def test_without_licence_no_licence_line(fake_clis, tmp_path):
    _, render, result = dry_up(fake_clis, tmp_path, "gcp")
    rb = write_files(render / "gitlab.yaml")["/etc/gitlab/gitlab.rb"]
    assert "initial_license_file" not in rb
    settings = write_files(render / "gitlab.yaml")["/etc/ferrollama-deploy/settings.env"]
    # GitLab 17.6's newest patch, whatever the gateway's (its only 17.6 tag is 17.6.0): the
    # VM picks it from GitLab's repository, and the dry run says so.
    assert "GITLAB_VERSION=17.6" in settings.splitlines()
    assert "GitLab EE package: gitlab-ee 17.6.x, the newest 17.6 patch" in result.stderr
    assert "GitLab 17.6 is out of maintenance" in result.stderr
    assert "LICENSED=false" in settings


def test_one_line_for_gitlab_and_gateway(fake_clis, tmp_path):
    # A newer line: GitLab's newest patch and the gateway's newest tag of that line.
    _, render, result = dry_up(fake_clis, tmp_path, "aws", "--gitlab-version", "17.9")
    assert "GITLAB_VERSION=17.9" in write_files(render / "gitlab.yaml")["/etc/ferrollama-deploy/settings.env"].splitlines()
    assert f"GATEWAY_IMAGE=gitlab/model-gateway:self-hosted-v17.9.1-ee@{HUB_TAGS['self-hosted-v17.9.1-ee']}" in \
        write_files(render / "gateway.yaml")["/etc/ferrollama-deploy/settings.env"].splitlines()
    assert "GitLab EE package: gitlab-ee 17.9.x, the newest 17.9 patch" in result.stderr
    assert "out of maintenance" not in result.stderr
    # An exact version stays exact.
    _, render, result = dry_up(fake_clis, tmp_path, "aws", "--gitlab-version", "17.10.0")
    assert "GITLAB_VERSION=17.10.0" in write_files(render / "gitlab.yaml")["/etc/ferrollama-deploy/settings.env"].splitlines()
    assert "self-hosted-v17.10.0-ee@" in write_files(render / "gateway.yaml")["/etc/ferrollama-deploy/settings.env"]
    assert "GitLab EE package: gitlab-ee=17.10.0-ee.0" in result.stderr


def licence(tmp_path, size=3072):
    """A licence-sized file: a GitLab licence is base64 text of encrypted data, ~2.3-3 KB."""
    path = tmp_path / "duo.gitlab-license"
    raw = base64.encodebytes(os.urandom(size * 3 // 4)).decode()
    path.write_text(raw[:size - 1] + "\n")
    assert path.stat().st_size == size
    return path


def test_an_ec2_render_with_a_3_kb_licence_fits_the_user_data_limit(fake_clis, tmp_path):
    lic = licence(tmp_path)
    calls, render, _ = dry_up(fake_clis, tmp_path, "aws", "--license", str(lic), "--email", "admin@example.com")
    plain = (render / "gitlab.yaml").stat().st_size
    packed = (render / "gitlab.yaml.gz").stat().st_size
    print(f"gitlab.yaml with a 3 KB licence: {plain} bytes, gzipped {packed} bytes")
    assert plain > 16384, "no longer needs compressing: then this test proves nothing"
    assert packed <= 16384
    # What cloud-init unpacks is the whole file, licence included.
    text = gzip.decompress((render / "gitlab.yaml.gz").read_bytes()).decode()
    files = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
    assert base64.b64decode(files["/etc/gitlab/ferrollama.gitlab-license"]["content"]) == lic.read_bytes()
    runs = [c for c in calls if c[1:3] == ["ec2", "run-instances"]]
    assert {opt(c, "--user-data") for c in runs} == {f"fileb://{render}/{r}.yaml.gz" for r in ("gitlab", "gateway", "llm")}


def test_user_data_over_the_limit_even_gzipped_stops_up(fake_clis, tmp_path):
    env, _ = fake_clis
    lic = licence(tmp_path, 40_000)  # random base64 does not compress below 16 KB
    result = run(env, "up.sh", *GOOD, "--license", str(lic), "--dry-run", "--render-dir", str(tmp_path / "r"))
    assert result.returncode == 1 and "gitlab.yaml is" in result.stderr and "gzipped; EC2 user data takes at most 16384" in result.stderr
    assert not any("run-instances" in line for line in result.stdout.splitlines())


def test_nothing_deployed_waits_on_the_gateways_ready_probe():
    # /monitoring/ready never answers 200 on a self-hosted gateway: no script or template may
    # call it (comments that say why may name it).
    for path in [*DEPLOY.rglob("*.sh"), *DEPLOY.glob("cloud-init/*.yaml")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "monitoring/ready" in line:
                assert line.lstrip().startswith("#"), f"{path}:{number}: {line}"


GOOD = ["--cloud", "aws", "--domain", "gitlab.example.com", "--ferrollama-url", CUDA_URL, "--ferrollama-sha256", SHA]


@pytest.mark.parametrize("args, message", [
    ([], "--cloud is required"),
    (["--cloud", "azure", "--domain", "gitlab.example.com"], "--cloud must be aws or gcp"),
    (["--cloud", "aws"], "--domain is required"),
    (["--cloud", "aws", "--domain", "gitlab.example.com"], "--ferrollama-url"),
    (GOOD[:5] + ["https://e.com/ferrollama", "--ferrollama-sha256", SHA], "cannot tell the build"),
    (GOOD + ["--gitlab-version", "17.9", "--gateway-tag", "self-hosted-v17.6"], "GitLab 17.9 does not match gateway self-hosted-v17.6"),
    (GOOD + ["--gitlab-version", "17.6.2", "--gateway-tag", "self-hosted-v17.9.1-ee"], "does not match gateway"),
    (GOOD + ["--gitlab-version", "17.5.0"], "GitLab 17.5 is too old"),
    (GOOD + ["--gitlab-version", "17.5"], "GitLab 17.5 is too old"),
    (GOOD + ["--gitlab-version", "17"], "--gitlab-version must be X.Y or X.Y.Z"),
    (GOOD + ["--name", "Bad_Name"], "--name must be"),
    (GOOD + ["--model", "mistral;rm -rf /"], "is not an Ollama model name"),
    (GOOD + ["--registry", "ftp://mirror"], "--registry must be an http(s) URL"),
    # Before 17.6 the ai_custom_model flag was off by default: refused, line or tag.
    (GOOD + ["--gateway-tag", "self-hosted-v17.5"], "GitLab 17.5 is too old"),
    (GOOD + ["--gateway-tag", "self-hosted-v17.5.2-ee"], "GitLab 17.5 is too old"),
    (GOOD + ["--gateway-tag", "self-hosted-v16.11"], "GitLab 16.11 is too old"),
    (GOOD + ["--gateway-digest", "sha256:" + "0" * 64], "needs one tag"),
    (GOOD + ["--license", "/etc/hostname", "--activation-code", "abc"], "not both"),
])
def test_bad_arguments_make_no_call(fake_clis, args, message):
    env, _ = fake_clis
    result = run(env, "up.sh", *args, "--dry-run")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stdout == ""


# --- down.sh ---

def test_aws_down_deletes_only_what_carries_the_tag(fake_clis):
    env, _ = fake_clis
    result = run(env, "down.sh", "--cloud", "aws", "--name", "demo", "--dry-run")
    assert result.returncode == 0, result.stderr
    calls = [shlex.split(line) for line in result.stdout.splitlines()]
    # First the bucket a local release tarball went to (named after the account and deployment).
    assert calls[0] == ["aws", "sts", "get-caller-identity", "--query", "Account", "--output", "text"]
    assert calls[1][:4] == ["aws", "s3", "rb", "s3://ferrollama-deploy-demo-123456789012"]
    calls = calls[2:]
    listings = [c for c in calls if c[2].startswith("describe-")]
    changes = [c for c in calls if not c[2].startswith("describe-") and c[2] != "wait"]
    assert len(listings) == 9
    for call in listings:
        flag = "--filter" if call[2] == "describe-nat-gateways" else "--filters"
        assert opt(call, flag) == "Name=tag:ferrollama-deploy,Values=demo", call
    # Every change acts on what a listing returned (the dry-run placeholders), nothing else.
    for call in changes:
        ids = [a for a in call[3:] if a.startswith(("i-", "vpc-", "subnet-", "sg-", "igw-", "rtb-", "eipalloc-"))]
        assert not ids and any(a.startswith("dryrun-") for a in call), call
    verbs = [c[2] for c in changes]
    assert verbs[0] == "terminate-instances" and verbs[-1] == "delete-vpc"
    assert not any(v.startswith(("create", "run", "allocate")) for v in verbs)


def test_gcp_down_lists_by_label_or_description(fake_clis):
    env, _ = fake_clis
    result = run(env, "down.sh", "--cloud", "gcp", "--name", "demo", "--dry-run")
    assert result.returncode == 0, result.stderr
    calls = [shlex.split(line) for line in result.stdout.splitlines()]
    assert calls[0] == ["gcloud", "config", "get-value", "project"]
    assert calls[1] == ["gcloud", "storage", "rm", "--recursive", f"gs://{gcp_bucket('demo', 'dryrun-project')}"]
    calls = calls[2:]
    listings = [c for c in calls if "list" in c]
    assert len(listings) == 6
    for call in listings:
        assert opt(call, "--filter") in ("labels.ferrollama-deploy=demo", 'description="ferrollama-deploy=demo"')
    deletes = [c for c in calls if "delete" in c]
    assert [c[2] for c in deletes] == ["instances", "firewall-rules", "addresses", "routers", "networks", "networks"]
    assert all("--quiet" in c and c[c.index("delete") + 1].startswith("dryrun-") for c in deletes)


def test_aws_down_for_real_with_a_fake_cli(tmp_path):
    """Not a dry run: the fake `aws` answers the listings, and down.sh deletes exactly those."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "aws").write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$2" in
  get-caller-identity) echo 123456789012 ;;
  head-bucket) exit 254 ;;
  describe-instances) printf 'i-1\\ti-2\\n' ;;
  describe-nat-gateways) echo nat-1 ;;
  describe-addresses) printf 'eipalloc-1\\teipalloc-2\\n' ;;
  describe-internet-gateways) printf 'igw-1\\tvpc-1\\n' ;;
  describe-subnets) printf 'subnet-1\\tsubnet-2\\n' ;;
  describe-route-tables) echo rtb-1 ;;
  describe-security-groups) echo None ;;
  describe-key-pairs) echo key-1 ;;
  describe-vpcs) echo vpc-1 ;;
esac
""")
    (bin_dir / "aws").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = run(env, "down.sh", "--cloud", "aws", "--name", "demo", "--region", "eu-west-1")
    assert result.returncode == 0, result.stderr
    changes = [line.replace(" --region eu-west-1", "") for line in log.read_text().splitlines()
               if not line.split()[1].startswith(("describe-", "get-caller-identity", "head-bucket"))]
    assert changes == [
        "ec2 terminate-instances --instance-ids i-1 i-2",
        "ec2 wait instance-terminated --instance-ids i-1 i-2",
        "ec2 delete-nat-gateway --nat-gateway-id nat-1",
        "ec2 wait nat-gateway-deleted --nat-gateway-ids nat-1",
        "ec2 release-address --allocation-id eipalloc-1",
        "ec2 release-address --allocation-id eipalloc-2",
        "ec2 detach-internet-gateway --internet-gateway-id igw-1 --vpc-id vpc-1",
        "ec2 delete-internet-gateway --internet-gateway-id igw-1",
        "ec2 delete-subnet --subnet-id subnet-1",
        "ec2 delete-subnet --subnet-id subnet-2",
        "ec2 delete-route-table --route-table-id rtb-1",
        "ec2 delete-key-pair --key-pair-id key-1",
        "ec2 delete-vpc --vpc-id vpc-1",
    ]


# --- the gateway image, the release tarball, the licence ---

def test_the_newest_patch_is_pinned_by_digest_and_a_given_digest_skips_the_lookup(fake_clis, tmp_path, hub):
    _, render, result = dry_up(fake_clis, tmp_path, "aws")
    image = f"gitlab/model-gateway:self-hosted-v17.6.10-ee@{HUB_TAGS['self-hosted-v17.6.10-ee']}"
    assert f"GATEWAY_IMAGE={image}" in write_files(render / "gateway.yaml")["/etc/ferrollama-deploy/settings.env"]
    assert image in result.stderr  # said aloud
    assert len(hub.requests) >= 2  # the listing has more than one page

    hub.requests.clear()
    digest = "sha256:" + "c" * 64
    _, render, _ = dry_up(fake_clis, tmp_path, "aws", "--gateway-tag", "self-hosted-v17.6.2-ee",
                          "--gateway-digest", digest)
    assert f"GATEWAY_IMAGE=gitlab/model-gateway:self-hosted-v17.6.2-ee@{digest}" in \
        write_files(render / "gateway.yaml")["/etc/ferrollama-deploy/settings.env"]
    assert hub.requests == []


def test_a_tag_the_hub_does_not_list_stops_up(fake_clis, tmp_path):
    env, log = fake_clis
    result = run(env, "up.sh", *GOOD, "--gateway-tag", "self-hosted-v17.7", "--dry-run")
    assert result.returncode == 1 and "no gateway image matches self-hosted-v17.7" in result.stderr
    assert result.stdout == ""


def gcp_bucket(name, project):
    """lib.sh's bucket_name for GCP: the project ID enters as 12 hex digits of its sha256."""
    return f"ferrollama-deploy-{name}-{hashlib.sha256(project.encode()).hexdigest()[:12]}"


def test_gcp_bucket_names_stay_valid_for_any_project(fake_clis, tmp_path):
    # Deployment names take 20 characters and project IDs 30: the bucket name still fits 63,
    # and a project ID with "google" in it (refused in bucket names) does not reach it.
    tarball, _ = release_tarball(tmp_path, "cuda-sm75")
    project = "my-google-project-123456789012"
    name = "a" * 20
    calls, _, _ = dry_up(fake_clis, tmp_path, "gcp", "--project", project, name=name,
                         release=("--ferrollama-tarball", str(tarball)))
    [create] = [c for c in calls if c[1:4] == ["storage", "buckets", "create"]]
    bucket = create[4].removeprefix("gs://")
    assert bucket == gcp_bucket(name, project) and len(bucket) <= 63 and "google" not in bucket
    env, _ = fake_clis
    down = run(env, "down.sh", "--cloud", "gcp", "--name", name, "--project", project, "--dry-run")
    assert ["gcloud", "storage", "rm", "--recursive", f"gs://{bucket}", "--project", project] in \
        [shlex.split(line) for line in down.stdout.splitlines()]


def release_tarball(tmp_path, build):
    """A release as deploy/release.sh lays it out (a stand-in binary), with its .sha256."""
    name = f"ferrollama-0.1.0-linux-x86_64-{build}"
    path = tmp_path / f"{name}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member, data in ((f"{name}/ferrollama", b"#!/bin/sh\n"), (f"{name}/MANIFEST", f"build={build}\n".encode())):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / f"{name}.tar.gz.sha256").write_text(f"{digest}  {name}.tar.gz\n")
    return path, digest


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_a_local_cuda_tarball_is_uploaded_and_the_llm_role_takes_the_cuda_build(fake_clis, tmp_path, cloud):
    tarball, digest = release_tarball(tmp_path, "cuda-sm75")
    calls, render, result = dry_up(fake_clis, tmp_path, cloud, "--region", "eu-west-1" if cloud == "aws" else "europe-west4",
                                   release=("--ferrollama-tarball", str(tarball)))
    settings = write_files(render / "llm.yaml")["/etc/ferrollama-deploy/settings.env"]
    assert f"FERROLLAMA_SHA256={digest}" in settings and "FERROLLAMA_BUILD=cuda-sm75" in settings
    assert "NVIDIA_DRIVER=580" in settings
    if cloud == "aws":
        bucket = "ferrollama-deploy-demo-123456789012"
        create = next(c for c in calls if c[1:3] == ["s3api", "create-bucket"])
        assert opt(create, "--bucket") == bucket
        assert opt(create, "--create-bucket-configuration") == "LocationConstraint=eu-west-1"
        assert ["aws", "s3", "cp", "--region", "eu-west-1", str(tarball), f"s3://{bucket}/{tarball.name}"] in calls
        presign = next(c for c in calls if c[1:3] == ["s3", "presign"])
        assert opt(presign, "--expires-in") == "21600"
        assert f"FERROLLAMA_URL='https://{bucket}.s3.amazonaws.com/{tarball.name}?X-Amz-Signature=dryrun'" in settings
    else:
        bucket = f"gs://{gcp_bucket('demo', 'dryrun-project')}"
        assert ["gcloud", "storage", "cp", str(tarball), f"{bucket}/{tarball.name}", "--project", "dryrun-project"] in calls
        # The VM reads it as the project's default compute service account: granted here.
        [grant] = [c for c in calls if c[1:4] == ["storage", "buckets", "add-iam-policy-binding"]]
        assert grant[4] == bucket and opt(grant, "--role") == "roles/storage.objectViewer"
        assert opt(grant, "--member") == "serviceAccount:123456789012-compute@developer.gserviceaccount.com"
        assert ["gcloud", "projects", "describe", "dryrun-project", "--format", "value(projectNumber)"] in calls
        assert calls.index(grant) < next(i for i, c in enumerate(calls) if c[1:3] == ["storage", "cp"])
        assert f"FERROLLAMA_URL='{bucket}/{tarball.name}'" in settings
    # The uploads come before any VM exists.
    first_vm = next(i for i, c in enumerate(calls) if "run-instances" in c or c[1:4] == ["compute", "instances", "create"])
    upload = next(i for i, c in enumerate(calls) if c[1:3] in (["s3", "cp"], ["storage", "cp"]))
    assert upload < first_vm
    firstboot = write_files(render / "llm.yaml")["/usr/local/sbin/ferrollama-firstboot"]
    assert 'if [[ "$FERROLLAMA_BUILD" == cuda-* ]]; then' in firstboot
    assert "libcublas-13-0" in firstboot and "FERROLLAMA_DEVICE=$device" in firstboot
    assert "metadata.google.internal" in firstboot  # how a gs:// release is read


def test_a_cpu_tarball_is_served_on_the_cpu_with_a_warning(fake_clis, tmp_path):
    tarball, _ = release_tarball(tmp_path, "cpu")
    _, render, result = dry_up(fake_clis, tmp_path, "aws", release=("--ferrollama-tarball", str(tarball)))
    assert "misses the AI gateway's and GitLab's 30 s timeouts" in result.stderr
    assert "FERROLLAMA_BUILD=cpu" in write_files(render / "llm.yaml")["/etc/ferrollama-deploy/settings.env"]


def test_a_tarball_that_does_not_match_its_digest_is_refused(fake_clis, tmp_path):
    env, _ = fake_clis
    tarball, _ = release_tarball(tmp_path, "cuda-sm75")
    tarball.write_bytes(tarball.read_bytes() + b"x")
    result = run(env, "up.sh", *GOOD[:4], "--ferrollama-tarball", str(tarball), "--dry-run")
    assert result.returncode == 2 and "does not match its .sha256 file" in result.stderr
    assert result.stdout == ""


def test_an_activation_code_reaches_the_install_and_the_duo_provisioning_runs(fake_clis, tmp_path):
    _, render, _ = dry_up(fake_clis, tmp_path, "gcp", "--activation-code", "AbC123")
    gitlab = write_files(render / "gitlab.yaml")
    settings = gitlab["/etc/ferrollama-deploy/settings.env"].splitlines()
    assert "ACTIVATION_CODE=AbC123" in settings and "LICENSED=true" in settings
    assert "initial_license_file" not in gitlab["/etc/gitlab/gitlab.rb"]
    firstboot = gitlab["/usr/local/sbin/ferrollama-firstboot"]
    assert 'GITLAB_ACTIVATION_CODE="${ACTIVATION_CODE:-}"' in firstboot and "ferrollama-provision-duo" in firstboot
    assert gitlab["/usr/local/sbin/ferrollama-provision-duo"] == (DEPLOY / "firstboot/provision-duo.sh").read_text()
