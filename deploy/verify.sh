#!/usr/bin/env bash
# Checks each hop of GitLab Duo Self-Hosted from the GitLab VM and prints a pass/fail table:
# ferrollama (its key enforced, the device it runs on and its decode rate), the AI gateway's
# health, a code completion through GitLab and the gateway (the proof that the gateway serves),
# what GitLab hands an IDE, and GitLab's own self-hosted setup check. Installed on the GitLab
# VM as ferrollama-verify (run it as root).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ferrollama-verify [--settings FILE] [--gitlab-url URL] [--gateway-url URL]
                         [--llm-url URL] [--llm-api-key KEY] [--model NAME] [--token TOKEN]

Defaults come from FILE (default /etc/ferrollama-deploy/settings.env, written by cloud-init):
DOMAIN, GATEWAY_URL, LLM_URL, LLM_API_KEY, MODEL_NAME and ADMIN_TOKEN. The token may also be
given in the environment as GITLAB_TOKEN. Exits 0 only when every check passes.
EOF
}

settings=/etc/ferrollama-deploy/settings.env
gitlab_url="" gateway_url="" llm_url="" llm_key="" model="" token="${GITLAB_TOKEN:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --settings) settings="$2"; shift 2 ;;
    --gitlab-url) gitlab_url="$2"; shift 2 ;;
    --gateway-url) gateway_url="$2"; shift 2 ;;
    --llm-url) llm_url="$2"; shift 2 ;;
    --llm-api-key) llm_key="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --token) token="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -f "$settings" ]; then
  # shellcheck source=/dev/null
  . "$settings"
fi
gitlab_url="${gitlab_url:-https://${DOMAIN:?no --gitlab-url and no DOMAIN in $settings}}"
gateway_url="${gateway_url:-${GATEWAY_URL:?no --gateway-url and no GATEWAY_URL in $settings}}"
llm_url="${llm_url:-${LLM_URL:?no --llm-url and no LLM_URL in $settings}}"
model="${model:-${MODEL_NAME:-mistral:instruct}}"
token="${token:-${ADMIN_TOKEN:-}}"
llm_key="${llm_key:-${LLM_API_KEY:-}}"

rows=()
failed=0
# row CHECK RESULT DETAIL
row() {
  rows+=("$(printf '%-36s %-6s %s' "$1" "$2" "$3")")
  [ "$2" = PASS ] || failed=1
}
# The first line of a text, shortened, for the detail column.
brief() { head -n 1 <<<"$1" | cut -c 1-90; }
# curl with a bearer token kept off the command line: bearer TOKEN CURL_ARGS...
bearer() { local t="$1"; shift; curl --config <(printf 'header = "Authorization: Bearer %s"\n' "$t") "$@"; }
llm() { bearer "$llm_key" "$@"; }

# 1. ferrollama answers on the private network and serves the model GitLab asks for.
if out="$(llm -fsS --max-time 10 "$llm_url/v1/models" 2>&1)"; then
  if jq -e --arg m "$model" 'any(.data[]; .id == $m)' >/dev/null 2>&1 <<<"$out"; then
    row "ferrollama /v1/models" PASS "$model served at $llm_url"
  else
    row "ferrollama /v1/models" FAIL "$model not listed: $(brief "$out")"
  fi
else
  row "ferrollama /v1/models" FAIL "$(brief "$out")"
fi

# 2. Where ferrollama runs the model (Ollama's /api/ps: size_vram > 0 means on the GPU) and
#    how fast it decodes: 64 tokens, timed by the server itself (eval_count / eval_duration).
request="$(jq -nc --arg m "$model" '{model: $m, prompt: "Count from one to one hundred in words:",
  stream: false, options: {num_predict: 64, temperature: 0}}')"
if out="$(llm -fsS --max-time 300 -H 'Content-Type: application/json' --data-binary "$request" \
    "$llm_url/api/generate" 2>&1)" \
   && rate="$(jq -er 'if .eval_count > 0 and .eval_duration > 0
       then (.eval_count / (.eval_duration / 1e9) * 10 | round / 10 | tostring) else error end' 2>/dev/null <<<"$out")" \
   && ps="$(llm -fsS --max-time 10 "$llm_url/api/ps" 2>&1)"; then
  if jq -e '[.models[]?.size_vram // 0] | max > 0' >/dev/null 2>&1 <<<"$ps"; then device=GPU; else device=CPU; fi
  row "ferrollama device and decode rate" PASS "$device, $rate tok/s over $(jq -r .eval_count <<<"$out") tokens"
