#!/usr/bin/env bash
# Removes everything up.sh made for one deployment, and only that: it finds the resources by
# their ferrollama-deploy=<name> tag (AWS), label or description (GCP), never by a guess.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
exec 3>&1

usage() {
  cat <<'EOF'
Usage: deploy/down.sh --cloud aws|gcp [--name NAME] [--region REGION] [--project ID] [--dry-run]

Deletes the VMs, addresses, firewall rules and network of deployment NAME (default ferrollama):
every resource tagged, labelled or described ferrollama-deploy=NAME, nothing else.
  --region REGION   default us-east-1 (aws) or us-central1 (gcp)
  --project ID      GCP project (default: gcloud's configured project)
  --dry-run         print every cloud CLI call (one a line) instead of making it
EOF
}

cloud_name="" name=ferrollama region="" project=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cloud) cloud_name="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --region) region="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown argument $1" ;;
  esac
done
case "$cloud_name" in
  aws) region="${region:-us-east-1}" ;;
  gcp) region="${region:-us-central1}" ;;
  "") usage_error "--cloud is required" ;;
  *) usage_error "--cloud must be aws or gcp, got '$cloud_name'" ;;
esac
check_name "$name"
[[ "$region$project" =~ ^[a-z0-9-]*$ ]] || usage_error "--region and --project take lowercase names"

# ids PLACEHOLDER CMD...: the words a listing call prints (AWS prints "None" for nothing).
ids() {
  local out word result=()
  out="$(cloud_out "$@")"
  for word in $out; do [ "$word" = None ] || result+=("$word"); done
  echo "${result[*]}"
}

# AWS: dependents first (instances, NAT, addresses), the VPC last. Each listing is assigned
# before use, so a failing call stops the script instead of looking like "nothing to delete".
aws_down() {
  local r=(--region "$region") f=(--filters "Name=tag:$TAG_KEY,Values=$name") out list id igw vpc account bucket
  # The bucket up.sh made for a local release tarball, if any.
  account="$(cloud_out 123456789012 aws sts get-caller-identity --query Account --output text)"
  bucket="$(bucket_name aws "$name" "$account")"
  if [ "$DRY_RUN" = true ] || aws s3api head-bucket --bucket "$bucket" >/dev/null 2>&1; then
    cloud aws s3 rb "s3://$bucket" --force --region "$region" >/dev/null
  fi
  out="$(ids dryrun-instance-ids aws ec2 describe-instances "${r[@]}" "${f[@]}" \
    Name=instance-state-name,Values=pending,running,stopping,stopped \
    --query 'Reservations[].Instances[].InstanceId' --output text)"
  read -ra list <<<"$out"
  if [ "${#list[@]}" -gt 0 ]; then
    cloud aws ec2 terminate-instances "${r[@]}" --instance-ids "${list[@]}" >/dev/null
    cloud aws ec2 wait instance-terminated "${r[@]}" --instance-ids "${list[@]}"
  fi
  # describe-nat-gateways spells it --filter.
  out="$(ids dryrun-nat-ids aws ec2 describe-nat-gateways "${r[@]}" \
    --filter "Name=tag:$TAG_KEY,Values=$name" Name=state,Values=pending,available \
    --query 'NatGateways[].NatGatewayId' --output text)"
  read -ra list <<<"$out"
  for id in "${list[@]}"; do cloud aws ec2 delete-nat-gateway "${r[@]}" --nat-gateway-id "$id" >/dev/null; done
  [ "${#list[@]}" -eq 0 ] || cloud aws ec2 wait nat-gateway-deleted "${r[@]}" --nat-gateway-ids "${list[@]}"
  out="$(ids dryrun-eip-allocations aws ec2 describe-addresses "${r[@]}" "${f[@]}" \
    --query 'Addresses[].AllocationId' --output text)"
  read -ra list <<<"$out"
  for id in "${list[@]}"; do cloud aws ec2 release-address "${r[@]}" --allocation-id "$id"; done
  out="$(cloud_out "dryrun-igw dryrun-vpc" aws ec2 describe-internet-gateways "${r[@]}" "${f[@]}" \
    --query 'InternetGateways[].[InternetGatewayId,Attachments[0].VpcId]' --output text)"
  while read -r igw vpc; do
    [ -n "$igw" ] || continue
    [ "$vpc" = None ] || cloud aws ec2 detach-internet-gateway "${r[@]}" --internet-gateway-id "$igw" --vpc-id "$vpc"
    cloud aws ec2 delete-internet-gateway "${r[@]}" --internet-gateway-id "$igw"
  done <<<"$out"
  # What is left, in the order AWS lets it go: resource-type, listing query, delete call.
  local step kind query delete flag
  for step in "subnet Subnets[].SubnetId delete-subnet --subnet-id" \
              "route-table RouteTables[].RouteTableId delete-route-table --route-table-id" \
              "security-group SecurityGroups[].GroupId delete-security-group --group-id" \
              "key-pair KeyPairs[].KeyPairId delete-key-pair --key-pair-id" \
              "vpc Vpcs[].VpcId delete-vpc --vpc-id"; do
    read -r kind query delete flag <<<"$step"
    out="$(ids "dryrun-$kind-ids" aws ec2 "describe-${kind}s" "${r[@]}" "${f[@]}" --query "$query" --output text)"
    read -ra list <<<"$out"
    for id in "${list[@]}"; do cloud aws ec2 "$delete" "${r[@]}" "$flag" "$id" >/dev/null; done
  done
}

