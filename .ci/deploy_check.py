#!/usr/bin/env python3
"""Offline checks of eso's deployment files, called by .ci/deploy-checks.sh.

Uses helm-python-sdk (Helm v4's Go SDK through ctypes: no helm binary, no
cluster) to lint and render the chart, and kubernetes-validate to check every
rendered object against the Kubernetes OpenAPI schemas in strict mode
(unknown fields are errors). Each subcommand prints what it found and exits
non-zero on a failure:

  lint       [-f values.yaml] [--set k=v]   helm lint --strict
  validate   [-f ...] [--set ...]           render, then schema-check every object
  policy     [-f ...] [--set ...]           render, then check the chart's promises
  expect-fail [--expect REGEX]... [-f ...] [--set ...]
                                            rendering must fail, naming each REGEX
  readme                                    README.md documents every value
  resources  [-f ...] [--set ...]           print kind/name of what renders
  compose                                   docker-compose.yml keeps its promises
  dockerfile                                the Dockerfile keeps its promises
"""

from __future__ import annotations

import argparse
import base64
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

CHART = Path("helm-charts/eso")
RELEASE = "eso"
NAMESPACE = "eso"

# Custom resources have no schema in kubernetes-validate. The only one the chart
# renders is the Prometheus Operator's ServiceMonitor (metrics.serviceMonitor.
# enabled); it is checked here by hand for the fields the operator needs. Any
# other kind without a schema is a failure, not a silent skip.
KNOWN_CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

# component -> SAGAS_DIR it must be given. The trip agency (`eso participant
# trip-agency`) is there unless tripAgency.enabled=false.
ESO_COMPONENTS = {"orchestrator": "/app/sagas", "payment": None, "delivery": None, "trip-agency": None}


