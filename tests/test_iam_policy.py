"""The IAM policies in k8s/iam grant exactly the actions the processor calls.

The processor runs against the moto server, and every AWS operation it sends is recorded: SQS
calls by a botocore ``before-parameter-build`` hook on the session the pipeline's clients are
made from (so the parameters are seen too), S3 calls on the wire by a recording proxy that
``AWS_ENDPOINT_URL_S3`` points the processor at, whichever client (obstore or boto3) makes
them. Each operation maps to the IAM actions it needs; that set is compared with the policy
documents. The run covers every path that calls AWS: receive, write, delete, and the release
of an unfinished message at shutdown.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
from helpers.faultproxy import FaultProxy
from helpers.support import (
    REGION,
    RunningPipeline,
    pipeline_config,
    stored_objects,
    unique,
    wait_for,
)
from helpers.support import write_config as write_yaml
from test_k8s_manifests import K8S, one, processor, render

IAM = K8S / "iam"
PLACEHOLDERS = {"AWS_REGION", "AWS_ACCOUNT_ID", "SQS_QUEUE_NAME", "S3_BUCKET_NAME", "S3_PREFIX",
                "S3_ERRORS_PREFIX", "OIDC_PROVIDER", "KMS_KEY_ARN"}

# Actions the code can call on a path this test's runs do not reach: action -> the function
# that calls it. Empty: every call site is exercised below. Add an entry only with a reason.
CALLED_ONLY_ON_UNREACHED_PATHS: dict[str, str] = {}


def required_actions(service: str, operation: str, params: dict[str, Any]) -> set[str]:
    """The IAM actions one API call needs (AWS service authorization reference)."""
    simple = {
        ("sqs", "ReceiveMessage"): {"sqs:ReceiveMessage"},
        ("sqs", "DeleteMessage"): {"sqs:DeleteMessage"},
        ("sqs", "DeleteMessageBatch"): {"sqs:DeleteMessage"},
        ("sqs", "ChangeMessageVisibility"): {"sqs:ChangeMessageVisibility"},
        ("sqs", "ChangeMessageVisibilityBatch"): {"sqs:ChangeMessageVisibility"},
        ("sqs", "GetQueueAttributes"): {"sqs:GetQueueAttributes"},
    }
    if (service, operation) in simple:
        return simple[(service, operation)]
    if (service, operation) == ("s3", "PutObject"):
        actions = {"s3:PutObject"}
        if params.get("Tagging"):
            actions.add("s3:PutObjectTagging")
        if params.get("ServerSideEncryption", "").startswith("aws:kms") \
                and params.get("SSEKMSKeyId"):
            actions.add("kms:GenerateDataKey")  # S3 asks KMS for a data key, as the caller
        return actions
    pytest.fail(f"the processor called {service}:{operation}, which has no IAM mapping here; "
                "add it to required_actions() and grant it in k8s/iam")


class CallRecorder:
    """Every API call the pipeline makes: (service, operation, parameters)."""

    def __init__(self, running: RunningPipeline) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        # Clients copy the session's event handlers when they are created, which happens when
        # the runner starts; so this must be registered before start().
        running.pipeline.aws._session.events.register("before-parameter-build", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        service = model.service_model.service_name
        if service == "s3":
            return  # recorded on the wire, like the obstore client's calls
        with self._lock:
            self.calls.append((service, model.name, dict(params)))

    def add_wire_calls(self, proxy: FaultProxy) -> None:
        """The S3 requests the proxy saw, with the parameters their headers carry."""
        for request in proxy.seen(service="s3"):
            headers = {k.lower(): v for k, v in request.headers.items()}
            params = {"Bucket": request.bucket, "Key": request.key,
                      "Tagging": headers.get("x-amz-tagging"),
                      "ServerSideEncryption": headers.get("x-amz-server-side-encryption", ""),
                      "SSEKMSKeyId": headers.get("x-amz-server-side-encryption-aws-kms-key-id")}
            self.calls.append(("s3", request.operation, params))

    def operations(self) -> set[str]:
        return {f"{service}:{operation}" for service, operation, _ in self.calls}

    def actions(self) -> set[str]:
        found: set[str] = set()
        for service, operation, params in self.calls:
            found |= required_actions(service, operation, params)
        return found


def statements(name: str) -> list[dict[str, Any]]:
    document = json.loads((IAM / name).read_text())
    assert document["Version"] == "2012-10-17"
    return document["Statement"]


def granted(*names: str) -> set[str]:
    actions: set[str] = set()
    for name in names:
        for statement in statements(name):
            assert statement["Effect"] == "Allow"
            assert "NotAction" not in statement and "NotResource" not in statement
            action = statement["Action"]
            actions |= {action} if isinstance(action, str) else set(action)
    return actions


HOLD_PLUGIN = '''
import time
from pathlib import Path
from sqs_processor import TransformSpec, hookimpl

FLAGS = Path({folder!r})


def build(options, context):
    def hold(record):
        if record.message.body == "poison":
            raise ValueError("this message can never be processed")
        if record.message.body == "hold":
            (FLAGS / "holding").touch()
            deadline = time.monotonic() + 30
            while not (FLAGS / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            raise RuntimeError("held past shutdown for the IAM test")
        return record
    return hold


@hookimpl
def sqs_processor_transforms():
    return TransformSpec(name="hold", factory=build, description="Holds one message.")
'''


def _run(tmp_path: Path, config: dict[str, Any], bodies: list[str],
         hold: bool = False) -> tuple[CallRecorder, RunningPipeline]:
    sqs = boto3.client("sqs", region_name=REGION)
    queue_url = config["source"]["queue_url"]
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy, \
            pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL_S3", proxy.url)  # the processor's S3 calls, on the wire
        running = RunningPipeline(write_yaml(tmp_path, config))
        recorder = CallRecorder(running)
        running.start()
        try:
            for body in bodies:
                sqs.send_message(QueueUrl=queue_url, MessageBody=body)
            wait_for(lambda: running.stats["processed"] == len(bodies) - ("hold" in bodies),
                     message="messages stored (errors too) and deleted")
            if hold:
                wait_for(lambda: (tmp_path / "holding").exists(), message="the held message")
        finally:
            running.stop()
            (tmp_path / "go").touch()
        recorder.add_wire_calls(proxy)
    return recorder, running


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, emulator):
    """The shipped pipeline's components, with one message still unfinished at shutdown."""
    tmp_path = tmp_path_factory.mktemp("iam")
    mp = pytest.MonkeyPatch()
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                        "AWS_ENDPOINT_URL": emulator}.items():
        mp.setenv(name, value)
    try:
        sqs = boto3.client("sqs", region_name=REGION)
        s3 = boto3.client("s3", region_name=REGION)
        queue_url = sqs.create_queue(QueueName=unique("iam"))["QueueUrl"]
        bucket = unique("iam")
        s3.create_bucket(Bucket=bucket)
        plugins = tmp_path / "plugins"
        plugins.mkdir()
        (plugins / "hold.py").write_text(HOLD_PLUGIN.format(folder=str(tmp_path)))
        config = pipeline_config(queue_url, bucket, plugins={"paths": [str(plugins)]},
                                 transforms=["json_parse", "enrich", "hold"],
                                 service={"health_port": 0, "health_host": "127.0.0.1",
                                          "shutdown_grace_seconds": 0.5})
        recorder, running = _run(tmp_path, config, ['{"a": 1}', "plain", "hold"], hold=True)
        yield recorder, running, stored_objects(s3, bucket), config
    finally:
        mp.undo()


