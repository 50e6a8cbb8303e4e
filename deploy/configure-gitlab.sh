#!/usr/bin/env bash
# The Admin Area clicks of GitLab Duo Self-Hosted, over GitLab's GraphQL API: the self-hosted
# model (ferrollama), that model for code completions, code generations and Duo Chat, and a Duo
# seat for the token's user (root). It reads the current state first and only changes what
# differs, so a second run sends no mutation.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: GITLAB_TOKEN=TOKEN deploy/configure-gitlab.sh --url https://gitlab.example.com
         --llm-endpoint http://10.42.1.12:11434/v1 [options]

Waits until GitLab answers, then configures GitLab Duo Self-Hosted over its API.
  --url URL              GitLab's URL
  --token TOKEN          an admin's API token (better: the GITLAB_TOKEN environment variable)
  --llm-endpoint URL     ferrollama's OpenAI-compatible endpoint, as the AI gateway reaches it
  --model-name NAME      the name ferrollama serves (default mistral:instruct)
  --name NAME            the self-hosted model's name in GitLab (default ferrollama-mistral)
  --api-token TOKEN      API token GitLab sends to ferrollama (default: a placeholder, which
                         ferrollama ignores unless it runs with --api-key)
  --timeout SECONDS      how long to wait for GitLab (default 3600)
  --poll SECONDS         pause between tries while waiting (default 15)
EOF
}

url="" token="${GITLAB_TOKEN:-}" endpoint="" served=mistral:instruct model_title=ferrollama-mistral
api_token=placeholder-ferrollama-needs-none timeout=3600 poll=15
while [ $# -gt 0 ]; do
  case "$1" in
    --url) url="${2%/}"; shift 2 ;;
    --token) token="$2"; shift 2 ;;
    --llm-endpoint) endpoint="$2"; shift 2 ;;
    --model-name) served="$2"; shift 2 ;;
    --name) model_title="$2"; shift 2 ;;
    --api-token) api_token="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --poll) poll="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$url" ] || { echo "error: --url is required" >&2; exit 2; }
[ -n "$endpoint" ] || { echo "error: --llm-endpoint is required" >&2; exit 2; }
[ -n "$token" ] || { echo "error: no API token: set GITLAB_TOKEN or pass --token" >&2; exit 2; }

die() { echo "error: $*" >&2; exit 1; }
say() { echo "$*"; }
changes=0

# curl with the token kept off the command line.
api() { curl --config <(printf 'header = "Authorization: Bearer %s"\n' "$token") "$@"; }

# gql QUERY [VARIABLES_JSON]: print the response's data; stop on any GraphQL error.
gql() {
  local body response
  body="$(jq -nc --arg q "$1" --argjson v "${2:-"{}"}" '{query: $q, variables: $v}')"
  response="$(api -fsS -H 'Content-Type: application/json' --data-binary "$body" "$url/api/graphql")" \
    || die "GraphQL request to $url/api/graphql failed"
  if jq -e '(.errors // []) | length > 0' >/dev/null <<<"$response"; then
    die "GraphQL error: $(jq -c '.errors' <<<"$response")"
  fi
  jq -c '.data' <<<"$response"
}

# mutate NAME INPUT_TYPE INPUT_JSON: run one mutation; stop if its payload reports errors.
mutate() {
  local data
  data="$(gql "mutation(\$input: $2!) { $1(input: \$input) { errors } }" "$(jq -nc --argjson i "$3" '{input: $i}')")"
  if jq -e --arg m "$1" '(.[$m].errors // []) | length > 0' >/dev/null <<<"$data"; then
    die "$1 failed: $(jq -c --arg m "$1" '.[$m].errors' <<<"$data")"
  fi
  changes=$((changes + 1))
}

# 1. Wait until GitLab serves its API with this token (the install, Let's Encrypt and the
#    token's creation all happen during the GitLab VM's first boot).
deadline=$((SECONDS + timeout))
until api -fsS --max-time 10 "$url/api/v4/version" >/dev/null 2>&1; do
  [ "$SECONDS" -lt "$deadline" ] || die "GitLab at $url did not answer $url/api/v4/version within ${timeout}s"
  say "waiting for GitLab at $url ..."
  sleep "$poll"
done
say "GitLab answers at $url"

# 2. Which arguments this GitLab has: aiFeatureSettingUpdate took `feature` (one) before it
#    took `features` (a list); the model's `identifier` came later than the model itself.
schema="$(gql 'query {
  featureInput: __type(name: "AiFeatureSettingUpdateInput") { inputFields { name } }
  modelInput: __type(name: "AiSelfHostedModelCreateInput") { inputFields { name } }
}')"
has_field() { jq -e --arg t "$1" --arg f "$2" 'any(.[$t].inputFields[]?; .name == $f)' >/dev/null <<<"$schema"; }
if has_field featureInput features; then feature_arg=features
elif has_field featureInput feature; then feature_arg=feature
else die "this GitLab has no aiFeatureSettingUpdate input with feature or features: is it GitLab EE 17.4 or later?"
fi
with_identifier=false
has_field modelInput identifier && with_identifier=true

# 3. The self-hosted model: create it, or bring an existing one of that name up to date.
wanted="$(jq -nc --arg name "$model_title" --arg endpoint "$endpoint" --arg token "$api_token" \
  --arg identifier "custom_openai/$served" --argjson with_id "$with_identifier" \
  '{name: $name, model: "MISTRAL", endpoint: $endpoint, apiToken: $token}
   + (if $with_id then {identifier: $identifier} else {} end)')"
