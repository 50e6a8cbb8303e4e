#!/usr/bin/env bash
# The Admin Area clicks of GitLab Duo Self-Hosted, over GitLab's GraphQL API: after checking
# GitLab's version (17.6+) and waiting for its Duo Enterprise add-on, the AI gateway's URL
# (17.9+), the self-hosted model (ferrollama), that model for code completions, code
# generations and Duo Chat (with its sub-features where they exist), a Duo Enterprise seat for
# the token's user (root), and direct connections off (IDEs then reach the gateway through
# GitLab, not at its private address). It reads the current state first and only changes what
# differs, so a second run sends no mutation.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: GITLAB_TOKEN=TOKEN deploy/configure-gitlab.sh --url https://gitlab.example.com
         --llm-endpoint http://10.42.1.12:11434/v1 [options]

Waits until GitLab answers and has its Duo Enterprise add-on, then configures GitLab Duo
Self-Hosted over its API. Needs GitLab EE 17.6 or later with a Duo Enterprise licence.
  --url URL              GitLab's URL
  --token TOKEN          an admin's API token (better: the GITLAB_TOKEN environment variable)
  --llm-endpoint URL     ferrollama's OpenAI-compatible endpoint, as the AI gateway reaches it
  --gateway-url URL      the AI gateway as GitLab reaches it; GitLab 17.9+ keeps it in its Duo
                         settings (older ones read AI_GATEWAY_URL from their environment)
  --model-name NAME      the name ferrollama serves (default mistral:instruct)
  --name NAME            the self-hosted model's name in GitLab (default ferrollama-mistral)
  --api-token TOKEN      API token GitLab sends to ferrollama: its FERROLLAMA_API_KEY (better:
                         that environment variable, as up.sh passes the key it generated;
                         default: a placeholder, which ferrollama ignores unless it runs with a
                         key). GitLab never shows a stored token, so an existing model keeps
                         its own unless it has none
  --timeout SECONDS      how long to wait for GitLab (default 3600)
  --add-on-timeout SECONDS
                         how long to wait for the Duo Enterprise add-on purchase to appear
                         after the licence is in (default 900)
  --poll SECONDS         pause between tries while waiting (default 15)
EOF
}

url="" token="${GITLAB_TOKEN:-}" endpoint="" gateway_url="" served=mistral:instruct model_title=ferrollama-mistral
api_token="${FERROLLAMA_API_KEY:-placeholder-ferrollama-needs-none}" timeout=3600 add_on_timeout=900 poll=15
while [ $# -gt 0 ]; do
  case "$1" in
    --url) url="${2%/}"; shift 2 ;;
    --token) token="$2"; shift 2 ;;
    --llm-endpoint) endpoint="$2"; shift 2 ;;
    --gateway-url) gateway_url="${2%/}"; shift 2 ;;
    --model-name) served="$2"; shift 2 ;;
    --name) model_title="$2"; shift 2 ;;
    --api-token) api_token="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --add-on-timeout) add_on_timeout="$2"; shift 2 ;;
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
  # The body (it may hold ferrollama's key) on stdin, not on the command line.
  response="$(api -fsS -H 'Content-Type: application/json' --data-binary @- "$url/api/graphql" <<<"$body")" \
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
until version="$(api -fsS --max-time 10 "$url/api/v4/version" 2>/dev/null)"; do
  [ "$SECONDS" -lt "$deadline" ] || die "GitLab at $url did not answer $url/api/v4/version within ${timeout}s"
  say "waiting for GitLab at $url ..."
  sleep "$poll"
done
version="$(jq -r '.version // empty' <<<"$version")"
say "GitLab $version answers at $url"

# 2. GitLab 17.6 or later: before it, self-hosted models sat behind the ai_custom_model feature
#    flag, off by default.
[[ "$version" =~ ^([0-9]+)\.([0-9]+)\. ]] || die "GitLab reported version '$version', which is not X.Y.Z"
if [ "${BASH_REMATCH[1]}" -lt 17 ] || { [ "${BASH_REMATCH[1]}" = 17 ] && [ "${BASH_REMATCH[2]}" -lt 6 ]; }; then
  die "GitLab $version is too old: GitLab Duo Self-Hosted needs 17.6 or later (before it, the ai_custom_model flag is off)"
fi

