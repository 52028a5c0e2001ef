"""The CI/CD files: the GitHub workflow against GitHub's workflow schema, the Jenkinsfiles
linted with npm-groovy-lint (CodeNarc), and what each file must do.

check-jsonschema (dev extra) ships the workflow schema (``vendor.github-workflows``);
npm-groovy-lint comes from the npm registry into .venv/node (``make test``'s install step)
and runs on Java. Both run offline: inside an empty network namespace where this process may
make one (root, as in CI). The lint test skips with the reason where npm-groovy-lint or Java
is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.k8s import VENV_BIN
from helpers.support import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
JENKINSFILES = (ROOT / "Jenkinsfile-CI", ROOT / "Jenkinsfile-CD")
GROOVY_LINT = ROOT / ".venv" / "node" / "node_modules" / ".bin" / "npm-groovy-lint"
needs_groovy_lint = pytest.mark.skipif(
    not GROOVY_LINT.exists() or shutil.which("java") is None or shutil.which("node") is None,
    reason="npm-groovy-lint, node or Java missing (make test installs it where npm is; "
           ".ci/run installs all three)")


def _offline() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--net", "true"], capture_output=True,
                                  timeout=30).returncode == 0:
        return [unshare, "--net"]
    return []


def _check_workflow(path: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("check-jsonschema", path=str(VENV_BIN)) or shutil.which(
        "check-jsonschema")
    assert tool, "check-jsonschema is not installed; `make test` installs it with the dev extra"
    return subprocess.run([*_offline(), tool, "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, timeout=120)


def _groovy_lint(folder: Path, *names: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / ".groovylintrc.json", folder / ".groovylintrc.json")
    result = subprocess.run([*_offline(), str(GROOVY_LINT), "--noserver", "--failon", "info",
                             "--output", "txt", *names], cwd=folder, capture_output=True,
                            text=True, timeout=300)
    result.stdout = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # its colours
    return result


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


def _stages(text: str) -> list[str]:
    return re.findall(r"^\s*stage\('([^']+)'\)", text, flags=re.M)


def _parameters(text: str) -> set[str]:
    return set(re.findall(r"\b(?:string|booleanParam|choice)\(name: '(\w+)'", text))


# --------------------------------------------------------------------------------------------
# GitHub workflow
# --------------------------------------------------------------------------------------------


def test_the_workflow_validates_against_the_github_workflow_schema():
    result = _check_workflow(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation done" in result.stdout


def test_the_schema_check_rejects_a_broken_workflow(tmp_path):
    workflow = yaml.safe_load(WORKFLOW.read_text())
    workflow["jobs"]["test"]["runs_on"] = workflow["jobs"]["test"].pop("runs-on")
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(workflow))
    result = _check_workflow(bad)
    assert result.returncode != 0
    assert "runs-on" in result.stdout + result.stderr


def test_the_workflow_runs_the_tests_and_pushes_from_main_with_a_role_not_a_key():
    text = WORKFLOW.read_text()
    workflow = yaml.safe_load(text)
    test_steps = [s.get("run", "") for s in workflow["jobs"]["test"]["steps"]]
    assert "make test" in test_steps and "make image-test" in test_steps
    push = workflow["jobs"]["push"]
    assert push["needs"] == "test"
    assert "refs/heads/main" in push["if"] and "push" in push["if"]
    assert push["permissions"]["id-token"] == "write"
    assert workflow["permissions"] == {"contents": "read"}
    (login,) = [s for s in push["steps"] if "configure-aws-credentials" in s.get("uses", "")]
    assert login["with"]["role-to-assume"] == "${{ vars.AWS_ROLE_ARN }}"
    assert "secrets." not in text and "aws-access-key-id" not in text
    build = next(s["run"] for s in push["steps"] if s.get("name") == "Build and push")
    assert "make image ENGINE=docker" in build and 'docker push "$image"' in build


# --------------------------------------------------------------------------------------------
# Jenkinsfiles
# --------------------------------------------------------------------------------------------


@needs_groovy_lint
def test_the_jenkinsfiles_lint_clean(tmp_path):
    for path in JENKINSFILES:
        shutil.copy(path, tmp_path / path.name)
    result = _groovy_lint(tmp_path, *(p.name for p in JENKINSFILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 linted files" in result.stdout


@needs_groovy_lint
def test_the_lint_reports_a_broken_jenkinsfile(tmp_path):
    text = (ROOT / "Jenkinsfile-CI").read_text()
    (tmp_path / "Jenkinsfile-bad").write_text(text.replace("stages {", "stages {{", 1))
    result = _groovy_lint(tmp_path, "Jenkinsfile-bad")
    assert result.returncode != 0
    assert "error" in result.stdout.lower()


def test_jenkinsfile_ci_tests_builds_and_pushes_the_version_commit_tag():
    text = _strip_comments((ROOT / "Jenkinsfile-CI").read_text())
    assert text.lstrip().startswith("pipeline {")
    assert _stages(text) == ["Checkout", "Test", "Build image", "Push"]
    assert _parameters(text) == {"AWS_ACCOUNT_ID", "AWS_REGION", "REGISTRY", "PUSH"}
    assert "checkout scm" in text
    assert "sh 'make test'" in text
    assert "make image ENGINE=docker IMAGE=\"$IMAGE\"" in text
    assert 'env.IMAGE_TAG = "${version}-${commit}"' in text
    assert "aws ecr get-login-password" in text and 'docker push "$IMAGE"' in text
    assert ".dkr.ecr." in text


def test_jenkinsfile_cd_deploys_by_digest_waits_checks_health_and_rolls_back():
    text = _strip_comments((ROOT / "Jenkinsfile-CD").read_text())
    assert text.lstrip().startswith("pipeline {")
    assert _stages(text) == ["Checkout", "Resolve image", "Connect to the cluster", "Deploy",
                             "Health check"]
    assert _parameters(text) == {"CLUSTER", "AWS_REGION", "AWS_ACCOUNT_ID", "REGISTRY",
                                 "IMAGE_TAG", "IMAGE_DIGEST", "K8S_DIR"}
    assert "aws eks update-kubeconfig --name \"$CLUSTER\"" in text
    assert "./deploy.sh --digest \"$IMAGE_DIGEST_RESOLVED\"" in text
    assert "port-forward \"deployment/$APP\" 18080:8080" in text
    for path in ("/healthz", "/readyz"):
        assert path in text
    failure = text[text.index("failure {"):]
    assert "rollout undo \"deployment/$APP\"" in failure and "rollout status" in failure
    # deploy.sh waits for the rollout itself.
    assert "rollout status" in (ROOT / "deploy.sh").read_text()


@pytest.mark.parametrize("path", [*JENKINSFILES, WORKFLOW], ids=lambda p: p.name)
def test_no_credentials_are_written_in_the_ci_files(path):
    text = path.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text)
    assert not re.search(r"(?i)(secret_access_key|password)\s*[:=]", text)
    assert "withCredentials" not in text
    assert not re.search(r"\b\d{12}\b", text), "an account id is written in the file"
