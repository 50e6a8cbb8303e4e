#!/usr/bin/env bash
# Checks each hop of GitLab Duo Self-Hosted from the GitLab VM and prints a pass/fail table:
# ferrollama (and the device it runs on, with its decode rate), the AI gateway (healthy and
# ready), a code completion through GitLab and the gateway, and GitLab's own self-hosted setup
# check. Installed on the GitLab VM as ferrollama-verify (run it as root).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ferrollama-verify [--settings FILE] [--gitlab-url URL] [--gateway-url URL]
                         [--llm-url URL] [--model NAME] [--token TOKEN]

Defaults come from FILE (default /etc/ferrollama-deploy/settings.env, written by cloud-init):
DOMAIN, GATEWAY_URL, LLM_URL, MODEL_NAME and ADMIN_TOKEN. The token may also be given in the
environment as GITLAB_TOKEN. Exits 0 only when every check passes.
EOF
}

settings=/etc/ferrollama-deploy/settings.env
gitlab_url="" gateway_url="" llm_url="" model="" token="${GITLAB_TOKEN:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --settings) settings="$2"; shift 2 ;;
    --gitlab-url) gitlab_url="$2"; shift 2 ;;
    --gateway-url) gateway_url="$2"; shift 2 ;;
    --llm-url) llm_url="$2"; shift 2 ;;
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

rows=()
failed=0
# row CHECK RESULT DETAIL
row() {
  rows+=("$(printf '%-36s %-6s %s' "$1" "$2" "$3")")
  [ "$2" = PASS ] || failed=1
}
# The first line of a text, shortened, for the detail column.
brief() { head -n 1 <<<"$1" | cut -c 1-90; }

# 1. ferrollama answers on the private network and serves the model GitLab asks for.
if out="$(curl -fsS --max-time 10 "$llm_url/v1/models" 2>&1)"; then
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
if out="$(curl -fsS --max-time 300 -H 'Content-Type: application/json' --data-binary "$request" \
    "$llm_url/api/generate" 2>&1)" \
   && rate="$(jq -er 'if .eval_count > 0 and .eval_duration > 0
       then (.eval_count / (.eval_duration / 1e9) * 10 | round / 10 | tostring) else error end' 2>/dev/null <<<"$out")" \
   && ps="$(curl -fsS --max-time 10 "$llm_url/api/ps" 2>&1)"; then
  if jq -e '[.models[]?.size_vram // 0] | max > 0' >/dev/null 2>&1 <<<"$ps"; then device=GPU; else device=CPU; fi
  row "ferrollama device and decode rate" PASS "$device, $rate tok/s over $(jq -r .eval_count <<<"$out") tokens"
else
  row "ferrollama device and decode rate" FAIL "$(brief "$out")"
fi

# 3. The AI gateway is up (healthz) and can serve (ready).
for probe in healthz ready; do
  if out="$(curl -fsS --max-time 10 "$gateway_url/monitoring/$probe" 2>&1)"; then
    row "AI gateway /monitoring/$probe" PASS "$gateway_url"
  else
    row "AI gateway /monitoring/$probe" FAIL "$(brief "$out")"
  fi
done

# 4. A code completion the way an editor asks for one: GitLab -> gateway -> ferrollama.
request='{"current_file": {"file_name": "fib.py", "content_above_cursor": "def fibonacci(n):\n    ", "content_below_cursor": ""}, "intent": "completion"}'
if [ -z "$token" ]; then
  row "code completion via the gateway" FAIL "no API token (ADMIN_TOKEN or --token)"
elif out="$(curl -sS --max-time 120 -w '\n%{http_code}' \
    --config <(printf 'header = "Authorization: Bearer %s"\n' "$token") \
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

# 5. GitLab's own check of the self-hosted setup (licence, seat, gateway, model).
if out="$(gitlab-rake 'gitlab:duo:verify_self_hosted_setup[root]' 2>&1)"; then
  row "gitlab:duo:verify_self_hosted_setup" PASS "rake task passed"
else
  row "gitlab:duo:verify_self_hosted_setup" FAIL "$(brief "$(tail -n 1 <<<"$out")")"
fi

printf '%-36s %-6s %s\n' CHECK RESULT DETAIL
printf '%s\n' "${rows[@]}"
if [ "$failed" = 0 ]; then echo "all checks passed"; else echo "some checks failed: see deploy/README.md, 'When a check fails'"; fi
exit "$failed"