else
  row "ferrollama device and decode rate" FAIL "$(brief "$out")"
fi

# 3. Without the key ferrollama answers nothing (401): nobody else on the private network can
#    delete or pull models. A harmless GET, so that a broken check cannot delete anything.
status="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$llm_url/v1/models" 2>&1)" || true
if [ -z "$llm_key" ]; then
  row "ferrollama refuses a missing key" FAIL "no LLM_API_KEY: anyone on the network can call /api/delete"
elif [ "$status" = 401 ]; then
  row "ferrollama refuses a missing key" PASS "401 without the key"
else
  row "ferrollama refuses a missing key" FAIL "$(brief "HTTP $status without the key")"
fi

# 4. The AI gateway process is up. Its /monitoring/ready is no use on a self-hosted gateway: it
#    runs real Vertex and Anthropic calls, so it fails without those vendors' credentials.
#    That the gateway serves is what the completion below proves.
if out="$(curl -fsS --max-time 10 "$gateway_url/monitoring/healthz" 2>&1)"; then
  row "AI gateway /monitoring/healthz" PASS "$gateway_url"
else
  row "AI gateway /monitoring/healthz" FAIL "$(brief "$out")"
fi

# 5. A code completion the way an editor asks for one: GitLab -> gateway -> ferrollama.
request='{"current_file": {"file_name": "fib.py", "content_above_cursor": "def fibonacci(n):\n    ", "content_below_cursor": ""}, "intent": "completion"}'
if [ -z "$token" ]; then
  row "code completion via the gateway" FAIL "no API token (ADMIN_TOKEN or --token)"
elif out="$(bearer "$token" -sS --max-time 120 -w '\n%{http_code}' \
    -H 'Content-Type: application/json' --data-binary "$request" \
    "$gitlab_url/api/v4/code_suggestions/completions" 2>&1)"; then
  status="${out##*$'\n'}" body="${out%$'\n'*}"
  if [ "$status" = 200 ] && text="$(jq -er '.choices[0].text | strings' 2>/dev/null <<<"$body")"; then
    row "code completion via the gateway" PASS "$(brief "$(tr '\n' ' ' <<<"$text")")"
  else
    row "code completion via the gateway" FAIL "HTTP $status: $(brief "$body")"
  fi
else
  row "code completion via the gateway" FAIL "$(brief "$out")"
fi

# 6. What GitLab gives an IDE that asks to connect directly. With direct connections on, it is
#    the AI gateway's private URL, which an editor cannot reach; off (configure-gitlab.sh),
#    GitLab answers 403 and the IDE sends its requests through GitLab, as in check 5.
if [ -z "$token" ]; then
  row "IDEs go through GitLab (no direct)" FAIL "no API token (ADMIN_TOKEN or --token)"
elif out="$(bearer "$token" -sS --max-time 30 -X POST -w '\n%{http_code}' \
    "$gitlab_url/api/v4/code_suggestions/direct_access" 2>&1)"; then
  status="${out##*$'\n'}" body="${out%$'\n'*}"
  if [ "$status" = 403 ]; then
    row "IDEs go through GitLab (no direct)" PASS "direct_access refused (403): direct connections off"
  elif [[ "$status" == 2* ]]; then
    row "IDEs go through GitLab (no direct)" FAIL "IDEs are handed $(jq -r '.base_url // "?"' <<<"$body" 2>/dev/null): rerun configure-gitlab.sh"
  else
    row "IDEs go through GitLab (no direct)" FAIL "HTTP $status: $(brief "$body")"
  fi
else
  row "IDEs go through GitLab (no direct)" FAIL "$(brief "$out")"
fi

# 7. GitLab's own check of the self-hosted setup (licence, seat, gateway, model).
if out="$(gitlab-rake 'gitlab:duo:verify_self_hosted_setup[root]' 2>&1)"; then
  row "gitlab:duo:verify_self_hosted_setup" PASS "rake task passed"
else
  row "gitlab:duo:verify_self_hosted_setup" FAIL "$(brief "$(tail -n 1 <<<"$out")")"
fi

printf '%-36s %-6s %s\n' CHECK RESULT DETAIL
printf '%s\n' "${rows[@]}"
if [ "$failed" = 0 ]; then echo "all checks passed"; else echo "some checks failed: see deploy/README.md, 'When a check fails'"; fi
exit "$failed"
