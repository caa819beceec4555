# shellcheck shell=bash
# Shared helpers for the deploy/ci scripts. Sourced, never executed.
#
# Why a shared file: every script must agree on where the cache lives and on
# the podman configuration, otherwise one script builds into a store the next
# one cannot see (or, worse, into /var/lib/containers outside the clone).

DEPLOY_CI_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$DEPLOY_CI_DIR/../.." && pwd)"
CACHE_DIR="$DEPLOY_CI_DIR/.cache"
VENV_BIN="$REPO_ROOT/.venv/bin"

# Local image names: nothing here is ever pushed, so "localhost/" makes it
# impossible for podman to try a registry lookup. (Used by the sourcing scripts.)
# shellcheck disable=SC2034
BASE_IMAGE_REF="localhost/digits-base:bookworm"
# shellcheck disable=SC2034
APP_IMAGE_REF="localhost/digits:ci"
# Podman's run-time state (locks, sockets, mounts): a short path, because unix
# socket paths are limited to 108 bytes; it is state, not a cache. One per
# clone (keyed on the cache path): two image stores must never share it.
PODMAN_RUNROOT="/tmp/digits-ci-podman-$(id -u)-$(printf '%s' "$CACHE_DIR" | sha256sum | cut -c1-10)"

# The Kubernetes versions the manifests are validated against: the oldest we
# support and the newest the installed schemas know about.
K8S_VERSIONS="${K8S_VERSIONS:-1.33 1.37}"

log() { printf '[deploy-ci %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Podman reads these two variables; pointing both into the clone keeps images,
# layers and runtime state out of /var/lib/containers and /run/containers.
setup_podman_env() {
    mkdir -p "$CACHE_DIR/containers/storage"
    mkdir -p "$PODMAN_RUNROOT"
    cat >"$CACHE_DIR/storage.conf" <<EOF
[storage]
driver = "${DIGITS_CI_STORAGE_DRIVER:-overlay}"
graphroot = "$CACHE_DIR/containers/storage"
runroot = "$PODMAN_RUNROOT"
EOF
    export CONTAINERS_CONF="$DEPLOY_CI_DIR/containers.conf"
    export CONTAINERS_STORAGE_CONF="$CACHE_DIR/storage.conf"
    # Registries are unreachable here; make sure nothing tries a short-name search.
    export CONTAINERS_REGISTRIES_CONF="$DEPLOY_CI_DIR/registries.conf"
}

# Install Debian packages only when a command is missing: CI runs as root on a
# machine that may or may not have them already.
ensure_apt() {
    # usage: ensure_apt command:package [command:package ...]
    local missing=() pair cmd pkg
    for pair in "$@"; do
        cmd="${pair%%:*}"
        pkg="${pair#*:}"
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing Debian packages: ${missing[*]}"
        [[ "$(id -u)" == 0 ]] || die "need root to apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# A free TCP port on 127.0.0.1, chosen by the kernel.
free_port() {
    "$VENV_BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
