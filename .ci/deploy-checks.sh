#!/usr/bin/env bash
# Deployment checks: the Helm chart (lint, schema, rendered manifests, the
# chart's own promises), docker-compose.yml and the Dockerfile. Offline: no
# cluster and no Docker engine needed. Run from anywhere:
#
#   bash .ci/deploy-checks.sh
#
# Prints one line per check and "deploy-checks: N passed, N failed" last;
# exits non-zero when any check failed. Safe to run again and again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Kubernetes versions to validate the rendered manifests against: the oldest
# that Chart.yaml's kubeVersion allows and the newest kubernetes-validate
# ships schemas for.
KUBE_VERSIONS=${KUBE_VERSIONS:-1.25.0,1.37.0}
PYTHON=${PYTHON:-python3}
CHART=helm-charts/eso
started=$SECONDS

# ------------------------------------------------------------- tools
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

if ! "$PYTHON" -c 'import helm_python, kubernetes_validate' 2>/dev/null; then
  echo "installing helm-python-sdk and kubernetes-validate (PyPI)"
  "$PYTHON" -m pip install -q --disable-pip-version-check \
    'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0'
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "installing docker-compose (Debian)"
  if ! out=$(as_root apt-get update -qq 2>&1 &&
              as_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l \
                apt-get install -y -qq docker-compose 2>&1); then
    echo "$out"; exit 1
  fi
fi
# dockerfile-utils (npm): a Dockerfile linter that needs no Docker engine.
DOCKERFILE_UTILS_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/eso-deploy-checks
DOCKERFILE_UTILS=$DOCKERFILE_UTILS_DIR/node_modules/.bin/dockerfile-utils
if [[ ! -x $DOCKERFILE_UTILS ]] && command -v npm >/dev/null 2>&1; then
  echo "installing dockerfile-utils (npm)"
  mkdir -p "$DOCKERFILE_UTILS_DIR"
  npm install --silent --no-fund --no-audit --prefix "$DOCKERFILE_UTILS_DIR" dockerfile-utils@0.16.3 >/dev/null \
    || echo "could not install dockerfile-utils: the Dockerfile lint is skipped"
fi

# ------------------------------------------------------------- saga definitions
# The chart ships the repository's saga definitions as its default ConfigMap
# content: refresh the chart's copies (files/*.toml) from
# sagas/definitions/*.toml, the folder that holds the sagas and nothing else.
for src in sagas/definitions/*.toml; do
  [[ -f $src ]] || continue
  dst=$CHART/files/$(basename "$src")
  if ! cmp -s "$src" "$dst"; then
    cp "$src" "$dst"
    echo "note: refreshed $dst from $src (commit it so 'helm install' ships it)"
  fi
done

# ------------------------------------------------------------- checks
passed=0
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# check NAME COMMAND...: run COMMAND, print its output indented, then a summary line.
check() {
  local name=$1; shift
  local t0=$SECONDS
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    sed 's/^/    /' "$log"
    printf 'ok   %-58s %3ss\n' "$name" $((SECONDS - t0))
  else
    failed=$((failed + 1))
    sed 's/^/    /' "$log"
    printf 'FAIL %-58s %3ss\n' "$name" $((SECONDS - t0))
  fi
}

chart() { "$PYTHON" .ci/deploy_check.py "$@" --kube-versions "$KUBE_VERSIONS"; }

check "helm lint --strict (default values)"               chart lint
check "helm lint --strict (deploy/values-production.yaml)" chart lint -f deploy/values-production.yaml
check "manifests valid, strict (default values)"          chart validate
check "manifests valid, strict (values-production)"       chart validate -f deploy/values-production.yaml
check "chart promises (default values)"                   chart policy
check "chart promises (values-production)"                chart policy -f deploy/values-production.yaml
# Operator tokens: to the orchestrator only, from a Secret, never a plain value.
OPERATOR_SET=(--set 'operator.tokens=alice:0123456789abcdef0123\,bob:fedcba9876543210fedc'
              --set 'operator.readTokens=reader-0123456789abcdef'
              --set 'traceUrl=http://localhost:16686/trace/{trace_id}')
check "manifests valid, strict (operator tokens, trace link)" chart validate "${OPERATOR_SET[@]}"
check "chart promises (operator tokens, trace link)"      chart policy "${OPERATOR_SET[@]}"
check "chart promises (operator.existingSecret)"          chart policy --set operator.existingSecret=eso-operator-tokens
check "a short operator token is rejected"                chart expect-fail \
  --set 'operator.tokens=alice:short' --expect 'operator\.tokens: entry 1: the token is shorter than 16'
check "deploy/values-bad.yaml is rejected by the schema"  chart expect-fail -f deploy/values-bad.yaml \
  --expect '/orchestrator/replicaCount' --expect '/log/format' --expect '/otel/sampler' \
  --expect '/nats/url' --expect '/autoscaling/maxReplicas' --expect '/traceUrl' --expect '/operator/tokens'
check "no database and no postgresql.enabled is rejected" chart expect-fail \
  --set postgresql.enabled=false --expect 'set database.url'
check "no NATS and no nats.enabled is rejected"           chart expect-fail \
  --set nats.enabled=false --expect 'set nats.url'
check "chart README documents every value"                chart readme
check "docker-compose config -q (Compose v1)"             docker-compose -f docker-compose.yml config -q
check "docker-compose.yml promises"                       chart compose
# Compose v2 (`docker compose`) is a Docker CLI plugin that no registry here
# ships; check with it wherever it is installed.
if docker compose version >/dev/null 2>&1; then
  check "docker compose config -q (Compose v2)"           docker compose -f docker-compose.yml config -q
else
  printf 'skip %-58s (no docker compose v2 plugin here)\n' "docker compose config -q (Compose v2)"
fi

if [[ -x $DOCKERFILE_UTILS ]]; then
  check "Dockerfile lint (dockerfile-utils)"              "$DOCKERFILE_UTILS" lint Dockerfile
else
  printf 'skip %-58s (npm not found)\n' "Dockerfile lint (dockerfile-utils)"
fi
check "Dockerfile promises"                               chart dockerfile

echo "deploy-checks took $((SECONDS - started))s"
echo "deploy-checks: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
