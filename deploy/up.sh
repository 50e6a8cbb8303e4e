#!/usr/bin/env bash
# Creates GitLab Duo Self-Hosted on three VMs with the cloud's own CLI: a private network, the
# firewall rules, GitLab's static IP, then the llm, gateway and GitLab VMs, each configured by
# its cloud-init file in deploy/cloud-init/. Finally runs configure-gitlab.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
exec 3>&1
umask 077  # the rendered cloud-init files hold the secrets

usage() {
  cat <<'EOF'
Usage: deploy/up.sh --cloud aws|gcp --domain gitlab.example.com
         (--ferrollama-url URL --ferrollama-sha256 SHA256 | --ferrollama-tarball FILE) [options]

Creates the network, firewall rules, static IP and three Ubuntu 24.04 VMs (GitLab, AI gateway,
ferrollama on an NVIDIA T4), then configures GitLab Duo Self-Hosted over GitLab's API.

Required:
  --cloud aws|gcp            which cloud (uses the `aws` or `gcloud` CLI, already logged in)
  --domain NAME              GitLab's domain; up.sh waits until it resolves to the static IP
  --ferrollama-url URL       a ferrollama release tarball (deploy/release.sh) for the llm VM
  --ferrollama-sha256 SUM    its sha256
  --ferrollama-tarball FILE  or a local release tarball (its .sha256 file beside it): up.sh
                             uploads it to a bucket of the deployment's and the llm VM fetches it
                             from there. A CUDA tarball (ferrollama-*-cuda-smNN) installs the
                             NVIDIA driver and CUDA 13 libraries and serves on the GPU
Options:
  --name NAME                deployment name, prefix and tag of every resource (default ferrollama)
  --region REGION            default us-east-1 (aws) or us-central1 (gcp)
  --zone ZONE                default REGIONa (aws) or REGION-a (gcp)
  --project ID               GCP project (default: gcloud's configured project)
  --gitlab-version X.Y[.Z]   GitLab EE: a line, X.Y (default 17.6, which is out of maintenance:
                             see the README), whose newest X.Y.Z package the GitLab VM installs
                             from GitLab's apt repository at first boot; or exactly X.Y.Z.
                             17.6 or later
  --gateway-tag TAG          AI gateway image: a line, self-hosted-vX.Y (default: GitLab's line,
                             its newest patch, looked up on Docker Hub), or one tag,
                             self-hosted-vX.Y.Z-ee; same major.minor as GitLab. The image is
                             pinned by digest
  --gateway-digest SHA256    the tag's digest (sha256:...), instead of looking it up
  --license FILE             GitLab licence file (Ultimate + Duo Enterprise), installed at first boot
  --activation-code CODE     or a cloud licence's activation code (GITLAB_ACTIVATION_CODE at install)
  --email ADDRESS            Let's Encrypt contact address
  --ssh-key FILE             public key for the VMs (aws; default ~/.ssh/id_ed25519.pub)
  --model NAME               the Ollama name `ferrollama pull` fetches on the llm VM
                             (default mistral:7b-instruct-v0.3-q4_0, Mistral-7B-Instruct-v0.3 Q4_0)
  --model-sha256 SUM         the sha256 its model layer must have (default: that Q4_0 blob's)
  --registry URL             an Ollama registry mirror to pull from (default: registry.ollama.ai)
  --nvidia-driver VERSION    Ubuntu's NVIDIA server driver branch (default 580: CUDA 13 needs 580+)
  --eval                     AIGW_AUTH__BYPASS_EXTERNAL=true on the gateway: evaluation only
  --dns-timeout SECONDS      how long to wait for the domain to resolve (default 1800)
  --no-configure             do not run configure-gitlab.sh at the end
  --render-dir DIR           keep the rendered cloud-init files in DIR
  --dry-run                  print every cloud CLI call (one a line) instead of making it
  -h, --help                 this text
EOF
}

cloud_name="" domain="" name=ferrollama region="" zone="" project=""
gateway_tag="" gateway_digest="" gitlab_version="" license="" activation_code="" email=""
ssh_key="$HOME/.ssh/id_ed25519.pub"
ferrollama_url="" ferrollama_sha256="" ferrollama_tarball=""
# Ollama's own mistral:7b-instruct-v0.3-q4_0, pulled by ferrollama on the llm VM; the pull
# fails unless its model layer is this blob, so a tag that moves cannot change the model.
model=mistral:7b-instruct-v0.3-q4_0
model_sha256=ff82381e2bea77d91c1b824c7afb83f6fb73e9f7de9dda631bcdbca564aa5435
registry_url=""
nvidia_driver=580 eval_mode=false dns_timeout=1800 configure=true render_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cloud) cloud_name="$2"; shift 2 ;;
    --domain) domain="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --region) region="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --gateway-tag) gateway_tag="$2"; shift 2 ;;
    --gateway-digest) gateway_digest="$2"; shift 2 ;;
    --gitlab-version) gitlab_version="$2"; shift 2 ;;
    --license) license="$2"; shift 2 ;;
    --activation-code) activation_code="$2"; shift 2 ;;
    --email) email="$2"; shift 2 ;;
    --ssh-key) ssh_key="$2"; shift 2 ;;
    --ferrollama-url) ferrollama_url="$2"; shift 2 ;;
    --ferrollama-sha256) ferrollama_sha256="$2"; shift 2 ;;
    --ferrollama-tarball) ferrollama_tarball="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --registry) registry_url="$2"; shift 2 ;;
    --model-sha256) model_sha256="$2"; shift 2 ;;
    --nvidia-driver) nvidia_driver="$2"; shift 2 ;;
    --eval) eval_mode=true; shift ;;
    --dns-timeout) dns_timeout="$2"; shift 2 ;;
    --no-configure) configure=false; shift ;;
    --render-dir) render_dir="$2"; shift 2 ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown argument $1" ;;
  esac