# 3. The Duo Enterprise add-on purchase. GitLab refuses every self-hosted model query and
#    mutation without one, and only Duo Enterprise bundles self-hosted models (Duo Pro, the
#    CODE_SUGGESTIONS add-on, does not). A licence file creates the purchase only when the
#    licence's add-ons are provisioned (at the Admin Area upload, by the daily offline-licence
#    worker, or by deploy/firstboot/provision-duo.sh at the GitLab VM's first boot), so wait
#    for it, a bounded time.
add_on_query='query { currentUser { id username } addOnPurchases { id name purchasedQuantity assignedQuantity } }'
deadline=$((SECONDS + add_on_timeout))
while :; do
  seats="$(gql "$add_on_query")"
  purchase="$(jq -c '[.addOnPurchases[]? | select(.name == "DUO_ENTERPRISE")][0]' <<<"$seats")"
  [ "$purchase" = null ] || break
  others="$(jq -r '[.addOnPurchases[]?.name] | join(", ")' <<<"$seats")"
  if [ "$SECONDS" -ge "$deadline" ]; then
    die "no GitLab Duo Enterprise add-on on this instance after ${add_on_timeout}s$([ -z "$others" ] || echo " (it has: $others; Duo Pro does not include self-hosted models)").
  GitLab Duo Self-Hosted needs a licence with Duo Enterprise seats. Give up.sh --license FILE or
  --activation-code CODE, or add one in the Admin Area (Subscription); after a licence file, make
  GitLab provision its add-ons at once with: sudo ferrollama-provision-duo (on the GitLab VM)"
  fi
  say "waiting for the Duo Enterprise add-on purchase$([ -z "$others" ] || echo " (this instance has: $others)") ..."
  sleep "$poll"
done
say "Duo Enterprise add-on: $(jq -r '.purchasedQuantity' <<<"$purchase") seat(s)"

# 4. Which arguments this GitLab has, by introspection: aiFeatureSettingUpdate took `feature`
#    (one) before it took `features` (a list); the model's `identifier` came later than the
#    model itself; from 17.9 the AI gateway's URL is a Duo setting, and Duo Chat has
#    sub-features (DUO_CHAT_EXPLAIN_CODE, ...) that each name a model.
schema="$(gql 'query {
  featureInput: __type(name: "AiFeatureSettingUpdateInput") { inputFields { name } }
  modelInput: __type(name: "AiSelfHostedModelCreateInput") { inputFields { name } }
  modelType: __type(name: "AiSelfHostedModel") { fields { name } }
  duoSettingsInput: __type(name: "DuoSettingsUpdateInput") { inputFields { name } }
  features: __type(name: "AiFeatures") { enumValues { name } }
}')"
has_field() { jq -e --arg t "$1" --arg f "$2" 'any((.[$t].inputFields // .[$t].fields)[]?; .name == $f)' >/dev/null <<<"$schema"; }
if has_field featureInput features; then feature_arg=features
elif has_field featureInput feature; then feature_arg=feature
else die "this GitLab has no aiFeatureSettingUpdate input with feature or features: is it GitLab EE 17.6 or later?"
fi
with_identifier=false
has_field modelInput identifier && with_identifier=true
mapfile -t chat_features < <(jq -r '.features.enumValues[]?.name | select(startswith("DUO_CHAT_"))' <<<"$schema")

# 5. The AI gateway's URL, where GitLab keeps it in its settings (17.9+).
if has_field duoSettingsInput aiGatewayUrl; then
  [ -n "$gateway_url" ] || die "this GitLab (17.9+) takes the AI gateway's URL in its Duo settings: pass --gateway-url http://GATEWAY:5052"
  current_gateway="$(gql 'query { duoSettings { aiGatewayUrl } }' | jq -r '.duoSettings.aiGatewayUrl // empty')"
  if [ "${current_gateway%/}" = "$gateway_url" ]; then
    say "AI gateway URL: already $gateway_url"
  else
    mutate duoSettingsUpdate DuoSettingsUpdateInput "$(jq -nc --arg u "$gateway_url" '{aiGatewayUrl: $u}')"
    say "AI gateway URL set to $gateway_url"
  fi
fi

# 6. The self-hosted model: create it, or bring an existing one of that name up to date.
wanted="$(jq -nc --arg name "$model_title" --arg endpoint "$endpoint" --arg token "$api_token" \
  --arg identifier "custom_openai/$served" --argjson with_id "$with_identifier" \
  '{name: $name, model: "MISTRAL", endpoint: $endpoint, apiToken: $token}
   + (if $with_id then {identifier: $identifier} else {} end)')"
fields="id name model endpoint"
[ "$with_identifier" = false ] || fields="$fields identifier"
# Whether the model has a token (GitLab shows that, never the token): one without gets ours.
if has_field modelType hasApiToken; then fields="$fields hasApiToken"; fi
models="$(gql "query { aiSelfHostedModels { nodes { $fields } } }")"
current="$(jq -c --arg n "$model_title" '[.aiSelfHostedModels.nodes[] | select(.name == $n)][0]' <<<"$models")"
if [ "$current" = null ]; then
  mutate aiSelfHostedModelCreate AiSelfHostedModelCreateInput "$wanted"
  say "created self-hosted model $model_title -> $endpoint"
  models="$(gql "query { aiSelfHostedModels { nodes { $fields } } }")"
  current="$(jq -c --arg n "$model_title" '[.aiSelfHostedModels.nodes[] | select(.name == $n)][0]' <<<"$models")"
  [ "$current" != null ] || die "the new self-hosted model $model_title is not listed"
