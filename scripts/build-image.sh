#!/usr/bin/env bash
# Build the rnnserve image with podman on a machine with no Docker engine and no reachable registry.
#
#   scripts/build-image.sh [--gpu] [--tag NAME] [--base IMAGE] [--ca FILE]
#
# Steps (each skipped when already done):
#   1. apt-get install podman buildah debootstrap runc           (root only; otherwise must exist)
#   2. write a containers.conf: runtime runc, ulimits within this machine's hard limits
#   3. debootstrap a minimal Debian bookworm with python3 + venv from the configured Debian mirror and
#      import it as localhost/rnnserve-base:bookworm (the stand-in for python:3.11-slim)
#   4. podman build --format docker (keeps HEALTHCHECK) --layers=false (leaves no unnamed stage
#      images) with BASE_IMAGE set to that image and the host's CA bundle passed as the `build_ca`
#      build secret: trusted by pip during the build only, never written to a layer; the image the
#      tag named before is removed unless something else still uses it
#   5. print the image size (podman's own output goes to $WORK/build.log)
# Before step 3 it checks that podman's storage has room for the build's peak (measured: 10.5 GB
# for the 2.9 GB GPU image, which podman holds three times while it commits; 1.3 GB for the
# 435 MB CPU image) and exits 75 (EX_TEMPFAIL), naming both figures, when it has not: a disk
# that fills midway through a commit fails far less clearly. RNNSERVE_IMG_NEED_MB overrides it.
# With --base, step 3 is skipped and the given image is used (e.g. python:3.11-slim where a registry
# is reachable). Work files live in $RNNSERVE_IMG_WORK (default /tmp/rnnserve-img), outside the repo.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${RNNSERVE_IMG_WORK:-/tmp/rnnserve-img}"
TAG="localhost/rnnserve:latest"
BASE=""
CA="/etc/ssl/certs/ca-certificates.crt"
DOCKERFILE="$ROOT/Dockerfile"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-}"
NEED_MB=1500

while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) DOCKERFILE="$ROOT/deploy/Dockerfile.gpu"; TAG="localhost/rnnserve:gpu"; NEED_MB=12000 ;;
    --tag) TAG="$2"; shift ;;
    --base) BASE="$2"; shift ;;
    --ca) CA="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

log() { printf 'build-image: %s\n' "$*" >&2; }
# Never fail silently: whatever command set -e stops on is named.
trap 'log "failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

# 1. tools
missing=()
for tool in podman buildah debootstrap runc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing ${missing[*]} and not root: install them first"; exit 1
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah debootstrap runc >/dev/null
fi

# 2. containers.conf: crun fails on this machine's cgroup layout; default ulimits exceed its hard ones
mkdir -p "$WORK"
# written where CONTAINERS_CONF points when that file does not exist yet (deploy/image-smoke.sh
# sets it before the first build on a fresh machine); an existing one is the user's and is kept
export CONTAINERS_CONF="${CONTAINERS_CONF:-$WORK/containers.conf}"
if [ ! -e "$CONTAINERS_CONF" ]; then
  mkdir -p "$(dirname "$CONTAINERS_CONF")"
  cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
fi

# room on disk for the build's peak (before the base image: nothing is built in vain)
NEED_MB="${RNNSERVE_IMG_NEED_MB:-$NEED_MB}"
store="$(podman info --format '{{.Store.GraphRoot}}')"
while [ ! -d "$store" ]; do store="$(dirname "$store")"; done
free_mb=$(df -Pm "$store" | awk 'NR == 2 { print $4 }')
if [ "$free_mb" -lt "$NEED_MB" ]; then
  log "not enough disk: the build needs about $NEED_MB MB free in $store at its peak, $free_mb MB are"
  exit 75
fi

# 3. base image
if [ -z "$BASE" ]; then
  BASE="localhost/rnnserve-base:$SUITE"
  if ! podman image exists "$BASE"; then
    if [ -z "$MIRROR" ]; then
      # the machine's configured Debian mirror (deb822 *.sources or one-line sources.list/*.list)
      if ! MIRROR="$("$ROOT/scripts/debian-mirror.sh")"; then
        MIRROR="http://deb.debian.org/debian"
        log "using $MIRROR (set DEBIAN_MIRROR=URL to choose another)"
      fi
    fi
    rootfs="$WORK/rootfs-$SUITE"
    if [ ! -x "$rootfs/usr/bin/python3" ]; then
      log "debootstrap $SUITE from $MIRROR into $rootfs"
      rm -rf "$rootfs"
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; exit 1; }
      # what a slim image leaves out: package caches, docs, man pages, locales
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    fi
    log "importing $rootfs as $BASE"
    tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  fi
fi

# 4. build
secret=()
if [ -s "$CA" ]; then
  secret=(--secret "id=build_ca,src=$CA")
else
  log "no CA bundle at $CA: building without the build_ca secret"
fi
log "building $TAG from $DOCKERFILE on $BASE"
previous=$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
start=$(date +%s)
# --layers=false: no per-step cache images and no unnamed images of the builder and models
# stages left behind (a changed source tree reinstalls the venv anyway)
if ! podman build --format docker --pull=never --layers=false \
  --build-arg "BASE_IMAGE=$BASE" "${secret[@]}" \
  -f "$DOCKERFILE" -t "$TAG" "$ROOT" >"$WORK/build.log" 2>&1; then
  tail -n 40 "$WORK/build.log" >&2
  log "build failed; full log in $WORK/build.log"
  exit 1
fi
log "built in $(( $(date +%s) - start )) s"
# the image this build replaced, now unnamed; kept if another tag or a container still uses it
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$TAG")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi

# 5. size
size=$(podman image inspect --format '{{.Size}}' "$TAG")
log "image $TAG: $(( size / 1000000 )) MB ($size bytes); base $BASE: $(( $(podman image inspect --format '{{.Size}}' "$BASE") / 1000000 )) MB"
echo "$TAG"
