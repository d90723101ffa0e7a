#!/usr/bin/env bash
# System packages the test suite drives for real: redis-server (the shared session store), nginx
# (the multi-replica test), Chromium (the playground test), wrk (the bench harness test),
# podman + buildah + debootstrap + runc (the image smoke test builds and runs the image), and
# curl + jq (the docs' shell examples, which tests/docs runs).
# Installed only when missing; needs root (otherwise the tests that need them skip).
#
# The tests start their own redis-server and nginx on free loopback ports and stop them again, so
# this script never starts, stops or restarts a service: daemons the machine runs for other things
# are left as they are. While it installs, a policy-rc.d (unless the machine has its own) denies
# packages starting their daemons, so installing redis-server or nginx leaves none running either.
set -euo pipefail

have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
need=()
for tool in redis-server nginx chromium wrk podman buildah debootstrap runc curl jq; do
  have "$tool" || need+=("$tool") # each tool's Debian package has its name
done
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${need[*]} (not root: the tests that need them will skip)" >&2
  exit 0
fi

log=$(mktemp)
policy=/usr/sbin/policy-rc.d
own_policy=0
cleanup() {
  rm -f "$log"
  if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
  # exit 101 = "action forbidden" to invoke-rc.d and deb-systemd-invoke: no daemon starts
  printf '#!/bin/sh\n# written by rnnserve scripts/system-deps.sh for its install only\nexit 101\n' \
    >"$policy"
  chmod 755 "$policy"
  own_policy=1
fi

echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# apt's progress and debconf chatter go to the log, shown only when something fails
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
  >"$log" 2>&1; then
  cat "$log" >&2
  echo "system-deps: apt-get failed (output above)" >&2
  exit 1
fi