# ---------------------------------------------------------------- values


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge like Helm merges several -f/--set sources: maps merge, the rest is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_values(files: list[str], sets: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in files:
        values = deep_merge(values, yaml.safe_load(Path(name).read_text()) or {})
    for expression in sets:
        values = deep_merge(values, helm.parse_set_string(expression))
    return values


def render(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield template, doc


def kn(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


# ---------------------------------------------------------------- subcommands


def cmd_lint(values: dict[str, Any], _: argparse.Namespace) -> list[str]:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    failures = list(report.get("errors") or [])
    for message in report.get("messages") or []:
        severity = message.get("severity", 0)
        line = f"{message.get('path')}: {message.get('error')}"
        # 1 = info (e.g. "icon is recommended"); 2 = warning and 3 = error fail,
        # as with `helm lint --strict`.
        if severity >= 2:
            failures.append(line)
        else:
            print(f"info: {line}")
    return failures


def validate_crd(obj: dict[str, Any]) -> list[str]:
    spec = obj.get("spec") or {}
    problems = []
    if not (spec.get("selector") or {}).get("matchLabels"):
        problems.append(f"{kn(obj)}: spec.selector.matchLabels is empty")
    endpoints = spec.get("endpoints") or []
    if not endpoints or not all(e.get("port") for e in endpoints):
        problems.append(f"{kn(obj)}: every spec.endpoints[] needs a port name")
    return problems


def cmd_validate(values: dict[str, Any], args: argparse.Namespace) -> list[str]:
    failures: list[str] = []
    seen: set[tuple[str, str]] = set()
    count = 0
    for template, obj in objects(render(values)):
        count += 1
        key = (obj.get("kind", "?"), obj.get("metadata", {}).get("name", "?"))
        if key in seen:
            failures.append(f"{template}: {key[0]}/{key[1]} is rendered twice")
        seen.add(key)
        if (obj.get("apiVersion"), obj.get("kind")) in KNOWN_CRDS:
            failures += validate_crd(obj)
            print(f"crd: {kn(obj)} ({obj['apiVersion']}) has no upstream schema; checked selector and endpoints")
            continue
        for version in args.kube_versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                failures.append(f"{template}: {kn(obj)} against {version}: {path}: {e.message}")
            except SchemaNotFoundError as e:
                failures.append(f"{template}: {e.message} (a CRD? add it to KNOWN_CRDS with a check)")
    print(f"{count} objects valid against Kubernetes {', '.join(args.kube_versions)} (strict)"
          if not failures else f"{count} objects, {len(failures)} problems")
    return failures


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def cmd_policy(values: dict[str, Any], _: argparse.Namespace) -> list[str]:
    """What the chart promises, beyond being valid Kubernetes."""
    failures: list[str] = []
    rendered = render(values)
    objs = [obj for _, obj in objects(rendered)]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)

    def fail(msg: str) -> None:
        failures.append(msg)

    # Migrations run at start-up under an advisory lock: no hook Job.
    for obj in objs:
        annotations = obj["metadata"].get("annotations") or {}
        if obj["kind"] in ("Job", "CronJob") or any(a.startswith("helm.sh/hook") for a in annotations):
            fail(f"{kn(obj)}: no hooks or Jobs (migrations run at start-up)")

    for sa in by_kind.get("ServiceAccount", []):
        if sa.get("automountServiceAccountToken") is not False:
            fail(f"{kn(sa)}: automountServiceAccountToken must be false")

    # Hardening of every pod, eso's and the optional dependencies'.
    for obj in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
        spec = pod_spec(obj)
        psc = spec.get("securityContext") or {}
        if spec.get("automountServiceAccountToken") is not False:
            fail(f"{kn(obj)}: pod automountServiceAccountToken must be false")
        if psc.get("runAsNonRoot") is not True:
            fail(f"{kn(obj)}: pod runAsNonRoot must be true")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(f"{kn(obj)}: pod seccompProfile must be RuntimeDefault")
        for c in spec["containers"]:
            sc = c.get("securityContext") or {}
            where = f"{kn(obj)} container {c['name']}"
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{where}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(f"{where}: readOnlyRootFilesystem must be true")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                fail(f"{where}: capabilities must drop ALL")
            if not (c.get("resources") or {}).get("requests"):
                fail(f"{where}: resource requests missing")
            if not c.get("readinessProbe") or not c.get("livenessProbe"):
                fail(f"{where}: readiness and liveness probes required")

    # eso's own Deployments.
    deployments = {d["metadata"]["labels"].get("app.kubernetes.io/component"): d
                   for d in by_kind.get("Deployment", [])}
    for component, sagas_dir in ESO_COMPONENTS.items():
        d = deployments.get(component)
        if d is None and component == "trip-agency" and (values.get("tripAgency") or {}).get("enabled") is False:
            continue
        if d is None:
            fail(f"no Deployment for {component}")
            continue
        spec = pod_spec(d)
        c = spec["containers"][0]
        env = {e["name"]: e for e in c.get("env", [])}
        if c["readinessProbe"]["httpGet"]["path"] != "/readyz":
            fail(f"{kn(d)}: readiness probe must be /readyz")
        if c["livenessProbe"]["httpGet"]["path"] != "/healthz":
            fail(f"{kn(d)}: liveness probe must be /healthz")
        if "secretKeyRef" not in (env.get("DATABASE_URL") or {}).get("valueFrom", {}):
            fail(f"{kn(d)}: DATABASE_URL must come from a Secret")
        for name in ("NATS_URL", "PORT", "RUST_LOG", "LOG_FORMAT", "OTEL_SERVICE_NAME"):
            if name not in env:
                fail(f"{kn(d)}: env {name} missing")
        if "/tmp" not in {m["mountPath"] for m in c.get("volumeMounts", [])}:
            fail(f"{kn(d)}: needs an emptyDir at /tmp (read-only root)")
        if sagas_dir and (env.get("SAGAS_DIR") or {}).get("value") != sagas_dir:
            fail(f"{kn(d)}: SAGAS_DIR must be {sagas_dir}")

    # Saga definitions: the chart's files, in a ConfigMap whose checksum rolls
    # the orchestrator.
    orchestrator = deployments.get("orchestrator")
    sagas_cm = [cm for cm in by_kind.get("ConfigMap", []) if cm["metadata"]["name"].endswith("-sagas")]
    if not sagas_cm:
        fail("no saga definitions ConfigMap")
    elif values.get("defaultSagas", True):
        # Every definition the chart ships, unless values replace it.
        overridden = values.get("sagas") or {}
        for path in sorted((CHART / "files").glob("*.toml")):
            if path.name in overridden:
                continue
            if sagas_cm[0]["data"].get(path.name) != path.read_text():
                fail(f"the sagas ConfigMap's {path.name} differs from files/{path.name}")
        for path in sorted(Path("sagas/definitions").glob("*.toml")):
            shipped = CHART / "files" / path.name
            if not shipped.is_file() or shipped.read_text() != path.read_text():
                fail(f"files/{path.name} is not a copy of {path} (run .ci/deploy-checks.sh to refresh it)")
    if orchestrator:
        checksum = (orchestrator["spec"]["template"]["metadata"].get("annotations") or {}).get("checksum/sagas")
        edited = deep_merge(values, {"sagas": {"order.toml": "# edited\n"}})
        d2 = next(o for _, o in objects(render(edited))
                  if o["kind"] == "Deployment" and o["metadata"]["name"] == orchestrator["metadata"]["name"])
        checksum2 = d2["spec"]["template"]["metadata"]["annotations"].get("checksum/sagas")
        if not checksum or checksum == checksum2:
            fail("editing a saga definition must change the orchestrator's checksum/sagas annotation")

    # The switches in values turn on what they say.
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(values)
    expect = {
        "HorizontalPodAutoscaler": merged["autoscaling"]["enabled"],
        "Ingress": merged["ingress"]["enabled"],
        "ServiceMonitor": merged["metrics"]["serviceMonitor"]["enabled"],
        "StatefulSet": merged["nats"]["enabled"] or merged["postgresql"]["enabled"],
    }
    for kind, wanted in expect.items():
        if bool(by_kind.get(kind)) != bool(wanted):
            fail(f"{kind}: expected {'one' if wanted else 'none'}, rendered {len(by_kind.get(kind, []))}")
    failures += operator_promises(merged, rendered, by_kind, orchestrator)
    if merged["autoscaling"]["enabled"] and orchestrator and "replicas" in orchestrator["spec"]:
        fail(f"{kn(orchestrator)}: replicas must be left to the HPA")
    if not by_kind.get("PodDisruptionBudget"):
        fail("no PodDisruptionBudget for the orchestrator")
    if not rendered.get(f"{CHART.name}/templates/NOTES.txt", "").strip():
        fail("NOTES.txt renders empty")

    if not failures:
        print(f"{len(objs)} objects keep the chart's promises")
    return failures


def token_parts(tokens: str) -> list[str]:
    """The secrets in an ESO_OPERATOR_TOKEN-style list: the whole and each entry's token."""
    entries = [e.strip() for e in tokens.split(",") if e.strip()]
    return ([tokens] if tokens.strip() else []) + [e.split(":", 1)[-1].strip() for e in entries]


def operator_promises(merged: dict[str, Any], rendered: dict[str, str],
                      by_kind: dict[str, list[dict[str, Any]]], orchestrator: dict[str, Any] | None) -> list[str]:
    """Operator tokens reach the orchestrator only, from a Secret; no token is
    a plain env value or shows anywhere but in its Secret. traceUrl is the
    orchestrator's ESO_TRACE_URL."""
    failures: list[str] = []
    op = merged.get("operator") or {}
    wanted_env = {"ESO_OPERATOR_TOKEN": ("tokens", "operator-token"), "ESO_READ_TOKEN": ("readTokens", "read-token")}
    if orchestrator:
        env = {e["name"]: e for e in pod_spec(orchestrator)["containers"][0].get("env", [])}
        for var, (key, secret_key) in wanted_env.items():
            wanted = bool(op.get(key) or op.get("existingSecret"))
            ref = ((env.get(var) or {}).get("valueFrom") or {}).get("secretKeyRef")
            if wanted and not ref:
                failures.append(f"{kn(orchestrator)}: {var} must come from a Secret (operator.{key} or operator.existingSecret is set)")
            elif not wanted and var in env:
                failures.append(f"{kn(orchestrator)}: {var} is set, but neither operator.{key} nor operator.existingSecret is")
            elif ref:
                if ref.get("key") != secret_key or ref.get("optional") is not True:
                    failures.append(f"{kn(orchestrator)}: {var} must read the optional key {secret_key}")
                expected_secret = op.get("existingSecret") or None
                if expected_secret and ref.get("name") != expected_secret:
                    failures.append(f"{kn(orchestrator)}: {var} must come from operator.existingSecret ({expected_secret})")
                if not expected_secret:
                    secret = next((x for x in by_kind.get("Secret", []) if x["metadata"]["name"] == ref.get("name")), None)
                    stored = (secret or {}).get("data", {}).get(secret_key)
                    if stored is None or base64.b64decode(stored).decode() != op[key]:
                        failures.append(f"{kn(orchestrator)}: {var}: Secret {ref.get('name')} does not hold operator.{key} as {secret_key}")
        trace_url = merged.get("traceUrl") or ""
        if (env.get("ESO_TRACE_URL") or {}).get("value", "") != trace_url:
            failures.append(f"{kn(orchestrator)}: ESO_TRACE_URL must be traceUrl ({trace_url!r}), or absent when it is empty")
    secrets = [t for key in ("tokens", "readTokens") for t in token_parts(op.get(key) or "")]
    for obj in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
        spec = pod_spec(obj)
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("env", []):
                if e["name"] in (*wanted_env, "ESO_TRACE_URL") and obj is not orchestrator:
                    failures.append(f"{kn(obj)} container {c['name']}: {e['name']} is the orchestrator's only")
                if "value" in e and any(t in str(e["value"]) for t in secrets):
                    failures.append(f"{kn(obj)} container {c['name']}: env {e['name']} has an operator token as a plain value")
    # Nowhere else either (annotations, ConfigMaps, NOTES.txt): only in its Secret, base64.
    for template, text in rendered.items():
        if any(t in text for t in secrets):
            failures.append(f"{template}: an operator token appears in plain text")
    return failures


def cmd_expect_fail(values: dict[str, Any], args: argparse.Namespace) -> list[str]:
    try:
        render(values)
    except helm.HelmError as e:
        message = str(e)
        print(f"rejected as expected ({type(e).__name__}):")
        print("  " + message.strip().replace("\n", "\n  "))
        missing = [p for p in args.patterns if not re.search(p, message)]
        return [f"the message does not mention {p!r}" for p in missing]
    return ["rendering succeeded, but these values must be rejected"]


def flatten(values: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def cmd_readme(_: dict[str, Any], __: argparse.Namespace) -> list[str]:
    """Every value in values.yaml is documented in the README table (itself or a parent key)."""
    readme = (CHART / "README.md").read_text()
    section = re.search(r"^## Values\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    if not section:
        return ["README.md has no '## Values' section"]
    documented = set(re.findall(r"^\|\s*`([^`]+)`\s*\|", section.group(1), re.M))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    failures = []
    for key in flatten(defaults):
        parts = key.split(".")
        if not any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1)):
            failures.append(f"README.md has no row for `{key}`")
    stale = [k for k in documented if not any(f == k or f.startswith(k + ".") for f in flatten(defaults))]
    failures += [f"README.md documents `{k}`, which values.yaml does not have" for k in sorted(stale)]
    if not failures:
        print(f"{len(documented)} rows cover every key of values.yaml")
    return failures


def cmd_resources(values: dict[str, Any], _: argparse.Namespace) -> list[str]:
    for _, obj in objects(render(values)):
        print(kn(obj))
    return []


def cmd_compose(_: dict[str, Any], __: argparse.Namespace) -> list[str]:
    """The resolved compose file (`docker-compose config`) runs what docs/deploy.md says."""
    resolved = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "config"],
                              check=True, capture_output=True, text=True).stdout
    services = yaml.safe_load(resolved)["services"]
    failures = []
    for name in ("postgres", "nats", "jaeger", "eso", "payment", "delivery"):
        if name not in services:
            failures.append(f"service {name} missing")
    if failures:
        return failures
    for name in ("postgres", "nats", "eso", "payment", "delivery"):
        if not (services[name].get("healthcheck") or {}).get("test"):
            failures.append(f"{name}: no healthcheck")
    nats_cmd = services["nats"].get("command") or []
    if "-js" not in nats_cmd or "-sd" not in nats_cmd:
        failures.append("nats: JetStream with a store directory (-js -sd /data) expected")
    if str(services["jaeger"].get("environment", {}).get("COLLECTOR_OTLP_ENABLED")).lower() != "true":
        failures.append("jaeger: COLLECTOR_OTLP_ENABLED must be true")
    for name, binary in (("eso", "eso"), ("payment", "payment"), ("delivery", "delivery")):
        svc = services[name]
        env = svc.get("environment") or {}
        if svc.get("command") != [binary]:
            failures.append(f"{name}: command must be [{binary}]")
        for var in ("DATABASE_URL", "NATS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "PORT"):
            if not env.get(var):
                failures.append(f"{name}: environment {var} missing")
        deps = svc.get("depends_on") or {}
        for dep in ("postgres", "nats"):
            if (deps.get(dep) or {}).get("condition") != "service_healthy":
                failures.append(f"{name}: must wait for {dep} to be healthy")
    # Operator tokens reach the orchestrator only (empty = unset); the trace
    # link keeps its `{trace_id}` through interpolation.
    eso_env = services["eso"].get("environment") or {}
    for var in ("ESO_OPERATOR_TOKEN", "ESO_READ_TOKEN"):
        if var not in eso_env:
            failures.append(f"eso: environment {var} missing (pass it from the host, empty = unset)")
        for name in ("payment", "delivery", "trip-agency"):
            if var in (services.get(name, {}).get("environment") or {}):
                failures.append(f"{name}: must not get {var} (the orchestrator's only)")
    if not re.fullmatch(r"http://localhost:\d+/trace/\{trace_id\}", str(eso_env.get("ESO_TRACE_URL", ""))):
        failures.append(f"eso: ESO_TRACE_URL must be the Jaeger UI's http://localhost:<port>/trace/{{trace_id}}, "
                        f"got {eso_env.get('ESO_TRACE_URL')!r}")
    # `config` prints ports in the long form: {published, target}.
    if not any(p.get("target") == 3000 for p in services["eso"].get("ports") or []):
        failures.append("eso: container port 3000 not published")
    if int((services["payment"].get("deploy") or {}).get("replicas") or 1) < 2:
        failures.append("payment: deploy.replicas >= 2 expected (queue group)")
    if not failures:
        print(f"{len(services)} services: dependencies healthy-gated, JetStream on, OTLP on, payment x2, tokens to eso only")
    return failures


def cmd_dockerfile(_: dict[str, Any], __: argparse.Namespace) -> list[str]:
    """What the image promises: three binaries, non-root uid 10001, /app/sagas and /app/migrations."""
    text = Path("Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    expectations = {
        "a multi-stage build (builder + runtime)": len(stages) >= 2,
        "cargo build --release --locked --bins": "cargo build --release --locked --bins" in text,
        "eso, payment and delivery copied out": all(f"target/release/{b}" in text for b in ("eso", "payment", "delivery")),
        "a slim runtime base": stages[-1:] and re.search(r"(bookworm-slim|distroless)", stages[-1]) is not None,
        "USER 10001 in the runtime stage": re.search(r"^USER 10001", text.split(stages[-1])[-1] if stages else "", re.M) is not None,
        "/app/sagas and /app/migrations": "/app/sagas" in text and "/app/migrations" in text,
        "SAGAS_DIR=/app/sagas": "SAGAS_DIR=/app/sagas" in text,
        'CMD ["eso"] by default': re.search(r'^CMD \["eso"\]', text, re.M) is not None,
        "no :latest base image": ":latest" not in " ".join(stages),
    }
    failures = [f"Dockerfile: {what}" for what, ok in expectations.items() if not ok]
    if not failures:
        print(f"{len(expectations)} promises kept (bases: {', '.join(stages)})")
    return failures


COMMANDS = {
    "lint": cmd_lint,
    "validate": cmd_validate,
    "policy": cmd_policy,
    "expect-fail": cmd_expect_fail,
    "readme": cmd_readme,
    "resources": cmd_resources,
    "compose": cmd_compose,
    "dockerfile": cmd_dockerfile,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--expect", dest="patterns", action="append", default=[],
                        help="expect-fail: a regex the error message must match (repeatable)")
    parser.add_argument("-f", "--values", action="append", default=[], help="a values file (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="a --set expression (repeatable)")
    parser.add_argument("--kube-versions", default="1.25.0,1.37.0",
                        help="Kubernetes versions to validate against (comma-separated)")
    args = parser.parse_args()
    args.kube_versions = [v.strip() for v in args.kube_versions.split(",") if v.strip()]

    helm.disable_logging()
    failures = COMMANDS[args.command](load_values(args.values, args.set), args)
    for failure in failures:
        print(f"FAIL {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