def test_the_run_reaches_every_call_site(default_run):
    recorder, running, stored, _ = default_run
    assert running.stats["released"] == 1  # the held message was handed back at shutdown
    assert len(stored) == 2
    assert recorder.operations() == {"sqs:GetQueueAttributes", "sqs:ReceiveMessage",
                                     "s3:PutObject", "sqs:DeleteMessageBatch",
                                     "sqs:ChangeMessageVisibilityBatch"}


def test_the_policy_grants_exactly_the_actions_the_processor_calls(default_run):
    recorder, *_ = default_run
    observed = recorder.actions()
    policy = granted("policy.json")
    missing = observed - policy
    assert not missing, f"the processor calls {sorted(missing)}, which policy.json does not grant"
    unused = policy - observed - set(CALLED_ONLY_ON_UNREACHED_PATHS)
    assert not unused, f"policy.json grants {sorted(unused)}, which the processor never called"


def test_each_action_granted_for_an_unreached_path_has_a_caller():
    import importlib
    import inspect

    for action, where in CALLED_ONLY_ON_UNREACHED_PATHS.items():
        module, function = where.split(":")
        source = inspect.getsource(getattr(importlib.import_module(module), function))
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", action.split(":")[1]).lower()
        assert f".{snake}" in source, f"{where} does not call {action}"


