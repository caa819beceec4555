#!/usr/bin/env bash
# Build deploy/Dockerfile with podman on top of the local base image.
#
# --network=host: the builder stage downloads dependency wheels from PyPI, and
# on this machine podman's own container network (netavark/CNI + iptables)
# is neither needed nor guaranteed to work, while the host's network reaches
# PyPI. The runtime stage installs with --no-index, so it needs no network.
set -euo pipefail
# shellcheck source=deploy/ci/lib.sh
source "$(dirname "$0")/lib.sh"

main() {
    setup_podman_env
    podman image exists "$BASE_IMAGE_REF" || bash "$DEPLOY_CI_DIR/build-base-image.sh"
    log "building $APP_IMAGE_REF from deploy/Dockerfile (BASE_IMAGE=$BASE_IMAGE_REF)"
    # PIP_* from the host (mirrors, constraints, certificates of this machine)
    # are deliberately not passed in: the image must build from plain PyPI.
    local secret=()
    # This machine reaches PyPI through a TLS-intercepting proxy whose CA is
    # only in the host's bundle: hand that bundle to the wheel step as a build
    # secret (never stored in a layer) instead of baking it into the image.
    [[ -s "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" ]] &&
        secret=(--secret "id=pip_ca,src=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}")
    timeout 1200 podman build \
        --network=host \
        "${secret[@]}" \
        --pull=never \
        --build-arg "BASE_IMAGE=$BASE_IMAGE_REF" \
        --file "$REPO_ROOT/deploy/Dockerfile" \
        --tag "$APP_IMAGE_REF" \
        --layers \
        "$REPO_ROOT" >"$CACHE_DIR/build.log" 2>&1 ||
        { tail -n 40 "$CACHE_DIR/build.log" >&2; die "image build failed (full log: $CACHE_DIR/build.log)"; }
    # Drop dangling intermediate images from earlier builds so the cache stays bounded.
    podman image prune --force >/dev/null 2>&1 || true
    check_image
    log "built $APP_IMAGE_REF ($(podman image inspect --format '{{.Size}}' "$APP_IMAGE_REF" | numfmt --to=iec) uncompressed)"
}

# What the runtime stage must (not) contain: a numeric non-root user, the
# exec-form entrypoint, no build leftovers (sources, wheels, build venv, pip).
check_image() {
    local config
    config="$(podman image inspect --format '{{.Config.User}} {{json .Config.Entrypoint}}' "$APP_IMAGE_REF")"
    [[ "$config" == '10001:10001 ["digits","serve"]' ]] || die "unexpected user/entrypoint: $config"
    podman run --rm --network=none --read-only --entrypoint /opt/digits/venv/bin/python "$APP_IMAGE_REF" -c '
import importlib.util, os, sys
leftovers = [p for p in ("/src", "/wheels", "/opt/build-venv") if os.path.exists(p)]
leftovers += [m for m in ("pip", "setuptools") if importlib.util.find_spec(m)]
assert not leftovers, f"build leftovers in the runtime image: {leftovers}"
assert os.getuid() == 10001, os.getuid()
models = [os.path.join(d, f) for d, _, fs in os.walk("/opt/digits/models") for f in fs if f == "model.onnx"]
assert models, "no model.onnx in /opt/digits/models"
print("runtime image: uid", os.getuid(), "models", models)
' >&2 || die "runtime image check failed"
}

main "$@"
