"""Static checks of everything under deploy/ and the Dockerfiles, offline: hadolint, kubernetes-validate
--strict, `nginx -t`, and cross-references (compose services, Settings fields, Prometheus targets,
dashboard metrics that the service really exports)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.metrics import Metrics
from service.settings import Settings
from tests.deploy.cluster import ROOT, which

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILES = [ROOT / "Dockerfile", DEPLOY / "Dockerfile.gpu"]
SETTINGS_ENV = {f"RNNSERVE_{name.upper()}" for name in Settings.model_fields}


def tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# -- image ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    r = subprocess.run(
        [tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_policy(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+", text, re.M)
    assert text.count("FROM ${BASE_IMAGE}") + text.count("FROM python-base") >= 2  # multi-stage
    extra = "gpu" if dockerfile.name.endswith(".gpu") else "serve"
    assert f'".[{extra}]"' in text and "train" not in re.findall(r"\.\[(\w+)\]", text)
    assert "find_spec('torch')" in text  # the build fails if torch got in
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["rnnserve", "serve", "--host", "0.0.0.0"]' in text
    # the extra CA is a build secret: mounted into one RUN, never COPYed or ARGed into a layer
    assert "--mount=type=secret,id=build_ca,required=false" in text
    assert not re.search(r"^(COPY|ADD|ARG|ENV)\b.*(ca\.pem|build_ca|PIP_CERT)", text, re.M)
    assert "COPY --from=models --chown=root:root /ctx/models/ /app/models/" in text


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    text = (ROOT / ".dockerignore").read_text()
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("#")]
    assert lines[0] == "*"  # deny by default
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "rnnserve", "service", "training", "models"}


# -- Kubernetes -------------------------------------------------------------------------------


def k8s_docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = kustomization["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(files) == on_disk  # every manifest is applied, none is missing
    return [d for f in files for d in load_all(K8S / f)]


def test_kubernetes_validate_strict() -> None:
    exe = tool("kubernetes-validate")
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
    r = subprocess.run([exe, "--strict", "--quiet", *files], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_kubernetes_validate_strict_catches_unknown_fields(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    doc = load_all(K8S / "deployment.yaml")[0]
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    bad.write_text(yaml.safe_dump(doc))
    r = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", str(bad)], capture_output=True
    )
    assert r.returncode != 0


def test_deployment_probes_security_and_config() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_docs()}
    dep = docs["Deployment", "rnnserve"]
    spec = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (c,) = spec["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
    # the grace period covers preStop + the server's own drain timeout
    cm = docs["ConfigMap", "rnnserve-config"]["data"]
    drain = float(cm["RNNSERVE_SHUTDOWN_TIMEOUT_S"])
    assert (
        spec["terminationGracePeriodSeconds"]
        > drain + c["lifecycle"]["preStop"]["sleep"]["seconds"]
    )
    # config: only real settings, the Redis store, the Redis Service by name
    assert set(cm) <= SETTINGS_ENV, set(cm) - SETTINGS_ENV
    assert cm["RNNSERVE_STORE"] == "redis"
    redis_svc = docs["Service", "rnnserve-redis"]
    assert cm["RNNSERVE_REDIS_URL"].startswith(f"redis://{redis_svc['metadata']['name']}:6379")
    assert c["envFrom"] == [{"configMapRef": {"name": "rnnserve-config"}}]
    keys = next(e for e in c["env"] if e["name"] == "RNNSERVE_API_KEYS")
    assert keys["valueFrom"]["secretKeyRef"]["optional"] is True
    # Service, HPA, PDB all point at this Deployment's pods
    svc = docs["Service", "rnnserve"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert "sessionAffinity" not in svc["spec"]  # no sticky sessions needed
    assert (
        docs["HorizontalPodAutoscaler", "rnnserve"]["spec"]["scaleTargetRef"]["name"] == "rnnserve"
    )
    assert (
        docs["PodDisruptionBudget", "rnnserve"]["spec"]["selector"]["matchLabels"].items()
        <= labels.items()
    )
    assert docs["HorizontalPodAutoscaler", "rnnserve"]["spec"]["minReplicas"] >= 2


# -- compose, nginx, Prometheus, Grafana --------------------------------------------------------


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def test_compose_references_resolve() -> None:
    doc = compose()
    services = doc["services"]
    assert {"redis", "rnnserve", "nginx", "prometheus", "grafana"} <= set(services)
    named_volumes = set(doc.get("volumes", {}))
    for name, svc in services.items():
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: bind source {src} missing"
            else:
                assert src in named_volumes, f"{name}: volume {src} not declared"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    app = services["rnnserve"]
    assert 2 <= app["deploy"]["replicas"] <= 3
    assert (DEPLOY / app["build"]["context"] / app["build"]["dockerfile"]).exists()
    assert set(app["environment"]) <= SETTINGS_ENV, set(app["environment"]) - SETTINGS_ENV
    assert app["environment"]["RNNSERVE_STORE"] == "redis"
    assert app["environment"]["RNNSERVE_REDIS_URL"].startswith("redis://redis:")
    assert app["read_only"] is True
    assert "ports" not in app  # reached only through nginx


def test_nginx_conf_is_valid_and_round_robins_the_replicas(tmp_path: Path) -> None:
    conf = "\n".join(
        line
        for line in (DEPLOY / "nginx.conf").read_text().splitlines()
        if not line.lstrip().startswith("#")
    )
    assert "http://rnnserve:8000" in conf and "proxy_buffering off" in conf
    assert "ip_hash" not in conf and "sticky" not in conf  # any replica serves any session
    nginx = which("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed")
    r = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(DEPLOY / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_prometheus_scrapes_every_replica() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "rnnserve")
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["rnnserve"] and sd["port"] == 8000  # the compose service, each replica


def exported_series() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {
            "counter": ["_total", "_created"],
            "histogram": ["_bucket", "_sum", "_count", "_created"],
        }.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def test_grafana_dashboard_queries_real_metrics() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/rnnserve.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dash = json.loads((DEPLOY / "grafana/dashboards/rnnserve.json").read_text())
    exported = exported_series()
    used: set[str] = set()
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            used |= set(re.findall(r"\brnnserve_[a-z_]+", target["expr"]))
    assert used <= exported, used - exported
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for needed in (
        "request rate",
        "latency",
        "first token",
        "inter-token",
        "queue depth",
        "batch size",
        "live sessions",
    ):
        assert needed in titles, needed
    assert {
        "rnnserve_requests_total",
        "rnnserve_time_to_first_token_seconds_bucket",
        "rnnserve_inter_token_seconds_bucket",
        "rnnserve_queue_depth",
        "rnnserve_batch_size_bucket",
        "rnnserve_live_sessions",
    } <= used


# -- autoscaling on load (deploy/k8s/autoscale-on-load) ---------------------------------------

ON_LOAD = K8S / "autoscale-on-load"


def _hpa_on_load() -> dict[str, Any]:
    """The base HPA with the overlay's patch applied (a strategic merge of `spec.metrics`, a
    list kustomize replaces whole)."""
    (base,) = load_all(K8S / "hpa.yaml")
    (patch,) = load_all(ON_LOAD / "hpa-on-load.yaml")
    assert patch["metadata"]["name"] == base["metadata"]["name"]
    return {**base, "spec": {**base["spec"], **patch["spec"]}}


def test_the_load_overlay_validates_strict(tmp_path: Path) -> None:
    merged = tmp_path / "hpa.yaml"
    merged.write_text(yaml.safe_dump(_hpa_on_load()))
    files = [str(merged), str(ON_LOAD / "prometheus-adapter-rules.yaml")]
    r = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", *files], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    kust = yaml.safe_load((ON_LOAD / "kustomization.yaml").read_text())
    for ref in [*kust["resources"], *(p["path"] for p in kust["patches"])]:
        assert (ON_LOAD / ref).exists(), ref


def test_the_hpa_scales_on_metrics_the_service_exports_through_the_adapter() -> None:
    """Each Pods metric the HPA reads is one the adapter's rules serve, from a series the
    service really exports, summed per pod (over models): a renamed gauge fails here."""
    (cm,) = load_all(ON_LOAD / "prometheus-adapter-rules.yaml")
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    served = {r["name"]["as"]: r for r in rules}
    exported = exported_series()
    for rule in rules:
        series = re.match(r"(rnnserve_[a-z_]+)\{", rule["seriesQuery"])
        assert series is not None and series.group(1) in exported, rule["seriesQuery"]
        assert "by (<<.GroupBy>>)" in rule["metricsQuery"]
    hpa = _hpa_on_load()
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert set(pods) == {"rnnserve_queue_depth", "rnnserve_active_streams"} <= set(served)
    assert any(m["type"] == "Resource" for m in hpa["spec"]["metrics"])  # CPU still counts
