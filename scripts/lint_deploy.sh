#!/usr/bin/env bash
# Lints the deployment files under docker/:
#   - docker/Dockerfile and docker/Dockerfile.cpu with dockerfile-utils (the Dockerfile parser
#     and validator of the Docker language server, from the npm registry), plus the settings
#     both images must share (non-root user, ports, health check, entry point);
#   - that configs/server.json and configs/slo.json still hold the strings the Dockerfiles
#     rewrite into the images' default config;
#   - docker/k8s/helios.yaml: valid YAML (js-yaml), every object valid against the Kubernetes
#     API schema (kubernetes-models), a Deployment with readiness, liveness and startup probes,
#     non-root, a grace period above the drain timeout, a headless Service for gRPC, and a
#     ConfigMap whose server.json / slo.json `helios validate-config` accepts;
#   - docker/systemd/helios.service with `systemd-analyze verify`, where it is installed.
#
#   scripts/lint_deploy.sh [--helios BIN]
#
# BIN (default: build/helios when it exists) validates the ConfigMap's configs; without one that
# check is skipped with a message. The npm tools are installed once, at pinned versions, into
# $HELIOS_TOOLS_DIR (default .cache/npm-tools). Exit status: 0 clean, 1 findings (each printed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${HELIOS_TOOLS_DIR:-$ROOT/.cache/npm-tools}"
readonly DOCKERFILE_UTILS="dockerfile-utils@0.16.3"
readonly JS_YAML="js-yaml@4.1.0"
readonly KUBERNETES_MODELS="kubernetes-models@5.1.0"
HELIOS=""
while (($#)); do
  case "$1" in
    --helios) HELIOS="$2"; shift 2 ;;
    *) echo "usage: $0 [--helios BIN]" >&2; exit 2 ;;
  esac
done
if [[ -z "$HELIOS" && -x "$ROOT/build/helios" ]]; then HELIOS="$ROOT/build/helios"; fi

findings=0
finding() {
  echo "lint_deploy: $*"
  findings=$((findings + 1))
}

# ---- tools ----------------------------------------------------------------------------------------
installed_version() {  # name -> version installed in $TOOLS, or nothing
  local manifest="$TOOLS/node_modules/$1/package.json"
  [[ -f "$manifest" ]] && node -p "require(process.argv[1]).version" "$manifest"
  return 0
}
for tool in "$DOCKERFILE_UTILS" "$JS_YAML" "$KUBERNETES_MODELS"; do
  if [[ "$(installed_version "${tool%@*}")" != "${tool##*@}" ]]; then
    command -v npm >/dev/null || { echo "lint_deploy: npm is needed (scripts/setup.sh installs it)" >&2; exit 1; }
    echo "lint_deploy: installing $DOCKERFILE_UTILS $JS_YAML $KUBERNETES_MODELS into $TOOLS"
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error \
      "$DOCKERFILE_UTILS" "$JS_YAML" "$KUBERNETES_MODELS" >/dev/null
    break
  fi
done

# ---- Dockerfiles ----------------------------------------------------------------------------------
for dockerfile in docker/Dockerfile docker/Dockerfile.cpu; do
  # dockerfile-utils exits 1 on errors only; warnings (a second CMD in a stage, a deprecated
  # instruction, ...) are findings here too, so any output counts.
  if ! output="$(node "$TOOLS/node_modules/dockerfile-utils/bin/dockerfile-utils" lint \
                   "$ROOT/$dockerfile" 2>&1)" || [[ -n "$output" ]]; then
    finding "$dockerfile: dockerfile-utils:"
    printf '%s\n' "$output" | sed 's/^/    /'
  fi
  for line in '^USER 10001:10001$' '^EXPOSE 50051 9464 8000$' '^HEALTHCHECK ' \
              'CMD curl -fsS http://127\.0\.0\.1:9464/healthz \|\| exit 1$' \
              '^STOPSIGNAL SIGTERM$' '^ENTRYPOINT \["/usr/local/bin/helios"\]$' \
              '^CMD \["serve", "--config", "/etc/helios/server.json"\]$'; do
    grep -qE "$line" "$ROOT/$dockerfile" || finding "$dockerfile: no line matching $line"
  done
