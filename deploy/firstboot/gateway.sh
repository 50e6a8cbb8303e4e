#!/usr/bin/env bash
# First boot of the AI gateway VM (run by cloud-init): start GitLab's gateway container (the
# image pinned by digest) with the environment cloud-init wrote, restarting with Docker, and
# wait until it reports healthy.
set -euo pipefail
# shellcheck source=/dev/null
. "${FERROLLAMA_DEPLOY_SETTINGS:-/etc/ferrollama-deploy/settings.env}"  # tests point elsewhere

systemctl enable --now docker
docker pull "$GATEWAY_IMAGE"
docker rm --force gitlab-ai-gateway >/dev/null 2>&1 || true
# Published on the private IP only; the firewall limits it to the private network as well.
# The gateway calls GitLab back by its domain (AIGW_GITLAB_URL): --add-host sends that to
# GitLab's private address, so the call stays inside the network instead of leaving through
# NAT and coming back to the public IP (which costs NAT traffic and fails where the cloud does
# not hairpin). The certificate still matches, since the name is the same.
# The gateway is a Python service, so the container's own health check uses its Python.
docker run --detach --name gitlab-ai-gateway --restart unless-stopped \
  --env-file /etc/gitlab-ai-gateway/gateway.env \
  --add-host "$DOMAIN:$GITLAB_IP" \
  --publish "$GATEWAY_IP:$GATEWAY_PORT:5052" \
  --health-cmd "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:5052/monitoring/healthz', timeout=5)\"" \
  --health-interval 30s --health-timeout 10s --health-retries 3 \
  "$GATEWAY_IMAGE"

# Healthy: the process answers. Not /monitoring/ready: on a self-hosted gateway it runs real
# Vertex and Anthropic calls, which fail without those vendors' credentials, so it never
# answers 200 here. That the gateway serves is proved by a completion through it
# (ferrollama-verify on the GitLab VM), once GitLab is configured.
for _ in $(seq 60); do
  if curl -fsS --max-time 5 "http://$GATEWAY_IP:$GATEWAY_PORT/monitoring/healthz" >/dev/null; then
    echo "AI gateway /monitoring/healthz answers on $GATEWAY_IP:$GATEWAY_PORT"; exit 0
  fi
  sleep 5
done
echo "AI gateway /monitoring/healthz failing after 5 minutes: see docker logs gitlab-ai-gateway" >&2
exit 1