fields="id name model endpoint"
[ "$with_identifier" = false ] || fields="$fields identifier"
models="$(gql "query { aiSelfHostedModels { nodes { $fields } } }")"
current="$(jq -c --arg n "$model_title" '[.aiSelfHostedModels.nodes[] | select(.name == $n)][0]' <<<"$models")"
if [ "$current" = null ]; then
  mutate aiSelfHostedModelCreate AiSelfHostedModelCreateInput "$wanted"
  say "created self-hosted model $model_title -> $endpoint"
  models="$(gql "query { aiSelfHostedModels { nodes { $fields } } }")"
  current="$(jq -c --arg n "$model_title" '[.aiSelfHostedModels.nodes[] | select(.name == $n)][0]' <<<"$models")"
  [ "$current" != null ] || die "the new self-hosted model $model_title is not listed"
elif jq -e --argjson w "$wanted" '(.model | ascii_downcase) == "mistral" and .endpoint == $w.endpoint
       and (($w | has("identifier") | not) or .identifier == $w.identifier)' >/dev/null <<<"$current"; then
  say "self-hosted model $model_title: already set"
else
  mutate aiSelfHostedModelUpdate AiSelfHostedModelUpdateInput \
    "$(jq -c --argjson c "$current" '. + {id: $c.id}' <<<"$wanted")"
  say "updated self-hosted model $model_title -> $endpoint"
fi
[ "$with_identifier" = true ] \
  || say "note: this GitLab has no model identifier; the gateway asks for 'mistral', which ferrollama also answers to"
model_id="$(jq -r '.id' <<<"$current")"

# 4. Code completions, code generations and Duo Chat on that model.
settings="$(gql 'query { aiFeatureSettings { nodes { feature provider selfHostedModel { id } } } }')"
missing=()
for feature in CODE_COMPLETIONS CODE_GENERATIONS DUO_CHAT; do
  if jq -e --arg f "${feature,,}" --arg id "$model_id" 'any(.aiFeatureSettings.nodes[];
       (.feature | ascii_downcase) == $f and (.provider | ascii_downcase) == "self_hosted"
       and .selfHostedModel.id == $id)' >/dev/null <<<"$settings"; then
    say "feature ${feature,,}: already on $model_title"
  else
    missing+=("$feature")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$feature_arg" = features ]; then
    mutate aiFeatureSettingUpdate AiFeatureSettingUpdateInput "$(jq -nc --arg id "$model_id" \
      '{features: $ARGS.positional, provider: "SELF_HOSTED", aiSelfHostedModelId: $id}' --args "${missing[@]}")"
  else
    for feature in "${missing[@]}"; do
      mutate aiFeatureSettingUpdate AiFeatureSettingUpdateInput "$(jq -nc --arg f "$feature" --arg id "$model_id" \
        '{feature: $f, provider: "SELF_HOSTED", aiSelfHostedModelId: $id}')"
    done
  fi
  say "features ${missing[*],,} now on $model_title"
fi

# 5. A Duo seat for the token's user (root): Duo Enterprise, else Duo Pro.
seats="$(gql 'query { currentUser { id username } addOnPurchases { id name purchasedQuantity assignedQuantity } }')"
user_id="$(jq -r '.currentUser.id' <<<"$seats")"
user_name="$(jq -r '.currentUser.username' <<<"$seats")"
purchase="$(jq -c '[.addOnPurchases[]? | select(.name == "DUO_ENTERPRISE")][0]
  // [.addOnPurchases[]? | select(.name == "CODE_SUGGESTIONS")][0]' <<<"$seats")"
[ "$purchase" != null ] \
  || die "no GitLab Duo add-on on this instance: upload a licence with Duo Enterprise (up.sh --license) and run this again"
purchase_id="$(jq -r '.id' <<<"$purchase")"
# shellcheck disable=SC2016  # $type, $ids and $search are GraphQL variables
eligible="$(gql 'query($type: GitlabSubscriptionsAddOnType!, $ids: [GitlabSubscriptionsAddOnPurchaseID!]!, $search: String) {
  selfManagedAddOnEligibleUsers(addOnType: $type, search: $search) {
    nodes { id username addOnAssignments(addOnPurchaseIds: $ids) { nodes { addOnPurchase { name } } } } } }' \
  "$(jq -nc --arg type "$(jq -r '.name' <<<"$purchase")" --arg id "$purchase_id" --arg u "$user_name" \
     '{type: $type, ids: [$id], search: $u}')")"
if jq -e --arg id "$user_id" 'any(.selfManagedAddOnEligibleUsers.nodes[]; .id == $id
     and (.addOnAssignments.nodes | length > 0))' >/dev/null <<<"$eligible"; then
  say "Duo seat for $user_name: already assigned"
else
  jq -e '.purchasedQuantity > .assignedQuantity' >/dev/null <<<"$purchase" \
    || die "every Duo seat of $(jq -r '.name' <<<"$purchase") is taken; free one for $user_name"
  mutate userAddOnAssignmentCreate UserAddOnAssignmentCreateInput \
    "$(jq -nc --arg p "$purchase_id" --arg u "$user_id" '{addOnPurchaseId: $p, userId: $u}')"
  say "assigned a $(jq -r '.name' <<<"$purchase") seat to $user_name"
fi

if [ "$changes" -eq 0 ]; then
  say "nothing to change: GitLab Duo Self-Hosted was already configured"
else
  say "GitLab Duo Self-Hosted configured ($changes change(s))"
fi
