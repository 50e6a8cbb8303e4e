#!/usr/bin/env bash
# First boot of the llm VM (run by cloud-init): the ferrollama release tarball
# (checksum-verified), for the CUDA build the NVIDIA driver and the CUDA 13 libraries it links,
# the model (`ferrollama pull`, every blob verified, the model layer held to the pinned sha256),
# then the systemd unit. Safe to run again: verified files are kept. Settings come from
# /etc/ferrollama-deploy/settings.env, written by cloud-init.
set -euo pipefail
# The tests run this script against a directory that stands in for / (the files it reads and
# writes up to the service user); on the VM it is / itself.
root="${FERROLLAMA_FIRSTBOOT_ROOT:-}"
# shellcheck source=/dev/null
. "$root/etc/ferrollama-deploy/settings.env"
# shellcheck source=/dev/null
. "$root/etc/ferrollama/ferrollama.env"

# download URL DEST: https as it is; gs://BUCKET/OBJECT (a release up.sh uploaded on GCP) with
# this VM's service-account token from the metadata server.
download() {
  local url="$1" dest="$2" token
  if [[ "$url" =~ ^gs://([^/]+)/(.+)$ ]]; then
    token="$(curl -fsS -H 'Metadata-Flavor: Google' \
      http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token | jq -r .access_token)"
    curl -fL --retry 5 --retry-delay 10 -o "$dest" \
      --config <(printf 'header = "Authorization: Bearer %s"\n' "$token") \
      "https://storage.googleapis.com/${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
  else
    curl -fL --retry 5 --retry-delay 10 -o "$dest" "$url"
  fi
}

# fetch URL SHA256 DEST: download unless DEST already has that checksum; never keep a bad file.
fetch() {
  local url="$1" sum="$2" dest="$3"
  if [ -f "$dest" ] && echo "$sum  $dest" | sha256sum --check --status; then
    echo "$dest: present, checksum ok"; return 0
  fi
  mkdir -p "$(dirname "$dest")"
  download "$url" "$dest.part"
  echo "$sum  $dest.part" | sha256sum --check --status \
    || { rm -f "$dest.part"; echo "checksum mismatch for $url" >&2; exit 1; }
  mv "$dest.part" "$dest"
}

# The release: a tarball from deploy/release.sh, its binary linked into /usr/local/bin, once
# its MANIFEST says it is the build up.sh chose and this system has the glibc it needs.
tarball="$root/var/cache/ferrollama/release.tar.gz"
fetch "$FERROLLAMA_URL" "$FERROLLAMA_SHA256" "$tarball"
# awk reads the whole listing: `head -n 1` would leave tar writing into a closed pipe (SIGPIPE,
# which pipefail turns into a failed boot).
release_dir="$(tar -tzf "$tarball" | awk -F/ 'NR == 1 { print $1 }')"
manifest="$(tar -xzOf "$tarball" "$release_dir/MANIFEST")"
grep -qx "build=$FERROLLAMA_BUILD" <<<"$manifest" \
  || { echo "the release's MANIFEST does not say build=$FERROLLAMA_BUILD" >&2; exit 1; }
# The binary needs the glibc of the system it was built on, or newer; with an older one it
# stops at start with "version GLIBC_2.xx not found". release.sh records it (glibc=).
needed="$(sed -n 's/^glibc=//p' <<<"$manifest")"
[ -n "$needed" ] || { echo "the release's MANIFEST names no glibc: make it with deploy/release.sh" >&2; exit 1; }
have="$(ldd --version | awk 'NR == 1 { print $NF }')"
if [ "$(printf '%s\n' "$needed" "$have" | sort -V | tail -n 1)" != "$have" ]; then
  echo "the release needs glibc $needed or newer; this system has $have: build it on an older system (see the README)" >&2
  exit 1
fi
echo "release $release_dir: build $FERROLLAMA_BUILD, needs glibc $needed (this system has $have)"
install -d "$root/opt/ferrollama"
tar -xzf "$tarball" -C "$root/opt/ferrollama"
ln -sfn "/opt/ferrollama/$release_dir/ferrollama" "$root/usr/local/bin/ferrollama"

if [[ "$FERROLLAMA_BUILD" == cuda-* ]]; then
  # Ubuntu's headless server driver for the T4 (precompiled, signed kernel modules); the CUDA
  # 13 build needs branch 580 or later. Then the CUDA runtime libraries the binary links
  # (cudart, cuBLAS, cuRAND; NVRTC for candle's kernels) from NVIDIA's Ubuntu repository.
  ubuntu-drivers install --gpgpu "nvidia:${NVIDIA_DRIVER}-server"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "nvidia-utils-${NVIDIA_DRIVER}-server"
  if ! dpkg -s cuda-keyring >/dev/null 2>&1; then
    curl -fsSL -o /tmp/cuda-keyring.deb \
      https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/cuda-keyring_1.1-1_all.deb
    dpkg -i /tmp/cuda-keyring.deb
    apt-get update
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    cuda-cudart-13-0 libcublas-13-0 libcurand-13-0 cuda-nvrtc-13-0
  echo /usr/local/cuda-13.0/targets/x86_64-linux/lib >/etc/ld.so.conf.d/cuda-13-0.conf
  ldconfig
  device=cuda
else
  device=cpu
fi
# The unit's environment says which device to serve on.
sed -i '/^FERROLLAMA_DEVICE=/d' "$root/etc/ferrollama/ferrollama.env"
echo "FERROLLAMA_DEVICE=$device" >>"$root/etc/ferrollama/ferrollama.env"

id ferrollama >/dev/null 2>&1 \
  || useradd --system --home-dir /var/lib/ferrollama --shell /usr/sbin/nologin ferrollama

# The model goes into the Ollama-layout store the unit serves from, as `ollama pull` would: each
# blob's sha256 is checked as it streams, a cut transfer resumes, a second run fetches nothing
# new, and a model layer other than the pinned one fails the boot.
install -d -o ferrollama -g ferrollama "$OLLAMA_MODELS"
runuser -u ferrollama -- env OLLAMA_MODELS="$OLLAMA_MODELS" \
  FERROLLAMA_REGISTRY_URL="${FERROLLAMA_REGISTRY_URL:-}" \
  /usr/local/bin/ferrollama pull "$FERROLLAMA_MODEL" --model-sha256 "$MODEL_SHA256"

systemctl daemon-reload
systemctl enable ferrollama.service
if [ "$device" = cpu ] || nvidia-smi >/dev/null 2>&1; then
  systemctl restart ferrollama.service
  ferrollama-healthcheck --wait 900
else
  # cloud-init's power_state reboots when this marker exists; the unit starts after the reboot.
  mkdir -p /run/ferrollama-deploy && touch /run/ferrollama-deploy/reboot
  echo "NVIDIA driver installed; rebooting to load it"
fi