# GCP: instances carry the label; networks, firewall rules, routers and addresses take no labels
# in every gcloud release, so up.sh gave them the description ferrollama-deploy=NAME instead.
gcp_down() {
  local p=() mine="description=\"$TAG_KEY=$name\"" out res where kind words
  [ -z "$project" ] || p=(--project "$project")
  # The bucket up.sh made for a local release tarball, if any.
  local bucket
  [ -n "$project" ] || project="$(cloud_out dryrun-project gcloud config get-value project)"
  bucket="gs://$(bucket_name gcp "$name" "$project")"
  if [ "$DRY_RUN" = true ] || gcloud storage buckets describe "$bucket" "${p[@]}" >/dev/null 2>&1; then
    cloud gcloud storage rm --recursive "$bucket" "${p[@]}"
  fi
  out="$(cloud_out "dryrun-instance dryrun-zone" gcloud compute instances list "${p[@]}" \
    --filter "labels.$TAG_KEY=$name" --format 'value(name,zone.basename())')"
  while read -r res where; do
    [ -z "$res" ] || cloud gcloud compute instances delete "$res" "${p[@]}" --zone "$where" --quiet
  done <<<"$out"
  out="$(cloud_out dryrun-firewall-rule gcloud compute firewall-rules list "${p[@]}" \
    --filter "$mine" --format 'value(name)')"
  while read -r res; do
    [ -z "$res" ] || cloud gcloud compute firewall-rules delete "$res" "${p[@]}" --quiet
  done <<<"$out"
  # Regional resources: the address, the router (its NAT goes with it), the subnet.
  for kind in addresses routers "networks subnets"; do
    read -ra words <<<"$kind"
    out="$(cloud_out "dryrun-${words[-1]} dryrun-region" gcloud compute "${words[@]}" list "${p[@]}" \
      --filter "$mine" --format 'value(name,region.basename())')"
    while read -r res where; do
      [ -z "$res" ] || cloud gcloud compute "${words[@]}" delete "$res" "${p[@]}" --region "$where" --quiet
    done <<<"$out"
  done
  out="$(cloud_out dryrun-network gcloud compute networks list "${p[@]}" --filter "$mine" --format 'value(name)')"
  while read -r res; do
    [ -z "$res" ] || cloud gcloud compute networks delete "$res" "${p[@]}" --quiet
  done <<<"$out"
}

"${cloud_name}_down"
if [ "$DRY_RUN" = true ]; then
  log "dry run: nothing was deleted"
else
  log "removed every resource of deployment '$name' ($TAG_KEY=$name)"
fi
