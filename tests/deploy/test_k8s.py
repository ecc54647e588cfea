"""The Kubernetes manifests: they parse, reference each other consistently and probe real endpoints of the app."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
import yaml

from proxy.settings import Settings
from tests.deploy.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
QUANTITY_UNITS = {"m": 1e-3, "": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict]:
    """Every object applied by kustomization.yaml, by (kind, name)."""
    objects = {}
    for name in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]:
        for document in yaml.safe_load_all((K8S / name).read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(document), f"{name}: incomplete object"
            key = (document["kind"], document["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = document
    return objects


@pytest.fixture(scope="module")
def deployment(manifests) -> dict:
    return manifests[("Deployment", "recguard")]


@pytest.fixture(scope="module")
def container(deployment) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def quantity(text: str | int) -> float:
    text = str(text)
    number = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return float(number) * QUANTITY_UNITS[text[len(number):]]


def environment(manifests, container) -> dict[str, str]:
    """The container's RECGUARD_* variables as the kubelet would set them (Secrets as placeholders)."""
    env = {}
    for source in container.get("envFrom", []):
        env |= manifests[("ConfigMap", source["configMapRef"]["name"])]["data"]
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif "configMapKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["configMapKeyRef"]
            env[variable["name"]] = manifests[("ConfigMap", ref["name"])]["data"][ref["key"]]
        else:
            env[variable["name"]] = f"secret-value-of-{variable['name'].lower()}"
    return env


def test_every_manifest_file_is_applied_except_the_secret_example():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk


def test_several_replicas_behind_one_selector(deployment, manifests):
    spec = deployment["spec"]
    assert spec["replicas"] > 1
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert manifests[("Service", "recguard")]["spec"]["selector"].items() <= labels.items()
    assert manifests[("PodDisruptionBudget", "recguard")]["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("probe, path", [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")])
def test_probes_hit_real_endpoints_on_the_served_port(container, get_routes, manifests, probe, path):
    http = container[probe]["httpGet"]
    assert http["path"] == path and path in get_routes
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    port = ports.get(http["port"], http["port"])
    bind = Settings.from_env(environment(manifests, container)).server.bind
    assert bind.startswith("0.0.0.0:") and int(bind.rpartition(":")[2]) == port


def test_service_targets_the_container_port(container, manifests):
    names = {port["name"] for port in container["ports"]} | {port["containerPort"] for port in container["ports"]}
    assert all(port["targetPort"] in names for port in manifests[("Service", "recguard")]["spec"]["ports"])


def test_resources_are_requested_and_limited(container):
    resources = container["resources"]
    for name in ("cpu", "memory"):
        assert quantity(resources["requests"][name]) <= quantity(resources["limits"][name])


def test_settings_come_from_config_and_secrets(container, manifests):
    by_name = {variable["name"]: variable for variable in container.get("env", [])}
    assert by_name["RECGUARD_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["key"]
    for secret in ("RECGUARD_FEEDBACK_SECRET", "RECGUARD_FEEDBACK_SECRET_PREVIOUS"):
        assert by_name[secret]["valueFrom"]["secretKeyRef"]["optional"] is True, secret
    redis_from_env = "valueFrom" in by_name.get("RECGUARD_REDIS_URL", {})
    redis_from_config = any("RECGUARD_REDIS_URL" in manifests[("ConfigMap", source["configMapRef"]["name"])]["data"]
                            for source in container.get("envFrom", []))
    assert redis_from_env or redis_from_config, "RECGUARD_REDIS_URL must come from a ConfigMap or a Secret"
    Settings.from_env(environment(manifests, container))


def test_runs_as_the_image_user_without_privileges(deployment, container, stages):
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    image_uid = int(stages[-1].last("USER").arguments.split(":")[0])
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == image_uid
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    if container["securityContext"].get("readOnlyRootFilesystem"):
        mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, "gunicorn and the Prometheus multiprocess files write to /tmp"


def test_redis_url_points_at_the_redis_service(container, manifests):
    url = urlparse(environment(manifests, container)["RECGUARD_REDIS_URL"])
    service = manifests[("Service", url.hostname)]
    assert url.port in {port["port"] for port in service["spec"]["ports"]}
    statefulset = manifests[("StatefulSet", url.hostname)]
    assert statefulset["spec"]["serviceName"] == url.hostname
    assert service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()


def test_redis_persists_with_aof_on_a_volume(manifests):
    statefulset = manifests[("StatefulSet", "recguard-redis")]
    (redis,) = statefulset["spec"]["template"]["spec"]["containers"]
    args = redis["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]}
    assert any(mount["mountPath"] == data_dir and mount["name"] in claims for mount in redis["volumeMounts"])


def test_autoscaler_scales_the_deployment_and_keeps_two(manifests, deployment):
    hpa = manifests[("HorizontalPodAutoscaler", "recguard")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert manifests[("PodDisruptionBudget", "recguard")]["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