done

# --- Check the arguments before touching any cloud. ---
case "$cloud_name" in
  aws) region="${region:-us-east-1}"; zone="${zone:-${region}a}" ;;
  gcp) region="${region:-us-central1}"; zone="${zone:-${region}-a}" ;;
  "") usage_error "--cloud is required" ;;
  *) usage_error "--cloud must be aws or gcp, got '$cloud_name'" ;;
esac
[ -n "$domain" ] || usage_error "--domain is required"
[[ "$domain" =~ ^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}$ ]] || usage_error "--domain '$domain' is not a lowercase DNS name"
check_name "$name"
if [ -n "$ferrollama_tarball" ]; then
  [ -z "$ferrollama_url" ] || usage_error "give --ferrollama-tarball or --ferrollama-url, not both"
  [ -f "$ferrollama_tarball" ] || usage_error "--ferrollama-tarball: no file $ferrollama_tarball"
  [ -f "$ferrollama_tarball.sha256" ] || usage_error "--ferrollama-tarball: no $ferrollama_tarball.sha256 beside it"
  ferrollama_sha256="$(cut -d' ' -f1 "$ferrollama_tarball.sha256")"
  echo "$ferrollama_sha256  $ferrollama_tarball" | sha256sum --check --status \
    || usage_error "$ferrollama_tarball does not match its .sha256 file"
  build_name="$(basename "$ferrollama_tarball")"
