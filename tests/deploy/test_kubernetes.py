"""deploy/kubernetes holds together: every resource the kustomization lists
exists and passes the Kubernetes schemas strictly (kubernetes-validate), and
what ties them is consistent (selectors, probes on /healthz and /readyz, the
port and user of the image, the settings the collector reads, the key file)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from collector.core.settings import CollectorSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = (ROOT / "deploy" / "collector" / "Containerfile").read_text()
VERSIONS = ["1.29.0", "1.31.0"]


def kustomization() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return document


def resources() -> dict[str, dict[str, Any]]:
    found = {}
    for name in kustomization()["resources"]:
        for document in yaml.safe_load_all((K8S / name).read_text()):
            found[document["kind"]] = document
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_every_resource_passes_the_kubernetes_schemas_strictly(version: str) -> None:
    for kind, document in resources().items():
        kubernetes_validate.validate(document, version, strict=True)  # raises if invalid
        assert kind in {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "Job"}
    # The validator is strict: a misspelt field fails.
    broken = resources()["Deployment"]
    broken["spec"]["replcas"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_selectors_probes_port_and_user_fit_together() -> None:
    found = resources()
    deployment, service, pdb, job = (found[k] for k in ("Deployment", "Service",
                                                        "PodDisruptionBudget", "Job"))  # fmt: skip
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["replicas"] >= 2 and pdb["spec"]["minAvailable"] == 1
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert re.findall(r"^EXPOSE (\d+)", CONTAINERFILE, re.M) == ["8080"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    uid = re.search(r"--uid (\d+)", CONTAINERFILE)
    assert uid is not None
    for pod in (deployment["spec"]["template"]["spec"], job["spec"]["template"]["spec"]):
        assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["image"].split(":")[0] in {i["name"] for i in kustomization()["images"]}
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "migrate"


def test_the_settings_it_passes_exist_and_the_key_file_is_mounted_there() -> None:
    known = {"BLOCKWATCH_" + name.upper() for name in CollectorSettings.model_fields}
    [config] = kustomization()["configMapGenerator"]
    literals = dict(item.split("=", 1) for item in config["literals"])
    [secret] = kustomization()["secretGenerator"]
    example = [line.split("=", 1)[0] for line in (K8S / "secrets.env.example").read_text()
               .splitlines() if line and not line.startswith("#")]  # fmt: skip
    assert secret["envs"] == ["secrets.env"]  # made from secrets.env.example
    assert set(literals) | set(example) <= known, (set(literals) | set(example)) - known
    assert {"BLOCKWATCH_DATABASE_URL", "BLOCKWATCH_ADMIN_TOKEN", "BLOCKWATCH_SECRET_KEY",
            "BLOCKWATCH_METRICS_TOKEN"} <= set(example)  # fmt: skip
    pod = resources()["Deployment"]["spec"]["template"]["spec"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "key"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "key"]
    [item] = volume["secret"]["items"]
    assert item["key"] in secret["files"]
    assert literals["BLOCKWATCH_KEY_FILE"] == f"{mount['mountPath']}/{item['path']}"
