#!/usr/bin/env bash
# Health check of the llm role: ferrollama lists the served model on /v1/models and answers one
# chat completion. Installed on the llm VM as ferrollama-healthcheck; it reads the address, the
# model name and the optional API key from the service's EnvironmentFile.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: llm-healthcheck.sh [--env-file FILE] [--url URL] [--model NAME] [--wait SECONDS]

Checks that ferrollama lists the model on /v1/models and answers a chat completion.
  --env-file FILE   the service's environment (default /etc/ferrollama/ferrollama.env):
                    OLLAMA_HOST, FERROLLAMA_NAME and FERROLLAMA_API_KEY are read from it
  --url URL         base URL, overriding OLLAMA_HOST (e.g. http://10.42.1.12:11434)
  --model NAME      model name, overriding FERROLLAMA_NAME
  --wait SECONDS    keep trying /v1/models this long while the server starts (default 0)
Exits 0 when both checks pass, 1 otherwise.
EOF
}

env_file=/etc/ferrollama/ferrollama.env
url="" model="" wait_s=0
while [ $# -gt 0 ]; do
  case "$1" in
    --env-file) env_file="$2"; shift 2 ;;
    --url) url="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --wait) wait_s="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

# One KEY's value from a systemd EnvironmentFile (plain KEY=value lines, optional quotes); read,
# not sourced, because systemd does not run it through a shell either.
env_value() {
  local key="$1" line value=""
  [ -f "$env_file" ] || return 0
  while IFS= read -r line; do
    case "$line" in
      "$key="*) value="${line#"$key="}" ;;
    esac
  done <"$env_file"
  value="${value%\"}"; value="${value#\"}"; value="${value%\'}"; value="${value#\'}"
  printf '%s' "$value"
}

if [ -z "$url" ]; then
  host="$(env_value OLLAMA_HOST)"
  host="${host:-127.0.0.1:11434}"
  case "$host" in http://*|https://*) url="$host" ;; *) url="http://$host" ;; esac
fi
url="${url%/}"
model="${model:-$(env_value FERROLLAMA_NAME)}"
[ -n "$model" ] || { echo "error: no model name (FERROLLAMA_NAME or --model)" >&2; exit 2; }
api_key="${FERROLLAMA_API_KEY:-$(env_value FERROLLAMA_API_KEY)}"

# curl with the bearer token (when there is one) kept off the command line.
call() {
  if [ -n "$api_key" ]; then
    curl --config <(printf 'header = "Authorization: Bearer %s"\n' "$api_key") "$@"
  else
    curl "$@"
  fi
}

fail() { echo "FAIL: $*" >&2; exit 1; }

# SECONDS ticks on whole wall-clock seconds, so it can advance just after the script starts:
# one more second keeps the wait from ever being shorter than asked.
deadline=$((SECONDS + wait_s + 1))
until models="$(call -fsS --max-time 10 "$url/v1/models" 2>/dev/null)"; do
  [ "$SECONDS" -lt "$deadline" ] || fail "$url/v1/models does not answer"
  sleep 2
done
jq -e --arg m "$model" 'any(.data[]; .id == $m)' >/dev/null <<<"$models" \
  || fail "/v1/models does not list '$model': $(jq -c '[.data[].id]' <<<"$models" 2>/dev/null || echo "$models")"
echo "ok: $url/v1/models lists $model"

request="$(jq -nc --arg m "$model" \
  '{model: $m, messages: [{role: "user", content: "Say hello in one word."}], max_tokens: 8, temperature: 0}')"
reply="$(call -fsS --max-time 120 -H 'Content-Type: application/json' --data-binary "$request" \
  "$url/v1/chat/completions")" || fail "POST $url/v1/chat/completions failed"
content="$(jq -er '.choices[0].message | select(.role == "assistant") | .content | select(type == "string" and length > 0)' <<<"$reply")" \
  || fail "chat completion without an assistant reply: $reply"
echo "ok: chat completion answered: $(tr '\n' ' ' <<<"$content")"