else
  [[ "$ferrollama_url" =~ ^https?://[^[:space:]\'\"]+$ ]] || usage_error "--ferrollama-url must be an http(s) URL (or give --ferrollama-tarball)"
  build_name="${ferrollama_url##*/}"
fi
# Which build the llm VM runs, from the release name (deploy/release.sh): the CUDA build for a
# T4 brings the NVIDIA driver and CUDA libraries; the CPU build misses GitLab's 30 s timeouts
# with a 7B model, so it gets a warning.
if [[ "$build_name" =~ -cuda-sm([0-9]+)\.tar\.gz$ ]]; then
  ferrollama_build="cuda-sm${BASH_REMATCH[1]}"
  [ "${BASH_REMATCH[1]}" = 75 ] || warn "$build_name is built for sm_${BASH_REMATCH[1]}; the llm VM's T4 is sm_75"
elif [[ "$build_name" =~ -cpu\.tar\.gz$ ]]; then
  ferrollama_build=cpu
  warn "$build_name is the CPU build: a 7B model on the llm VM's 4 vCPUs misses the AI gateway's and GitLab's 30 s timeouts. Use the cuda-sm75 tarball on the T4."
else
  usage_error "cannot tell the build from '$build_name': give a release tarball named ferrollama-VERSION-linux-x86_64-(cpu|cuda-smNN).tar.gz (deploy/release.sh)"
fi
[[ "$model" =~ ^[A-Za-z0-9][A-Za-z0-9._:/-]*$ ]] || usage_error "--model '$model' is not an Ollama model name"
[ -z "$registry_url" ] || [[ "$registry_url" =~ ^https?://[^[:space:]\'\"]+$ ]] || usage_error "--registry must be an http(s) URL"
[[ "$ferrollama_sha256" =~ ^[0-9a-f]{64}$ ]] || usage_error "--ferrollama-sha256 must be 64 hex digits"
[[ "$model_sha256" =~ ^[0-9a-f]{64}$ ]] || usage_error "--model-sha256 must be 64 hex digits"
[[ "$nvidia_driver" =~ ^[0-9]+$ ]] || usage_error "--nvidia-driver must be a number like 550"
[[ "$dns_timeout" =~ ^[0-9]+$ ]] || usage_error "--dns-timeout must be seconds"
[ -z "$email" ] || [[ "$email" =~ ^[^[:space:]\'@]+@[^[:space:]\'@]+$ ]] || usage_error "--email '$email' is not an address"
[ -z "$license" ] || [ -f "$license" ] || usage_error "--license: no file $license"
[ -z "$license" ] || [ -z "$activation_code" ] || usage_error "give --license or --activation-code, not both"
[ -z "$activation_code" ] || [[ "$activation_code" =~ ^[A-Za-z0-9]+$ ]] || usage_error "--activation-code takes letters and digits"
[ -n "$license$activation_code" ] || warn "no --license or --activation-code: GitLab Duo Self-Hosted needs a Duo Enterprise licence; configure-gitlab.sh will wait for one"
[[ "$region$zone$project" =~ ^[a-z0-9-]*$ ]] || usage_error "--region, --zone and --project take lowercase names"

# GitLab and the gateway need only the same major.minor (GitLab's rule), so each takes the
# newest patch of that line: the only 17.6 gateway tag is 17.6.0, while GitLab 17.6 had patch
# (security) releases after it. GitLab's package is chosen on the VM at first boot, from
# GitLab's apt repository; the gateway image here, on Docker Hub.
gitlab_minor=""
if [ -n "$gitlab_version" ]; then
  [[ "$gitlab_version" =~ ^([0-9]+\.[0-9]+)(\.[0-9]+)?$ ]] || usage_error "--gitlab-version must be X.Y or X.Y.Z, got '$gitlab_version'"
  gitlab_minor="${BASH_REMATCH[1]}"
fi
gateway_tag="${gateway_tag:-self-hosted-v${gitlab_minor:-17.6}}"
# The gateway image: a line (self-hosted-v17.6) means its newest patch; every VM then runs the
# image by digest, so a tag that moves later cannot change a deployment.
[[ "$gateway_tag" =~ ^self-hosted-v?([0-9]+)\.([0-9]+)(\.[0-9]+-ee)?$ ]] \
  || usage_error "--gateway-tag must look like self-hosted-v17.6 or self-hosted-v17.6.0-ee, got '$gateway_tag'"
tag_minor="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}" one_tag="${BASH_REMATCH[3]}"
gitlab_version="${gitlab_version:-$tag_minor}"
[ "${gitlab_minor:-$tag_minor}" = "$tag_minor" ] \
  || usage_error "GitLab $gitlab_version does not match gateway $gateway_tag (major.minor must be equal)"
# Before 17.6 the ai_custom_model flag was off by default: no self-hosted models.
if [ "${BASH_REMATCH[1]}" -lt 17 ] || { [ "${BASH_REMATCH[1]}" = 17 ] && [ "${BASH_REMATCH[2]}" -lt 6 ]; }; then
  usage_error "GitLab $tag_minor is too old: GitLab Duo Self-Hosted with a custom model needs 17.6 or later"
fi
[ -z "$gateway_digest" ] || [[ "$gateway_digest" =~ ^sha256:[0-9a-f]{64}$ ]] || usage_error "--gateway-digest must be sha256: and 64 hex digits"
[ -z "$gateway_digest" ] || [ -n "$one_tag" ] || usage_error "--gateway-digest needs one tag (self-hosted-vX.Y.Z-ee), not a line"
if [ -z "$gateway_digest" ]; then
  found="$(newest_gateway_tag "$gateway_tag")" \
    || die "no gateway image matches $gateway_tag on Docker Hub ($GATEWAY_TAGS_URL)"
  read -r gateway_tag gateway_digest <<<"$found"
  log "AI gateway image: $GATEWAY_REPO:$gateway_tag@$gateway_digest"
fi
[[ "$gateway_tag" =~ ^self-hosted-v?[0-9]+\.[0-9]+\.[0-9]+-ee$ ]] || die "unexpected gateway tag $gateway_tag"
if [[ "$gitlab_version" =~ ^[0-9]+\.[0-9]+$ ]]; then
  log "GitLab EE package: gitlab-ee $gitlab_version.x, the newest $gitlab_version patch in GitLab's apt repository (chosen on the GitLab VM at first boot with apt-cache madison)"
else
  log "GitLab EE package: gitlab-ee=$gitlab_version-ee.0"
fi
[ "$tag_minor" != 17.6 ] || warn "GitLab 17.6 is out of maintenance: GitLab ships security fixes for its three newest minor releases only, and this VM faces the internet. Prefer a maintained line: --gitlab-version X.Y (with its self-hosted-vX.Y gateway)."

if [ "$eval_mode" = true ]; then
  warn "--eval sets AIGW_AUTH__BYPASS_EXTERNAL=true: the AI gateway then serves requests that GitLab did not authenticate. It must never face the internet (here only the private network reaches port $GATEWAY_PORT). Use it for evaluation only."
fi
if [ "$cloud_name" = aws ] && [ "$DRY_RUN" = false ]; then
  [ -f "$ssh_key" ] || usage_error "--ssh-key: no public key at $ssh_key"
fi

# A local release tarball goes to a bucket of this deployment's (deleted by down.sh); the llm
# VM fetches it from there before anything else needs it. AWS: an S3 object behind a presigned
# URL (6 hours). GCP: a gs:// object the VM reads with its own service account's token.
upload_release() {
  local object bucket account number location=()
  object="$(basename "$ferrollama_tarball")"
  if [ "$cloud_name" = aws ]; then
    account="$(cloud_out 123456789012 aws sts get-caller-identity --query Account --output text)"
    bucket="$(bucket_name aws "$name" "$account")"
    # us-east-1 is S3's default location and refuses to be named as one.
    [ "$region" = us-east-1 ] || location=(--create-bucket-configuration "LocationConstraint=$region")
    cloud aws s3api create-bucket --bucket "$bucket" --region "$region" "${location[@]}" >/dev/null
    cloud aws s3api put-bucket-tagging --bucket "$bucket" --tagging "TagSet=[{Key=$TAG_KEY,Value=$name}]"
    cloud aws s3 cp --region "$region" "$ferrollama_tarball" "s3://$bucket/$object" >/dev/null
    ferrollama_url="$(cloud_out "https://$bucket.s3.amazonaws.com/$object?X-Amz-Signature=dryrun" \
      aws s3 presign --region "$region" "s3://$bucket/$object" --expires-in 21600)"
  else
    [ -n "$project" ] || project="$(cloud_out dryrun-project gcloud config get-value project)"
    bucket="$(bucket_name gcp "$name" "$project")"
    cloud gcloud storage buckets create "gs://$bucket" --project "$project" --location "$region" \
      --uniform-bucket-level-access
    # The llm VM reads it as the project's default compute service account, which projects
    # made since 2024 no longer give any role: grant it reading this bucket (the grant goes
    # with the bucket).
    number="$(cloud_out 123456789012 gcloud projects describe "$project" --format 'value(projectNumber)')"
    cloud gcloud storage buckets add-iam-policy-binding "gs://$bucket" --project "$project" \
      --member "serviceAccount:$number-compute@developer.gserviceaccount.com" \
      --role roles/storage.objectViewer >/dev/null
    cloud gcloud storage cp "$ferrollama_tarball" "gs://$bucket/$object" --project "$project"
    ferrollama_url="gs://$bucket/$object"
  fi
  log "release $object uploaded to $bucket"
}
[ -z "$ferrollama_tarball" ] || upload_release

# --- Render the three cloud-init files. ---
secret() { local s; s="$(head -c 32 /dev/urandom | base64 | tr -d '+/=\n')"; echo "${s:0:32}"; }
root_password="$(secret)"
admin_token="glpat-$(secret)"
# ferrollama's API key (64 hex digits): without one, anything on the private network could
# call /api/delete or /api/pull. GitLab gets it as the self-hosted model's API token, and the
# gateway sends it to ferrollama with every request.
llm_api_key="$(od -An -vtx1 -N32 /dev/urandom | tr -d ' \n')"
model_name="mistral:instruct"
if [ -z "$render_dir" ]; then
  render_dir="$(mktemp -d)"
  # The rendered files hold the secrets: keep them only when asked to.
  trap 'rm -rf "$render_dir"' EXIT
fi
mkdir -p "$render_dir"

# render TEMPLATE OUT KEY=VALUE...: replace each @KEY@; refuse to leave one unfilled.
render() {
  local template="$1" out="$2" text kv; shift 2
  text="$(<"$template")"
  for kv in "$@"; do text="${text//@"${kv%%=*}"@/"${kv#*=}"}"; done
  if [[ "$text" =~ @[A-Z0-9_]+@ ]]; then die "$template: no value for ${BASH_REMATCH[0]}"; fi
  printf '%s\n' "$text" >"$out"
}
b64() { base64 <"$1" | tr -d '\n'; }

license_line="# no licence given to up.sh: upload one in the Admin Area"
license_b64=""
if [ -n "$license" ]; then
  license_line="gitlab_rails['initial_license_file'] = '/etc/gitlab/ferrollama.gitlab-license'"
  license_b64="$(b64 "$license")"
fi
email_line="# no Let's Encrypt contact address given"
[ -z "$email" ] || email_line="letsencrypt['contact_emails'] = ['$email']"
eval_line="# the gateway authenticates every request with GitLab"
[ "$eval_mode" = false ] || eval_line="AIGW_AUTH__BYPASS_EXTERNAL=true"

common=("DOMAIN=$domain" "GITLAB_IP=$GITLAB_IP" "GATEWAY_IP=$GATEWAY_IP" "GATEWAY_PORT=$GATEWAY_PORT"
        "LLM_IP=$LLM_IP" "LLM_PORT=$LLM_PORT" "MODEL_NAME=$model_name")
render "$here/cloud-init/gitlab.yaml" "$render_dir/gitlab.yaml" "${common[@]}" \
  "GITLAB_VERSION=$gitlab_version" "ROOT_PASSWORD=$root_password" "LLM_API_KEY=$llm_api_key" \
  "ADMIN_TOKEN=$admin_token" "LICENSE_LINE=$license_line" "LICENSE_B64=$license_b64" \
  "LETSENCRYPT_EMAIL_LINE=$email_line" "ACTIVATION_CODE=$activation_code" \
  "LICENSED=$([ -n "$license$activation_code" ] && echo true || echo false)" \
  "PROVISION_B64=$(b64 "$here/firstboot/provision-duo.sh")" \
  "FIRSTBOOT_B64=$(b64 "$here/firstboot/gitlab.sh")" "VERIFY_B64=$(b64 "$here/verify.sh")"
render "$here/cloud-init/gateway.yaml" "$render_dir/gateway.yaml" "${common[@]}" \
  "GATEWAY_IMAGE=$GATEWAY_REPO:$gateway_tag@$gateway_digest" "EVAL_ENV_LINE=$eval_line" \
  "FIRSTBOOT_B64=$(b64 "$here/firstboot/gateway.sh")"
render "$here/cloud-init/llm.yaml" "$render_dir/llm.yaml" "${common[@]}" \
  "MODEL=$model" "REGISTRY_URL=$registry_url" "LLM_API_KEY=$llm_api_key" \
  "MODEL_SHA256=$model_sha256" "FERROLLAMA_URL=$ferrollama_url" \
  "FERROLLAMA_SHA256=$ferrollama_sha256" "FERROLLAMA_BUILD=$ferrollama_build" "NVIDIA_DRIVER=$nvidia_driver" \
  "UNIT_B64=$(b64 "$here/systemd/ferrollama.service")" \
  "HEALTHCHECK_B64=$(b64 "$here/llm-healthcheck.sh")" \
  "FIRSTBOOT_B64=$(b64 "$here/firstboot/llm.sh")"
# EC2 takes at most 16384 bytes of user data, which the GitLab VM's scripts and a licence
# file exceed: EC2 gets it gzipped (cloud-init unpacks gzip user data by itself), GCP as it is.
if [ "$cloud_name" = aws ]; then
  for role in gitlab gateway llm; do
    gzip -9 --no-name --stdout "$render_dir/$role.yaml" >"$render_dir/$role.yaml.gz"
    size="$(wc -c <"$render_dir/$role.yaml.gz")"
    [ "$size" -le 16384 ] || die "$role.yaml is $size bytes gzipped; EC2 user data takes at most 16384"
  done
fi
log "cloud-init files rendered in $render_dir"

# The domain's first IPv4 address (getent on Linux, dig elsewhere), empty when none.
resolve() {
  if command -v getent >/dev/null; then getent ahostsv4 "$1" | awk 'NR == 1 { print $1 }'
  else dig +short A "$1" | tail -n 1
  fi
}

# Let's Encrypt needs the domain to resolve to GitLab's static IP before GitLab installs.
wait_for_dns() {
  local ip="$1" deadline=$((SECONDS + dns_timeout))
  if [ "$DRY_RUN" = true ]; then log "dry run: would wait until $domain resolves to $ip"; return; fi
  log "point an A record for $domain at $ip now; waiting up to ${dns_timeout}s for it to resolve"
  until [ "$(resolve "$domain")" = "$ip" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "$domain does not resolve to $ip; run deploy/down.sh --cloud $cloud_name --name $name to clean up"
    sleep 15
  done
}

# --- AWS: VPC with a public subnet (GitLab, NAT gateway) and a private one (gateway, llm). ---
aws_up() {
  local r=(--region "$region") ami vpc pub priv igw rt nat_eip nat sg_gitlab sg_gateway sg_llm out
  local eip public_ip gitlab_id port
  spec() { echo "ResourceType=$1,Tags=[{Key=$TAG_KEY,Value=$name},{Key=Name,Value=$name-$2}]"; }
  ami="$(cloud_out dryrun-ami aws ssm get-parameter "${r[@]}" \
    --name /aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id \
    --query Parameter.Value --output text)"
  vpc="$(cloud_out dryrun-vpc aws ec2 create-vpc "${r[@]}" --cidr-block "$PRIVATE_CIDR" \
    --tag-specifications "$(spec vpc net)" --query Vpc.VpcId --output text)"
  pub="$(cloud_out dryrun-subnet-public aws ec2 create-subnet "${r[@]}" --vpc-id "$vpc" \
    --cidr-block "$PUBLIC_SUBNET_CIDR" --availability-zone "$zone" \
    --tag-specifications "$(spec subnet public)" --query Subnet.SubnetId --output text)"
  priv="$(cloud_out dryrun-subnet-private aws ec2 create-subnet "${r[@]}" --vpc-id "$vpc" \
    --cidr-block "$PRIVATE_SUBNET_CIDR" --availability-zone "$zone" \
    --tag-specifications "$(spec subnet private)" --query Subnet.SubnetId --output text)"

  igw="$(cloud_out dryrun-igw aws ec2 create-internet-gateway "${r[@]}" \
    --tag-specifications "$(spec internet-gateway igw)" --query InternetGateway.InternetGatewayId --output text)"
  cloud aws ec2 attach-internet-gateway "${r[@]}" --internet-gateway-id "$igw" --vpc-id "$vpc"
  rt="$(cloud_out dryrun-rt-public aws ec2 create-route-table "${r[@]}" --vpc-id "$vpc" \
    --tag-specifications "$(spec route-table public)" --query RouteTable.RouteTableId --output text)"
  cloud aws ec2 create-route "${r[@]}" --route-table-id "$rt" --destination-cidr-block 0.0.0.0/0 --gateway-id "$igw" >/dev/null
  cloud aws ec2 associate-route-table "${r[@]}" --route-table-id "$rt" --subnet-id "$pub" >/dev/null

  # The private VMs reach the internet (packages, images, the model) only outbound, by NAT.
  nat_eip="$(cloud_out dryrun-eip-nat aws ec2 allocate-address "${r[@]}" --domain vpc \
    --tag-specifications "$(spec elastic-ip nat)" --query AllocationId --output text)"
  nat="$(cloud_out dryrun-nat aws ec2 create-nat-gateway "${r[@]}" --subnet-id "$pub" --allocation-id "$nat_eip" \
    --tag-specifications "$(spec natgateway nat)" --query NatGateway.NatGatewayId --output text)"
  cloud aws ec2 wait nat-gateway-available "${r[@]}" --nat-gateway-ids "$nat"
  rt="$(cloud_out dryrun-rt-private aws ec2 create-route-table "${r[@]}" --vpc-id "$vpc" \
    --tag-specifications "$(spec route-table private)" --query RouteTable.RouteTableId --output text)"
  cloud aws ec2 create-route "${r[@]}" --route-table-id "$rt" --destination-cidr-block 0.0.0.0/0 --nat-gateway-id "$nat" >/dev/null
  cloud aws ec2 associate-route-table "${r[@]}" --route-table-id "$rt" --subnet-id "$priv" >/dev/null

  # Firewall: GitLab's 22/80/443 from anywhere; 5052 and 11434 (and ssh) from the VPC only.
  sg_gitlab="$(cloud_out dryrun-sg-gitlab aws ec2 create-security-group "${r[@]}" --group-name "$name-gitlab" \
    --description "GitLab: ssh, http, https" --vpc-id "$vpc" \
    --tag-specifications "$(spec security-group gitlab)" --query GroupId --output text)"
  for port in 22 80 443; do
    cloud aws ec2 authorize-security-group-ingress "${r[@]}" --group-id "$sg_gitlab" \
      --protocol tcp --port "$port" --cidr 0.0.0.0/0 >/dev/null
  done
  sg_gateway="$(cloud_out dryrun-sg-gateway aws ec2 create-security-group "${r[@]}" --group-name "$name-gateway" \
    --description "AI gateway: private network only" --vpc-id "$vpc" \
    --tag-specifications "$(spec security-group gateway)" --query GroupId --output text)"
  sg_llm="$(cloud_out dryrun-sg-llm aws ec2 create-security-group "${r[@]}" --group-name "$name-llm" \
    --description "ferrollama: private network only" --vpc-id "$vpc" \
    --tag-specifications "$(spec security-group llm)" --query GroupId --output text)"
  for port in 22 "$GATEWAY_PORT"; do
    cloud aws ec2 authorize-security-group-ingress "${r[@]}" --group-id "$sg_gateway" \
      --protocol tcp --port "$port" --cidr "$PRIVATE_CIDR" >/dev/null
  done
  for port in 22 "$LLM_PORT"; do
    cloud aws ec2 authorize-security-group-ingress "${r[@]}" --group-id "$sg_llm" \
      --protocol tcp --port "$port" --cidr "$PRIVATE_CIDR" >/dev/null
  done

  cloud aws ec2 import-key-pair "${r[@]}" --key-name "$name" --public-key-material "fileb://$ssh_key" \
    --tag-specifications "$(spec key-pair key)" >/dev/null
  out="$(cloud_out "dryrun-eip-gitlab 203.0.113.10" aws ec2 allocate-address "${r[@]}" --domain vpc \
    --tag-specifications "$(spec elastic-ip gitlab)" --query '[AllocationId,PublicIp]' --output text)"
  read -r eip public_ip <<<"$out"

  # No VM gets a public address at launch; only GitLab gets one, its Elastic IP, afterwards.
  aws_launch() { # ROLE SUBNET SECURITY_GROUP PRIVATE_IP
    local type_var="AWS_TYPE_$1" disk_var="DISK_GB_$1"
    cloud_out "dryrun-instance-$1" aws ec2 run-instances "${r[@]}" --image-id "$ami" \
      --instance-type "${!type_var}" --key-name "$name" --subnet-id "$2" --security-group-ids "$3" \
      --private-ip-address "$4" --no-associate-public-ip-address \
      --metadata-options HttpTokens=required \
      --block-device-mappings "DeviceName=/dev/sda1,Ebs={VolumeSize=${!disk_var},VolumeType=gp3,DeleteOnTermination=true}" \
      --user-data "fileb://$render_dir/$1.yaml.gz" \
      --tag-specifications "$(spec instance "$1")" "$(spec volume "$1")" \
      --query 'Instances[0].InstanceId' --output text
  }
  aws_launch llm "$priv" "$sg_llm" "$LLM_IP" >/dev/null
  aws_launch gateway "$priv" "$sg_gateway" "$GATEWAY_IP" >/dev/null
  wait_for_dns "$public_ip"
  gitlab_id="$(aws_launch gitlab "$pub" "$sg_gitlab" "$GITLAB_IP")"
  # GitLab's install takes minutes before it asks Let's Encrypt; the address is there by then.
  cloud aws ec2 wait instance-running "${r[@]}" --instance-ids "$gitlab_id"
  cloud aws ec2 associate-address "${r[@]}" --allocation-id "$eip" --instance-id "$gitlab_id" >/dev/null
  GITLAB_PUBLIC_IP="$public_ip"
  SSH_HINT="ssh ubuntu@$public_ip"
  # The private VMs have the same key and take ssh from the VPC: jump through GitLab's VM.
  PRIVATE_SSH_HINT="ssh -J ubuntu@$public_ip ubuntu@$LLM_IP  (the gateway: ubuntu@$GATEWAY_IP)"
}

# --- GCP: one custom network and subnet, Cloud NAT for outbound traffic of the private VMs. ---
gcp_up() {
  local p=() d=(--description "$TAG_KEY=$name")
  [ -z "$project" ] || p=(--project "$project")
  cloud gcloud compute networks create "$name-net" "${p[@]}" "${d[@]}" --subnet-mode custom
  cloud gcloud compute networks subnets create "$name-subnet" "${p[@]}" "${d[@]}" --network "$name-net" \
    --region "$region" --range "$PRIVATE_CIDR"
  cloud gcloud compute routers create "$name-router" "${p[@]}" "${d[@]}" --network "$name-net" --region "$region"
  cloud gcloud compute routers nats create "$name-nat" "${p[@]}" --router "$name-router" --region "$region" \
    --auto-allocate-nat-external-ips --nat-all-subnet-ip-ranges
  # Firewall: GitLab's 22/80/443 from anywhere; 5052 and 11434 (and ssh) from the network only.
  cloud gcloud compute firewall-rules create "$name-gitlab-public" "${p[@]}" "${d[@]}" --network "$name-net" \
    --direction INGRESS --allow tcp:22,tcp:80,tcp:443 --source-ranges 0.0.0.0/0 --target-tags "$name-gitlab"
  cloud gcloud compute firewall-rules create "$name-gateway-private" "${p[@]}" "${d[@]}" --network "$name-net" \
    --direction INGRESS --allow "tcp:22,tcp:$GATEWAY_PORT" --source-ranges "$PRIVATE_CIDR" --target-tags "$name-gateway"
  cloud gcloud compute firewall-rules create "$name-llm-private" "${p[@]}" "${d[@]}" --network "$name-net" \
    --direction INGRESS --allow "tcp:22,tcp:$LLM_PORT" --source-ranges "$PRIVATE_CIDR" --target-tags "$name-llm"
  # ssh to the private VMs through Identity-Aware Proxy (gcloud compute ssh --tunnel-through-iap):
  # IAP's TCP forwarding range reaches port 22 of those two, nothing else.
  cloud gcloud compute firewall-rules create "$name-iap-ssh" "${p[@]}" "${d[@]}" --network "$name-net" \
    --direction INGRESS --allow tcp:22 --source-ranges "$IAP_CIDR" --target-tags "$name-gateway,$name-llm"
  cloud gcloud compute addresses create "$name-gitlab-ip" "${p[@]}" "${d[@]}" --region "$region"
  GITLAB_PUBLIC_IP="$(cloud_out 203.0.113.10 gcloud compute addresses describe "$name-gitlab-ip" "${p[@]}" \
    --region "$region" --format 'value(address)')"

  gcp_launch() { # ROLE PRIVATE_IP ADDRESS_FLAGS...
    local role="$1" ip="$2" type_var="GCP_TYPE_$1" disk_var="DISK_GB_$1" extra=(); shift 2
    [ "$role" != llm ] || extra=(--accelerator "$GCP_LLM_ACCELERATOR" --maintenance-policy TERMINATE)
    cloud gcloud compute instances create "$name-$role" "${p[@]}" --zone "$zone" \
      --machine-type "${!type_var}" "${extra[@]}" \
      --image-family ubuntu-2404-lts-amd64 --image-project ubuntu-os-cloud \
      --boot-disk-size "${!disk_var}GB" --boot-disk-type pd-balanced \
      --subnet "$name-subnet" --private-network-ip "$ip" "$@" \
      --tags "$name-$role" --labels "$TAG_KEY=$name,ferrollama-role=$role" \
      --metadata-from-file "user-data=$render_dir/$role.yaml"
  }
  gcp_launch llm "$LLM_IP" --no-address
  gcp_launch gateway "$GATEWAY_IP" --no-address
  wait_for_dns "$GITLAB_PUBLIC_IP"
  gcp_launch gitlab "$GITLAB_IP" --address "$name-gitlab-ip"
  SSH_HINT="gcloud compute ssh $name-gitlab --zone $zone${project:+ --project $project} --"
  PRIVATE_SSH_HINT="gcloud compute ssh $name-llm --zone $zone${project:+ --project $project} --tunnel-through-iap  (the gateway: $name-gateway)"
}

"${cloud_name}_up"

configure_cmd=("$here/configure-gitlab.sh" --url "https://$domain" --llm-endpoint "http://$LLM_IP:$LLM_PORT/v1"
               --gateway-url "http://$GATEWAY_IP:$GATEWAY_PORT" --model-name "$model_name")
if [ "$DRY_RUN" = true ]; then
  log "dry run: nothing was created; then configure-gitlab.sh would run with the generated admin token"
  exit 0
fi
cat <<EOF

GitLab Duo Self-Hosted on $cloud_name, deployment '$name'
  GitLab            https://$domain  (static IP $GITLAB_PUBLIC_IP)
  root password     $root_password
  admin API token   $admin_token   (root's token 'ferrollama-deploy', 30 days)
  AI gateway        http://$GATEWAY_IP:$GATEWAY_PORT  (private network only)
  ferrollama        http://$LLM_IP:$LLM_PORT  serving $model_name  (private network only)
  ferrollama key    $llm_api_key   (GitLab's self-hosted model sends it as its API token)
The password and the admin token are printed once and kept nowhere else: store them now.
Verify every hop:  $SSH_HINT sudo ferrollama-verify
Private VMs:       $PRIVATE_SSH_HINT
Remove it all:     deploy/down.sh --cloud $cloud_name --name $name --region $region${project:+ --project $project}
EOF
if [ "$configure" = true ]; then
  # Both secrets in the environment, off the command line.
  GITLAB_TOKEN="$admin_token" FERROLLAMA_API_KEY="$llm_api_key" "${configure_cmd[@]}"
else
  echo "Configure later:  GITLAB_TOKEN=<admin API token> FERROLLAMA_API_KEY=<ferrollama key> ${configure_cmd[*]}"
fi
