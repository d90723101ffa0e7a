#!/usr/bin/env bash
# System packages the test suite drives for real (Redis for the shared session store, nginx for the
# multi-replica test, Chromium for the playground test). Installed only when missing; needs root.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${need[*]} (not root: the tests that need them will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts nothing here, but make sure no packaged daemon holds the default ports.
(service redis-server stop || true; service nginx stop || true) >/dev/null 2>&1