done

# The images' default config is configs/server.json and configs/slo.json with these strings
# rewritten (sed in both Dockerfiles); a config edit that drops one breaks the image build.
for expected in 'configs/server.json|"address": "127.0.0.1:50051"' \
                'configs/server.json|"host": "127.0.0.1"' \
                'configs/server.json|"device": "cpu"' \
                'configs/slo.json|"model_repository": "../zoo"'; do
  file="${expected%%|*}" text="${expected#*|}"
  grep -qF "$text" "$ROOT/$file" ||
    finding "$file: no '$text' for docker/Dockerfile* to rewrite (keep them in step)"
done

# ---- Kubernetes ---------------------------------------------------------------------------------
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# Prints one finding per line; writes the ConfigMap's files into $WORK/configmap/. Run from
# $TOOLS so that the ES module imports resolve in its node_modules.
k8s_output="$(cd "$TOOLS" && node --input-type=module - "$ROOT/docker/k8s/helios.yaml" \
                "$WORK/configmap" <<'EOF' 2>&1
import fs from "fs";
import path from "path";
import yaml from "js-yaml";
const [file, outDir] = process.argv.slice(2);
const problems = [];
let docs;
try {
  docs = yaml.loadAll(fs.readFileSync(file, "utf8")).filter((d) => d);
} catch (e) {
  const where = e.mark ? ` at line ${e.mark.line + 1}, column ${e.mark.column + 1}` : "";
  console.log(`not valid YAML: ${e.reason || e.message}${where}`);
  process.exit(0);
}
// Each object against the Kubernetes OpenAPI schema of its apiVersion and kind (types,
// required fields, enumerations; unknown fields are not reported).
for (const d of docs) {
  if (typeof d !== "object" || !d.apiVersion || !d.kind || !d.metadata || !d.metadata.name) {
    problems.push(`a document lacks apiVersion, kind or metadata.name`);
    continue;
  }
  const name = `${d.kind} ${d.metadata.name}`;
  let models;
  try {
    models = await import(`kubernetes-models/${d.apiVersion}`);
  } catch (e) {
    problems.push(`${name}: unknown apiVersion ${d.apiVersion}`);
    continue;
  }
  if (!models[d.kind]) {
    problems.push(`${name}: no kind ${d.kind} in ${d.apiVersion}`);
    continue;
  }
  try {
    new models[d.kind](d).validate();
  } catch (e) {
    problems.push(`${name}: ${e.message.replace(/\s+/g, " ")}`);
  }
}
const of = (kind) => docs.filter((d) => d.kind === kind && d.metadata);

let drain = 30;  // shutdown.drain_timeout_seconds default
const configMaps = of("ConfigMap").filter((c) => c.data && c.data["server.json"]);
if (configMaps.length !== 1) {
  problems.push(`expected one ConfigMap with server.json, found ${configMaps.length}`);
} else {
  const data = configMaps[0].data;
  fs.mkdirSync(outDir, { recursive: true });
  for (const [name, text] of Object.entries(data)) fs.writeFileSync(path.join(outDir, name), text);
  const server = data["server.json"];
  const m = /"drain_timeout_seconds"\s*:\s*([0-9.]+)/.exec(server);
  if (m) drain = Number(m[1]);
  if (!/"address"\s*:\s*"0\.0\.0\.0:50051"/.test(server)) {
    problems.push(`ConfigMap server.json: grpc.address must be "0.0.0.0:50051" in a pod`);
  }
  if (!/"host"\s*:\s*"0\.0\.0\.0"/.test(server)) {
    problems.push(`ConfigMap server.json: http.host must be "0.0.0.0" for the probes`);
  }
}