def _granted_resources(name: str, action: str, **values: str) -> list[str]:
    return [_fill(statement["Resource"], **values) for statement in statements(name)
            if action in ([statement["Action"]] if isinstance(statement["Action"], str)
                          else statement["Action"])]


def _put_objects(recorder: CallRecorder) -> list[str]:
    return [f"arn:aws:s3:::{params['Bucket']}/{params['Key']}"
            for service, operation, params in recorder.calls
            if (service, operation) == ("s3", "PutObject")]


def test_the_written_keys_fall_under_the_granted_prefix(default_run):
    _, _, stored, config = default_run
    bucket, prefix = config["sink"]["bucket"], config["sink"]["prefix"]
    (statement,) = [s for s in statements("policy.json") if s["Action"] == "s3:PutObject"]
    pattern = _fill(statement["Resource"], S3_BUCKET_NAME=bucket, S3_PREFIX=prefix)
    assert stored
    for key in stored:
        assert fnmatch.fnmatchcase(f"arn:aws:s3:::{bucket}/{key}", pattern)
    assert not fnmatch.fnmatchcase(f"arn:aws:s3:::{bucket}/elsewhere/x.json", pattern)


def test_an_error_sink_writes_under_its_own_prefix_which_its_extra_policy_grants(
        tmp_path, sqs, s3, aws_env, queue_url, bucket):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hold.py").write_text(HOLD_PLUGIN.format(folder=str(tmp_path)))
    config = pipeline_config(queue_url, bucket, plugins={"paths": [str(plugins)]},
                             transforms=["json_parse", "hold"],
                             errors={"after_receives": 1, "sink": "s3", "prefix": "failed/"})
    recorder, running = _run(tmp_path, config, ["fine", "poison"])
    assert running.stats["processed"] == 2
    values = {"S3_BUCKET_NAME": bucket, "S3_PREFIX": "archive/", "S3_ERRORS_PREFIX": "failed/"}
    puts = _put_objects(recorder)
    assert len(puts) == 2
    main = _granted_resources("policy.json", "s3:PutObject", **values)
    errors = _granted_resources("policy-error-sink.json", "s3:PutObject", **values)
    archived = [p for p in puts if any(fnmatch.fnmatchcase(p, r) for r in main)]
    failed = [p for p in puts if any(fnmatch.fnmatchcase(p, r) for r in errors)]
    assert len(archived) == 1 and len(failed) == 1 and archived != failed
    assert recorder.actions() <= granted("policy.json")  # no new action, only a new prefix


def test_tags_and_a_kms_key_need_exactly_their_extra_policies(tmp_path, sqs, s3, aws_env,
                                                              queue_url, bucket):
    kms = boto3.client("kms", region_name=REGION)
    key_arn = kms.create_key()["KeyMetadata"]["Arn"]
    config = pipeline_config(queue_url, bucket, sink={
        "tags": {"team": "data"}, "server_side_encryption": "aws:kms", "kms_key_id": key_arn})
    recorder, _ = _run(tmp_path, config, ["one"])
    extra = recorder.actions() - granted("policy.json")
    assert extra == {"s3:PutObjectTagging", "kms:GenerateDataKey"}
    assert granted("policy-tagging.json") == {"s3:PutObjectTagging"}
    assert granted("policy-kms.json") == {"kms:GenerateDataKey"}


