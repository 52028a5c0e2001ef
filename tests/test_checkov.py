"""checkov, the infrastructure-as-code scanner, over what ships: every kustomize rendering of
k8s/ (production, the dev overlay, each optional component) and the Dockerfile.

The scan is offline: ``--skip-download`` (no policies fetched from the vendor's platform), no
API key in the environment, the update check off, only the ``kubernetes`` and ``dockerfile``
frameworks (no package lookups); where the test may create a network namespace (root, as in
CI) the scan runs inside an empty one, so a call out would fail it. Any failed check fails the
test; an accepted finding is skipped where it is, with its reason (``checkov.io/skipN``
annotations, ``# checkov:skip=ID: reason`` in the Dockerfile), and the test checks each skip
has one.

checkov is installed in its own environment (.venv/checkov, by ``make test``'s install step):
its pinned dependencies (an older boto3 and packaging) conflict with the dev extra.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.k8s import K8S, kustomize, overlay
from helpers.support import ROOT

CHECKOV_VENV = ROOT / ".venv" / "checkov" / "bin" / "checkov"
COMPONENTS = ("keda", "monitoring")


def _checkov() -> str:
    found = str(CHECKOV_VENV) if CHECKOV_VENV.exists() else shutil.which("checkov")
    if not found:
        pytest.fail("checkov is not installed; `make test` installs it in .venv/checkov")
    return found


def _offline_prefix() -> list[str]:
    """``unshare --net`` when this process may make a network namespace, else nothing."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--net", "true"], capture_output=True,
                                  timeout=30).returncode == 0:
        return [unshare, "--net"]
    return []


def scan(folder: Path) -> dict[str, dict[str, Any]]:
    """checkov's JSON report for ``folder``, by framework."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BC_", "PRISMA_", "CKV_", "CHECKOV_"))}
    env["CKV_SKIP_PACKAGE_UPDATE_CHECK"] = "true"
    result = subprocess.run(
        [*_offline_prefix(), _checkov(), "--directory", str(folder),
         "--framework", "kubernetes", "dockerfile", "--skip-download", "--output", "json",
         "--compact"], capture_output=True, text=True, timeout=300, env=env, cwd=folder)
    assert result.returncode in (0, 1), f"checkov did not run:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    return {r["check_type"]: r for r in reports}


def _findings(report: dict[str, Any], kind: str) -> list[str]:
    return [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
            for c in report["results"][kind]]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One scan of every rendering and the Dockerfile, side by side in one folder."""
    work = tmp_path_factory.mktemp("checkov")
    renderings = {"production": K8S, "dev-overlay": K8S / "overlays" / "dev"}
    for component in COMPONENTS:
        renderings[f"with-{component}"] = overlay(
            work / "overlays", component, resources=[K8S],
            components=[K8S / "components" / component])
    target = work / "scan"
    target.mkdir()
    for name, folder in renderings.items():
        (target / f"{name}.yaml").write_text(kustomize(str(folder)))
    shutil.copy(ROOT / "Dockerfile", target / "Dockerfile")
    return scan(target)


def test_checkov_finds_nothing_unexplained_in_the_manifests_and_the_dockerfile(scanned):
    assert set(scanned) == {"kubernetes", "dockerfile"}
    for framework, report in scanned.items():
        assert report["summary"]["parsing_errors"] == 0, framework
        assert report["summary"]["passed"] > 50, f"{framework}: checkov checked almost nothing"
        assert _findings(report, "failed_checks") == [], framework


def test_every_accepted_finding_carries_a_reason(scanned):
    skipped = [c for report in scanned.values() for c in report["results"]["skipped_checks"]]
    assert skipped, "expected the documented skips (image digest, ARG base image)"
    for check in skipped:
        reason = (check.get("check_result", {}).get("suppress_comment") or "").strip()
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} has no reason"
    ids = {c["check_id"] for c in skipped}
    assert ids <= {"CKV_K8S_43", "CKV_K8S_15", "CKV_DOCKER_7"}, f"new skips: {ids}"


def test_the_scan_does_fail_on_a_finding(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Dockerfile").write_text("FROM python:3.11-slim\nUSER root\nCMD [\"python\"]\n")
    report = scan(bad)["dockerfile"]
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert {"CKV_DOCKER_2", "CKV_DOCKER_8"} <= failed  # no HEALTHCHECK; runs as root
