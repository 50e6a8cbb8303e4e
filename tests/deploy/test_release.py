"""deploy/release.sh packs the CPU build (the binary the suite has just built: cargo finds it up
to date) into the tarball up.sh takes, and up.sh reads the build from it.

The CUDA tarballs go through the same packing; building them needs the CUDA toolchain
(tests/cuda.sh builds that binary), so this test packs the CPU one only.
"""
import hashlib
import os
import pathlib
import subprocess
import tarfile

from test_dry_run import FakeHub, write_files

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