# --------------------------------------------------------------------------------------------
# Scope: one queue, one bucket prefix, one key, one service account
# --------------------------------------------------------------------------------------------


def _fill(text: str, **values: str) -> str:
    return re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


VALUES = {"AWS_REGION": "eu-west-1", "AWS_ACCOUNT_ID": "210987654321", "SQS_QUEUE_NAME": "orders",
          "S3_BUCKET_NAME": "orders-archive", "S3_PREFIX": "sqs-messages/",
          "S3_ERRORS_PREFIX": "errors/",
          "OIDC_PROVIDER": "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE",
          "KMS_KEY_ARN": "arn:aws:kms:eu-west-1:210987654321:key/"
                         "1234abcd-12ab-34cd-56ef-1234567890ab"}


@pytest.mark.parametrize("name", sorted(p.name for p in IAM.glob("*.json")))
def test_every_policy_uses_only_documented_placeholders_and_no_wildcard_resources(name):
    text = (IAM / name).read_text()
    assert set(re.findall(r"\$\{([A-Z0-9_]+)\}", text)) <= PLACEHOLDERS
    filled = json.loads(_fill(text, **VALUES))
    for statement in filled["Statement"]:
        resources = statement.get("Resource", [])
        for resource in [resources] if isinstance(resources, str) else resources:
            assert resource != "*" and "${" not in resource
            assert "*" not in resource or resource in ("arn:aws:s3:::orders-archive/sqs-messages/*",
                                                       "arn:aws:s3:::orders-archive/errors/*")


def test_sqs_actions_are_scoped_to_the_one_queue():
    for name in ("policy.json", "keda-operator-policy.json"):
        for statement in json.loads(_fill((IAM / name).read_text(), **VALUES))["Statement"]:
            actions = statement["Action"]
            if any(a.startswith("sqs:") for a in ([actions] if isinstance(actions, str)
                                                  else actions)):
                assert statement["Resource"] == "arn:aws:sqs:eu-west-1:210987654321:orders"


def test_kms_is_granted_only_through_s3_for_the_configured_key():
    (statement,) = json.loads(_fill((IAM / "policy-kms.json").read_text(), **VALUES))["Statement"]
    assert statement["Resource"] == VALUES["KMS_KEY_ARN"]
    assert statement["Condition"] == {"StringEquals": {"kms:ViaService":
                                                       "s3.eu-west-1.amazonaws.com"}}


def test_the_original_specs_read_and_list_permissions_are_not_granted():
    everything = set().union(*(granted(p.name) for p in IAM.glob("*.json")
                               if p.name != "trust-policy.json"))
    assert not everything & {"s3:GetObject", "s3:ListBucket", "s3:*", "sqs:*", "kms:Decrypt"}


def test_the_trust_policy_admits_only_this_namespaces_service_account():
    objects = render(K8S)
    account = one(objects, "ServiceAccount")
    namespace = account["metadata"]["namespace"]
    assert processor(objects)["spec"]["template"]["spec"]["serviceAccountName"] == \
        account["metadata"]["name"]
    (statement,) = json.loads(_fill((IAM / "trust-policy.json").read_text(),
                                    **VALUES))["Statement"]
    provider = VALUES["OIDC_PROVIDER"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"] == {
        "Federated": f"arn:aws:iam::210987654321:oidc-provider/{provider}"}
    assert statement["Condition"] == {"StringEquals": {
        f"{provider}:sub": f"system:serviceaccount:{namespace}:{account['metadata']['name']}",
        f"{provider}:aud": "sts.amazonaws.com"}}
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role.endswith(":role/sqs-processor-role")
