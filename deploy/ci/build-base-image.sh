#!/usr/bin/env bash
# Build a local Debian bookworm + python3 base image for the CI image build.
#
# Why: CI has no container registry, so python:3.11-slim cannot be pulled.
# Debian bookworm's python3 is 3.11, the version the project targets, so a
# minimal bookworm root filesystem from the machine's own Debian mirror is a
# faithful stand-in. It is passed to deploy/Dockerfile as BASE_IMAGE.
#
# The rootfs tarball is cached in deploy/ci/.cache/ (inside the clone, ignored
# by git) keyed on everything that goes into it.
set -euo pipefail
# shellcheck source=deploy/ci/lib.sh
source "$(dirname "$0")/lib.sh"

SUITE=bookworm
PACKAGES="python3,python3-venv,ca-certificates"

# The machine's configured Debian mirror: first deb822 "URIs:" entry serving
# $SUITE, else the first one-line "deb" entry for it.
debian_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        uri="$(awk -v suite="$SUITE" '
            /^URIs:/ {u=$2}
            /^Suites:/ {for (i=2; i<=NF; i++) if ($i==suite) {print u; exit}}
            /^$/ {u=""}' "$f")"
        [[ -n "$uri" ]] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        uri="$(awk -v suite="$SUITE" '$1=="deb" && $0 ~ " "suite" " {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' "$f")"
        [[ -n "$uri" ]] && { echo "$uri"; return; }
    done
    die "no Debian $SUITE mirror configured in /etc/apt/sources.list*"
}

main() {
    ensure_apt debootstrap:debootstrap podman:podman
    setup_podman_env
    local mirror key tarball rootfs
    mirror="$(debian_mirror)"
    key="$(printf '%s|%s|%s|%s' "$SUITE" "$PACKAGES" "$mirror" "v1" | sha256sum | cut -c1-16)"
    tarball="$CACHE_DIR/base/rootfs-$key.tar"

    if podman image exists "$BASE_IMAGE_REF" &&
        [[ "$(podman image inspect --format '{{index .Labels "digits.ci.base-key"}}' "$BASE_IMAGE_REF" 2>/dev/null)" == "$key" ]]; then
        log "base image $BASE_IMAGE_REF is current ($key)"
        return
    fi

    if [[ ! -f "$tarball" ]]; then
        rootfs="$CACHE_DIR/base/rootfs-$key"
        rm -rf "$rootfs"
        mkdir -p "$rootfs"
        log "debootstrap $SUITE from $mirror (packages: $PACKAGES)"
        timeout 900 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" \
            >"$CACHE_DIR/base/debootstrap.log" 2>&1 ||
            { tail -n 30 "$CACHE_DIR/base/debootstrap.log" >&2; die "debootstrap failed"; }
        # Slim it down: package indexes, caches and docs are never used at run time.
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
            "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
            "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
        tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi

    log "importing $tarball as $BASE_IMAGE_REF"
    podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL digits.ci.base-key=$key" \
        --change 'CMD ["/bin/bash"]' \
        "$tarball" "$BASE_IMAGE_REF" >/dev/null
    podman run --rm "$BASE_IMAGE_REF" python3 --version >&2
}

main "$@"