const deployments = of("Deployment");
if (deployments.length === 0) problems.push("no Deployment");
for (const d of deployments) {
  const name = `Deployment ${d.metadata.name}`;
  const pod = (d.spec && d.spec.template && d.spec.template.spec) || {};
  const containers = pod.containers || [];
  if (containers.length === 0) problems.push(`${name}: no containers`);
  const grace = pod.terminationGracePeriodSeconds === undefined ? 30 : pod.terminationGracePeriodSeconds;
  if (!(grace > drain)) {
    problems.push(`${name}: terminationGracePeriodSeconds ${grace} is not above the drain timeout ${drain}`);
  }
  if (!(pod.securityContext && pod.securityContext.runAsNonRoot === true)) {
    problems.push(`${name}: pod securityContext.runAsNonRoot is not true`);
  }
  for (const c of containers) {
    const probe = (kind, wanted) => {
      const p = c[kind];
      if (!p) {
        problems.push(`${name}, container ${c.name}: no ${kind}`);
      } else if (!p.httpGet || p.httpGet.path !== wanted) {
        problems.push(`${name}, container ${c.name}: ${kind} is not an httpGet of ${wanted}`);
      }
    };
    probe("readinessProbe", "/readyz");
    probe("livenessProbe", "/healthz");
    probe("startupProbe", "/readyz");
    const ports = (c.ports || []).map((p) => p.containerPort);
    for (const port of [50051, 9464, 8000]) {
      if (!ports.includes(port)) problems.push(`${name}, container ${c.name}: no containerPort ${port}`);
    }
    if (!c.resources || !c.resources.requests || !c.resources.limits) {
      problems.push(`${name}, container ${c.name}: resources need requests and limits`);
    }
  }
}
const headless = of("Service").filter((s) => s.spec && s.spec.clusterIP === "None");
if (headless.length === 0) problems.push("no headless Service (clusterIP: None) for gRPC");
for (const s of headless) {
  if (!(s.spec.ports || []).some((p) => p.port === 50051)) {
    problems.push(`Service ${s.metadata.name}: headless Service without port 50051`);
  }
}
for (const p of problems) console.log(p);
EOF
)" || finding "docker/k8s/helios.yaml: the check itself failed"
while IFS= read -r line; do
  if [[ -n "$line" ]]; then finding "docker/k8s/helios.yaml: $line"; fi
done <<<"$k8s_output"

if [[ -z "$HELIOS" ]]; then
  echo "lint_deploy: no helios binary (--helios BIN, or build/helios): ConfigMap configs not validated"
elif [[ -f "$WORK/configmap/server.json" && -f "$WORK/configmap/slo.json" ]]; then
  # The SLO's model_repository (/models in a pod) must exist to validate: point it at a folder here.
  mkdir -p "$WORK/models"
  sed -i "s|\"model_repository\": \"/models\"|\"model_repository\": \"$WORK/models\"|" \
    "$WORK/configmap/slo.json"
  for config in server.json slo.json; do
    if ! output="$("$HELIOS" validate-config "$WORK/configmap/$config" 2>&1)"; then
      finding "docker/k8s/helios.yaml: ConfigMap $config: ${output//$WORK\/configmap\//}"
    fi
  done
fi

# ---- systemd ------------------------------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  # verify insists that ExecStart exists: check a copy whose /usr/local/bin/helios is a stub.
  mkdir -p "$WORK/systemd/bin"
  printf '#!/bin/sh\n' >"$WORK/systemd/bin/helios"
  chmod +x "$WORK/systemd/bin/helios"
  sed "s|/usr/local/bin/helios|$WORK/systemd/bin/helios|g" "$ROOT/docker/systemd/helios.service" \
    >"$WORK/systemd/helios.service"
  # verify also loads the host's units (network-online.target ...); only lines about this
  # unit are findings. It reports bad keys and values with exit status 0, so output counts.
  output="$(systemd-analyze verify "$WORK/systemd/helios.service" 2>&1 || true)"
  while IFS= read -r line; do
    if [[ "$line" == *helios.service* ]]; then
      finding "docker/systemd/helios.service: ${line//$WORK\/systemd\//}"
    fi
  done <<<"$output"
else
  echo "lint_deploy: systemd-analyze not installed: docker/systemd/helios.service not verified"
fi

if ((findings)); then
  echo "lint_deploy: $findings finding(s)"
  exit 1
fi
echo "lint_deploy: clean (docker/Dockerfile, docker/Dockerfile.cpu, docker/k8s/helios.yaml, docker/systemd/helios.service)"