elif jq -e --argjson w "$wanted" '(.model | ascii_downcase) == "mistral" and .endpoint == $w.endpoint
       and (($w | has("identifier") | not) or .identifier == $w.identifier)
       and ((has("hasApiToken") | not) or .hasApiToken)' >/dev/null <<<"$current"; then
  say "self-hosted model $model_title: already set"
else
  mutate aiSelfHostedModelUpdate AiSelfHostedModelUpdateInput \
    "$(jq -c --argjson c "$current" '. + {id: $c.id}' <<<"$wanted")"
  say "updated self-hosted model $model_title -> $endpoint"
fi
[ "$with_identifier" = true ] \
  || say "note: this GitLab has no model identifier; the gateway asks for 'mistral', which ferrollama also answers to"
model_id="$(jq -r '.id' <<<"$current")"

# 7. Code completions, code generations and Duo Chat (with its sub-features, where this GitLab
#    has them) on that model.
settings="$(gql 'query { aiFeatureSettings { nodes { feature provider selfHostedModel { id } } } }')"
missing=()
for feature in CODE_COMPLETIONS CODE_GENERATIONS DUO_CHAT "${chat_features[@]}"; do
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

# 8. A Duo Enterprise seat for the token's user (root).
user_id="$(jq -r '.currentUser.id' <<<"$seats")"
user_name="$(jq -r '.currentUser.username' <<<"$seats")"
purchase_id="$(jq -r '.id' <<<"$purchase")"
# shellcheck disable=SC2016  # $type, $ids and $search are GraphQL variables
eligible="$(gql 'query($type: GitlabSubscriptionsAddOnType!, $ids: [GitlabSubscriptionsAddOnPurchaseID!]!, $search: String) {
  selfManagedAddOnEligibleUsers(addOnType: $type, search: $search) {
    nodes { id username addOnAssignments(addOnPurchaseIds: $ids) { nodes { addOnPurchase { name } } } } } }' \
  "$(jq -nc --arg id "$purchase_id" --arg u "$user_name" '{type: "DUO_ENTERPRISE", ids: [$id], search: $u}')")"
if jq -e --arg id "$user_id" 'any(.selfManagedAddOnEligibleUsers.nodes[]; .id == $id
     and (.addOnAssignments.nodes | length > 0))' >/dev/null <<<"$eligible"; then
  say "Duo Enterprise seat for $user_name: already assigned"
else
  jq -e '.purchasedQuantity > .assignedQuantity' >/dev/null <<<"$purchase" \
    || die "every Duo Enterprise seat is taken; free one for $user_name"
  mutate userAddOnAssignmentCreate UserAddOnAssignmentCreateInput \
    "$(jq -nc --arg p "$purchase_id" --arg u "$user_id" '{addOnPurchaseId: $p, userId: $u}')"
  say "assigned a Duo Enterprise seat to $user_name"
fi

# 9. Direct connections off. With them on, GitLab answers an editor extension's
#    POST /api/v4/code_suggestions/direct_access with the AI gateway's URL, a private address
#    the IDE cannot reach; off, it answers 403 and the IDE asks GitLab, which forwards to the
#    gateway. GitLab ignores the setting on an instance without code suggestions among its
#    add-ons, answering 200 all the same, so the value GitLab reports back is what counts.
settings_url="$url/api/v4/application/settings"
direct="$(api -fsS "$settings_url" | jq -r '.disabled_direct_code_suggestions')" || die "GET $settings_url failed"
if [ "$direct" = true ]; then
  say "direct connections for IDEs: already off"
else
  direct="$(api -fsS -X PUT --data disabled_direct_code_suggestions=true "$settings_url" \
    | jq -r '.disabled_direct_code_suggestions')" || die "PUT $settings_url failed"
  [ "$direct" = true ] \
    || die "GitLab kept direct connections on (disabled_direct_code_suggestions: $direct): IDEs would be handed the AI gateway's private URL. Turn them off in the Admin area's GitLab Duo settings (Direct connections)"
  changes=$((changes + 1))
  say "direct connections for IDEs turned off: they reach code suggestions through GitLab"
fi

if [ "$changes" -eq 0 ]; then
  say "nothing to change: GitLab Duo Self-Hosted was already configured"
else
  say "GitLab Duo Self-Hosted configured ($changes change(s))"
fi
