"""deploy/release.sh packs the CPU build (the binary the suite has just built: cargo finds it up
to date) into the tarball up.sh takes, and up.sh reads the build from it.

The CUDA tarballs go through the same packing; building them needs the CUDA toolchain
(tests/cuda.sh builds that binary), so this test packs the CPU one only.
"""
import hashlib
import os
import pathlib
import re
import subprocess
import tarfile

from test_dry_run import FakeHub, write_files
from test_firstboot import FIRSTBOOT, stand_ins

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_cpu_release_tarball_has_its_digest_and_manifest_and_up_takes_it(tmp_path):
    binary = pathlib.Path(os.environ["FERROLLAMA_BIN"])
    env = dict(os.environ, CARGO_TARGET_DIR=str(binary.parents[1]))
    result = subprocess.run([str(ROOT / "deploy/release.sh"), "--out", str(tmp_path / "dist"), "cpu"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    [tarball] = (tmp_path / "dist").glob("ferrollama-*-linux-x86_64-cpu.tar.gz")
    digest, name = (tmp_path / "dist" / f"{tarball.name}.sha256").read_text().split()
    assert name == tarball.name and digest == hashlib.sha256(tarball.read_bytes()).hexdigest()

    with tarfile.open(tarball) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    top = tmp_path / "x" / tarball.name.removesuffix(".tar.gz")
    assert sorted(p.name for p in top.iterdir()) == ["Dockerfile.cuda", "MANIFEST", "README.md", "ferrollama"]
    manifest = dict(line.split("=", 1) for line in (top / "MANIFEST").read_text().splitlines())
    assert manifest["build"] == "cpu" and manifest["name"] == top.name
    assert manifest["binary_sha256"] == hashlib.sha256((top / "ferrollama").read_bytes()).hexdigest()
    assert manifest["version"] in top.name
    # The glibc it needs: the newest GLIBC_ symbol version the binary links (the build host's
    # glibc or older), and the compiler it was built with.
    symbols = subprocess.run(["objdump", "-T", str(top / "ferrollama")], capture_output=True, text=True, check=True).stdout
    versions = {tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([0-9][0-9.]*[0-9])", symbols)}
    assert manifest["glibc"] == ".".join(map(str, max(versions)))
    host = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stdout.splitlines()[0].split()[-1]
    assert tuple(int(x) for x in manifest["glibc"].split(".")) <= tuple(int(x) for x in host.split("."))
    assert manifest["rustc"].startswith("rustc ")
    # Stripped, and it runs.
    assert (top / "ferrollama").stat().st_size < binary.stat().st_size
    version = subprocess.run([str(top / "ferrollama"), "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and manifest["version"] in version.stdout

    hub = FakeHub()
    try:
        render = tmp_path / "render"
        up = subprocess.run([str(ROOT / "deploy/up.sh"), "--cloud", "aws", "--domain", "gitlab.example.com",
                             "--ferrollama-tarball", str(tarball), "--dry-run", "--render-dir", str(render)],
                            env=dict(os.environ, FERROLLAMA_GATEWAY_TAGS_URL=hub.url, HOME=str(tmp_path)),
                            capture_output=True, text=True, timeout=60)
    finally:
        hub.close()
    assert up.returncode == 0, up.stderr
    settings = write_files(render / "llm.yaml")["/etc/ferrollama-deploy/settings.env"]
    assert f"FERROLLAMA_SHA256={digest}" in settings and "FERROLLAMA_BUILD=cpu" in settings


def test_the_llm_vm_checks_the_releases_glibc(tmp_path):
    """The tarball release.sh made, through the llm VM's first boot (tmp_path standing in for /):
    accepted on this system, refused on one whose glibc is older than its MANIFEST says."""
    binary = pathlib.Path(os.environ["FERROLLAMA_BIN"])
    env = dict(os.environ, CARGO_TARGET_DIR=str(binary.parents[1]))
    made = subprocess.run([str(ROOT / "deploy/release.sh"), "--out", str(tmp_path / "dist"), "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stdout + made.stderr
    [tarball] = (tmp_path / "dist").glob("ferrollama-*-linux-x86_64-cpu.tar.gz")
    digest = (tmp_path / "dist" / f"{tarball.name}.sha256").read_text().split()[0]
    with tarfile.open(tarball) as tar:
        name = tar.getnames()[0].split("/")[0]
        manifest = dict(line.split("=", 1) for line in tar.extractfile(f"{name}/MANIFEST").read().decode().splitlines())
    major, minor = (int(x) for x in manifest["glibc"].split(".")[:2])

    def boot(case, ldd):
        root = tmp_path / case
        for d in ("etc/ferrollama-deploy", "etc/ferrollama", "usr/local/bin"):
            (root / d).mkdir(parents=True)
        (root / "etc/ferrollama-deploy/settings.env").write_text(
            f"FERROLLAMA_URL='file://{tarball}'\nFERROLLAMA_SHA256={digest}\nFERROLLAMA_BUILD=cpu\n")
        (root / "etc/ferrollama/ferrollama.env").write_text(f"OLLAMA_MODELS={root}/models\n")
        scripts = {"id": "exit 1", "useradd": "exit 97"} | ({"ldd": f"echo 'ldd (GLIBC) {ldd}'"} if ldd else {})
        path, _ = stand_ins(root, scripts)
        result = subprocess.run(["bash", str(FIRSTBOOT / "llm.sh")], capture_output=True, text=True, timeout=120,
                                env=dict(os.environ, PATH=path, FERROLLAMA_FIRSTBOOT_ROOT=str(root)))
        return result, root

    # This system's own ldd: it built the binary, so it runs it (97: on to the service user).
    result, root = boot("here", None)
    assert result.returncode == 97, result.stdout + result.stderr
    assert (root / "opt/ferrollama" / name / "ferrollama").is_file()
    # One minor release older than the MANIFEST's: refused, nothing installed.
    result, root = boot("older", f"{major}.{minor - 1}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"the release needs glibc {manifest['glibc']} or newer; this system has {major}.{minor - 1}" in result.stderr
    assert not (root / "opt").exists()
