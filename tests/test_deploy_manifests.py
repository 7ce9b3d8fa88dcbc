"""deploy/kubernetes: the Kubernetes manifests.

Every manifest is validated against the Kubernetes API schemas that the pinned
kubernetes-validate ships (offline, strict: unknown fields are errors) for the versions in
``K8S_VERSIONS``; then what the schemas cannot see is checked: the probes' paths, a drain
that fits in the termination grace period of the ConfigMap's own config, a rollout that
keeps capacity, non-root, every Secret and ConfigMap reference resolving, the Services and
the HPA finding their targets. The ConfigMap's config itself and the image are
test_deploy.py's.
"""

from __future__ import annotations

import json
import re
import tomllib

import kubernetes_validate
import pytest
import yaml

from gateway.config import build_config
from gateway.server import _ABORT_GRACE
from tests.deploy_files import (
    KUBE,
    Doc,
    all_docs,
    configmap_toml,
    final_stage,
    find,
    gateway_container,
    gateway_deployment,
    manifest_files,
    named_port,
    pod_environ,
    prestop_seconds,
    secret_values,
)

# The Kubernetes versions the manifests must be valid for: the oldest we claim, and the
# newest the locked kubernetes-validate (constraints.txt) has schemas for.
K8S_VERSIONS = ("1.30", "1.37")


# --- the schemas ----------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    kinds = {d["kind"] for _, d in all_docs()}
    assert kinds == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    (image,) = kustomization["images"]
    assert image["name"] == gateway_container()["image"].split(":")[0]


def _schema_versions() -> list[str]:
    return list(kubernetes_validate.utils.all_versions())


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_pinned_schemas(version: str) -> None:
    assert version in {kubernetes_validate.utils.major_minor(v) for v in _schema_versions()}
    docs = all_docs()
    assert len(docs) >= 8
    for filename, doc in docs:
        try:
            used = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path)
            pytest.fail(f"{filename}: {doc['kind']}/{doc['metadata']['name']}: {where}: {error}")
        assert used == version, (filename, used)


def test_the_validation_is_strict() -> None:
    """The check above would catch a misspelt field (it is not vacuous)."""
    doc = json.loads(json.dumps(gateway_deployment()))
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["readinessprobe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)
    doc = json.loads(json.dumps(gateway_deployment()))
    doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "90"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


# --- probes and the drain -------------------------------------------------------------


def test_probes() -> None:
    container = gateway_container()
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/healthz"
    assert named_port(container, readiness["port"]) == named_port(container, liveness["port"])
    assert named_port(container, readiness["port"]) == 8080


def test_termination_grace_outlasts_prestop_and_the_drain() -> None:
    """Kubernetes counts terminationGracePeriodSeconds from the start of preStop; after the
    pause comes SIGTERM, then `shutdown_delay`, then `graceful_timeout` for streams, then
    the gateway's own few seconds to end the rest with an error event. All of it must end
    before the SIGKILL."""
    config = build_config(tomllib.loads(configmap_toml()), environ=pod_environ(gateway_container()))
    container = gateway_container()
    pause = prestop_seconds(container)
    grace = gateway_deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pause >= 5, "the pause must outlast endpoint removal at kube-proxy and balancers"
    drain = pause + config.server.shutdown_delay + config.server.graceful_timeout + _ABORT_GRACE
    assert grace > drain, (grace, drain)
    # The readiness probe sees a stopping pod within the pause.
    probe = container["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] <= pause


def test_rollout_keeps_capacity() -> None:
    spec = gateway_deployment()["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = find("PodDisruptionBudget", "trio-gateway")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(gateway_deployment()).items()
    )
    assert pdb["spec"]["minAvailable"] < spec["replicas"]


# --- security -------------------------------------------------------------------------


def test_runs_as_non_root() -> None:
    for deployment in (gateway_deployment(), find("Deployment", "trio-gateway-redis")):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
    # The image's user is the one the pod asks for, by number (so runAsNonRoot can check it).
    (user,) = [a for name, a in final_stage() if name == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0
    pod = gateway_deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)


def test_every_secret_and_configmap_reference_resolves() -> None:
    for _, doc in all_docs():
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["key"] in secret_values(ref["name"]), ref
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                find("ConfigMap", volume["configMap"]["name"])
            if "secret" in volume:
                find("Secret", volume["secret"]["secretName"])
    # Placeholder keys admit nobody: hashes that no key has.
    for name in ("team-example-key", "admin-key"):
        assert re.fullmatch(r"sha256:0{64}", secret_values("trio-gateway-secrets")[name])


# --- Services and the autoscaler ------------------------------------------------------


def pod_labels(deployment: Doc) -> dict[str, str]:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    return dict(labels)


def test_services_select_their_deployments_only() -> None:
    deployments = [d for _, d in all_docs() if d["kind"] == "Deployment"]
    for service_name, deployment_name in (
        ("trio-gateway", "trio-gateway"),
        ("trio-gateway-redis", "trio-gateway-redis"),
    ):
        service = find("Service", service_name)
        selector = service["spec"]["selector"].items()
        selected = [d["metadata"]["name"] for d in deployments if selector <= pod_labels(d).items()]
        assert selected == [deployment_name], (service_name, selected)
        (container,) = find("Deployment", deployment_name)["spec"]["template"]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            named_port(container, port["targetPort"])  # a port the container has


def test_hpa_scales_the_gateway_on_cpu() -> None:
    hpa = find("HorizontalPodAutoscaler", "trio-gateway")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = gateway_deployment()
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    # Utilization is a share of the request: the container must have one.
    assert gateway_container()["resources"]["requests"]["cpu"]
