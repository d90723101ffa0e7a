#!/usr/bin/env bash
# Build the image with podman (scripts/build-image.sh) and prove it serves:
#   - runs as uid 10001 with a read-only root filesystem, no torch inside, HEALTHCHECK passes
#   - the baked-in models are the ones in models/ (GET /v1/models)
#   - with the test fixture models mounted over /app/models: /readyz, a prediction, a streamed
#     generation, a session (create, feed, generate)
#   - SIGTERM stops it cleanly (graceful drain, exit 0)
# then prints the image size and removes its containers. Everything binds to 127.0.0.1.
#
#   deploy/image-smoke.sh [--no-build] [--tag NAME]
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${RNNSERVE_IMG_WORK:-/tmp/rnnserve-img}"
TAG="localhost/rnnserve:latest"
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    --tag) TAG="$2"; shift ;;
    *) echo "image-smoke: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
export CONTAINERS_CONF="${CONTAINERS_CONF:-$WORK/containers.conf}"
# podman without systemd (containers, CI) logs an error per healthcheck timer; the checks are run
# explicitly below instead
podman() { command podman "$@" 2> >(grep -v -e 'systemd connection' >&2); }
say() { printf 'image-smoke: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

if [ "$BUILD" = 1 ]; then
  "$ROOT/scripts/build-image.sh" --tag "$TAG" >/dev/null
fi
podman image exists "$TAG" || fail "no image $TAG (run without --no-build)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
containers=()
cleanup() {
  for c in "${containers[@]}"; do podman rm -f -t 5 "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

run() {  # run NAME PORT [podman args...]: start detached, hardened like the k8s Deployment
  local name=$1 port=$2; shift 2
  podman run -d --name "$name" -p "127.0.0.1:$port:8000" --read-only --tmpfs /tmp \
    --cap-drop ALL --security-opt no-new-privileges --health-interval disable \
    "$@" "$TAG" >/dev/null
  containers+=("$name")
}
wait_http() {  # wait_http URL SECONDS
  local deadline=$(( $(date +%s) + $2 ))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.3
  done
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

suffix="$$"
# 1. the image as shipped
c1="rnnserve-smoke-baked-$suffix"; p1=$(free_port)
run "$c1" "$p1"
wait_http "http://127.0.0.1:$p1/healthz" 60 || { podman logs "$c1" | tail -20; fail "/healthz"; }
[ "$(podman exec "$c1" id -u)" = 10001 ] || fail "not running as uid 10001"
podman exec "$c1" python3 -c 'import torch' 2>/dev/null && fail "torch is importable in the image"
podman exec "$c1" sh -c 'touch /app/x' 2>/dev/null && fail "root filesystem is writable"
podman healthcheck run "$c1" >/dev/null 2>&1 || fail "HEALTHCHECK failed"
baked=$(curl -fsS "http://127.0.0.1:$p1/v1/models" | json '" ".join(sorted(m["name"] for m in d["models"]))')
shipped=$(find "$ROOT/models" -mindepth 2 -maxdepth 3 -name manifest.json -printf '%h\n' 2>/dev/null \
  | xargs -r -n1 basename | sort | tr '\n' ' ' | sed 's/ $//')
say "baked-in models: [${baked}] (models/: [${shipped}])"
[ "$baked" = "$shipped" ] || say "note: served names differ from models/ folder names"
podman stop -t 40 "$c1" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$c1")
podman logs "$c1" 2>&1 | grep -q '"stopped"' || fail "no graceful 'stopped' log line after SIGTERM"
say "SIGTERM: exit code $code, drained"

# 2. models mounted over /app/models (the fixture models), the API end to end
c2="rnnserve-smoke-api-$suffix"; p2=$(free_port)
run "$c2" "$p2" -v "$ROOT/tests/fixtures/models:/app/models:ro"
base="http://127.0.0.1:$p2"
wait_http "$base/readyz" 60 || { podman logs "$c2" | tail -20; fail "/readyz"; }
curl -fsS "$base/readyz" | json 'd["ready"]' | grep -qx True || fail "/readyz not ready"
label=$(curl -fsS -H 'content-type: application/json' -d '{"inputs":["a wonderful film"]}' \
  "$base/v1/models/tiny-sentiment-gru/predict" | json 'd["outputs"][0]["label"]')
say "predict: label=$label"
stream=$(curl -fsSN -H 'content-type: application/json' \
  -d '{"prompt":"To be","max_tokens":12,"seed":1,"stream":true}' "$base/v1/models/tiny-char-lstm/generate")
echo "$stream" | grep -q '^event: token' || fail "no token events in the stream"
echo "$stream" | grep -q '^event: done' || fail "no done event"
echo "$stream" | tail -n 2 | grep -q '^data: \[DONE\]' || fail "stream not terminated by [DONE]"
say "stream: $(echo "$stream" | grep -c '^event: token') token events, done, [DONE]"
sid=$(curl -fsS -H 'content-type: application/json' -d '{"model":"tiny-char-lstm"}' \
  "$base/v1/sessions" | json 'd["session_id"]')
v=$(curl -fsS -H 'content-type: application/json' -d '{"text":"Once upon a time"}' \
  "$base/v1/sessions/$sid/feed" | json 'd["version"]')
[ "$v" = 1 ] || fail "feed version $v"
v=$(curl -fsS -H 'content-type: application/json' -H 'Idempotency-Key: smoke-1' \
  -d '{"max_tokens":8,"seed":3}' "$base/v1/sessions/$sid/generate" | json 'd["version"]')
[ "$v" = 2 ] || fail "generate version $v"
say "session: created, fed, generated (version 2)"

size=$(podman image inspect --format '{{.Size}}' "$TAG")
say "OK: image $TAG is $(( size / 1000000 )) MB ($size bytes)"
