#!/usr/bin/env bash
# First boot of the llm VM (run by cloud-init): NVIDIA driver, the ferrollama binary
# (checksum-verified), the model (`ferrollama pull`, every blob verified, the model layer held
# to the pinned sha256), then the systemd unit. Safe to run again: verified files are kept. Settings come from /etc/ferrollama-deploy/settings.env, written by cloud-init.
#
# Seam for the container image: when Dockerfile.cuda exists, install the NVIDIA container
# toolkit and pull the image here instead of the binary, and run `docker run --gpus all
# --network host --env-file /etc/ferrollama/ferrollama.env IMAGE serve ...` from the unit.
set -euo pipefail
# shellcheck source=/dev/null
. /etc/ferrollama-deploy/settings.env
# shellcheck source=/dev/null
. /etc/ferrollama/ferrollama.env

# fetch URL SHA256 DEST: download unless DEST already has that checksum; never keep a bad file.
fetch() {
  local url="$1" sum="$2" dest="$3"
  if [ -f "$dest" ] && echo "$sum  $dest" | sha256sum --check --status; then
    echo "$dest: present, checksum ok"; return 0
  fi
  mkdir -p "$(dirname "$dest")"
  curl -fL --retry 5 --retry-delay 10 -o "$dest.part" "$url"
  echo "$sum  $dest.part" | sha256sum --check --status \
    || { rm -f "$dest.part"; echo "checksum mismatch for $url" >&2; exit 1; }
  mv "$dest.part" "$dest"
}

# Ubuntu's headless server driver for the T4: precompiled, signed kernel modules.
ubuntu-drivers install --gpgpu "nvidia:${NVIDIA_DRIVER}-server"
DEBIAN_FRONTEND=noninteractive apt-get install -y "nvidia-utils-${NVIDIA_DRIVER}-server"

id ferrollama >/dev/null 2>&1 \
  || useradd --system --home-dir /var/lib/ferrollama --shell /usr/sbin/nologin ferrollama

fetch "$FERROLLAMA_URL" "$FERROLLAMA_SHA256" /usr/local/bin/ferrollama
chmod 0755 /usr/local/bin/ferrollama
# The model goes into the Ollama-layout store the unit serves from, as `ollama pull` would: each
# blob's sha256 is checked as it streams, a cut transfer resumes, a second run fetches nothing
# new, and a model layer other than the pinned one fails the boot.
install -d -o ferrollama -g ferrollama "$OLLAMA_MODELS"
runuser -u ferrollama -- env OLLAMA_MODELS="$OLLAMA_MODELS" \
  FERROLLAMA_REGISTRY_URL="${FERROLLAMA_REGISTRY_URL:-}" \
  /usr/local/bin/ferrollama pull "$FERROLLAMA_MODEL" --model-sha256 "$MODEL_SHA256"

systemctl daemon-reload
systemctl enable ferrollama.service
if nvidia-smi >/dev/null 2>&1; then
  systemctl restart ferrollama.service
  ferrollama-healthcheck --wait 900
else
  # cloud-init's power_state reboots when this marker exists; the unit starts after the reboot.
  mkdir -p /run/ferrollama-deploy && touch /run/ferrollama-deploy/reboot
  echo "NVIDIA driver installed; rebooting to load it"
fi
