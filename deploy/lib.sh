# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this
# Shared by up.sh and down.sh: the fixed layout of the deployment, messages, and the one
# function that runs (or, with --dry-run, only prints) a cloud CLI call.

# The private network. Fixed addresses make every script and cloud-init file deterministic:
# GitLab sits in the public subnet, the gateway and the GPU box in the private one.
PRIVATE_CIDR=10.42.0.0/16
PUBLIC_SUBNET_CIDR=10.42.0.0/24   # AWS: GitLab and the NAT gateway
PRIVATE_SUBNET_CIDR=10.42.1.0/24  # AWS: gateway and llm (GCP uses one subnet, PRIVATE_CIDR)
GITLAB_IP=10.42.0.10
GATEWAY_IP=10.42.1.11
LLM_IP=10.42.1.12
GATEWAY_PORT=5052
LLM_PORT=11434
# Google's Identity-Aware Proxy connects from here for `gcloud compute ssh --tunnel-through-iap`.
IAP_CIDR=35.235.240.0/20

# Every resource carries this tag (AWS) / label or description (GCP) with the deployment name,
# so down.sh finds exactly what up.sh made.
TAG_KEY=ferrollama-deploy

# Instance types from GitLab's guide: role -> type, per cloud; disks in GB.
AWS_TYPE_gitlab=c6i.xlarge
AWS_TYPE_gateway=t2.medium
AWS_TYPE_llm=g4dn.xlarge
GCP_TYPE_gitlab=c2-standard-4
GCP_TYPE_gateway=e2-medium
GCP_TYPE_llm=n1-standard-4
GCP_LLM_ACCELERATOR=type=nvidia-tesla-t4,count=1
DISK_GB_gitlab=50
DISK_GB_gateway=20
DISK_GB_llm=50

DRY_RUN=false

die() { echo "error: $*" >&2; exit 1; }
usage_error() { echo "error: $*" >&2; echo "run with --help for usage" >&2; exit 2; }
log() { echo "==> $*" >&2; }
warn() { echo "WARNING: $*" >&2; }

# Quote one word for a shell only when it needs it, so dry-run lines stay readable.
shell_quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

print_call() {
  local out="" word
  for word in "$@"; do out+="$(shell_quote "$word") "; done
  # fd 3 is the script's stdout, so calls inside $(...) still print where the user sees them.
  echo "${out% }" >&3
}

# cloud CMD...: run a cloud CLI call, or print it under --dry-run.
cloud() {
  if [ "$DRY_RUN" = true ]; then print_call "$@"; else "$@"; fi
}

# cloud_out PLACEHOLDER CMD...: like cloud, for calls whose output the script needs; under
# --dry-run the placeholder stands in for that output.
cloud_out() {
  local placeholder="$1"; shift
  if [ "$DRY_RUN" = true ]; then print_call "$@"; echo "$placeholder"; else "$@"; fi
}

# The bucket a local release tarball goes to (up.sh) and that down.sh deletes: S3 and GCS names
# take at most 63 characters, and GCS refuses names with "google" in them, so a GCP project ID
# (up to 30 characters, any words) enters as a short hash. The AWS account is 12 digits.
bucket_name() { # aws|gcp DEPLOYMENT ACCOUNT_OR_PROJECT
  if [ "$1" = aws ]; then
    echo "$TAG_KEY-$2-$3"
  else
    echo "$TAG_KEY-$2-$(printf '%s' "$3" | sha256sum | cut -c 1-12)"
  fi
}

# Deployment names become parts of cloud resource names and GCP label values.
check_name() {
  [[ "$1" =~ ^[a-z][a-z0-9-]{0,19}$ ]] || usage_error "--name must be lowercase letters, digits and dashes (at most 20), got '$1'"
}

# GitLab's AI gateway image, and where its tags are listed (Docker Hub's API; the tests point
# this at a local stand-in).
GATEWAY_REPO=gitlab/model-gateway
GATEWAY_TAGS_URL="${FERROLLAMA_GATEWAY_TAGS_URL:-https://hub.docker.com/v2/namespaces/gitlab/repositories/model-gateway/tags}"

# newest_gateway_tag LINE_OR_TAG: print "TAG DIGEST" for one tag (self-hosted-v17.6.3-ee), or
# for the newest patch of a line (self-hosted-v17.6); fail when none is listed.
newest_gateway_tag() {
  local want="$1" url page=0 tags="" body
  url="$GATEWAY_TAGS_URL?page_size=100&name=${want%-ee}"
  while [ -n "$url" ] && [ "$page" -lt 20 ]; do
    body="$(curl -fsS --max-time 30 "$url")" || return 1
    tags+="$(jq -r '.results[] | select(.digest != null) | "\(.name) \(.digest)"' <<<"$body")"$'\n'
    url="$(jq -r '.next // empty' <<<"$body")"
    page=$((page + 1))
  done
  # Only tags of exactly this line or tag; `sort -V` puts the newest patch last.
  grep -E "^${want%-ee}(\\.[0-9]+)?-ee sha256:[0-9a-f]{64}\$" <<<"$tags" | sort -V | tail -n 1 | grep .
}
