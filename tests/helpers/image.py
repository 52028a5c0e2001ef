"""Building and running the image with podman, on the machines the tests run on.

What it takes here, none of which is in the Dockerfile (it stays as real users build it):

- ``runc`` as the runtime when installed, and the ``cgroupfs`` cgroup manager when systemd does
  not run the machine (crun refuses the hybrid cgroup v1/v2 layout these machines have);
- container ulimits no higher than the host's (podman's defaults try to raise them);
- a base image: ``PYTHON_IMAGE`` from the environment, else the Dockerfile's official base when
  it is present or can be pulled, else a stand-in built by ``.ci/standin-base.sh``;
- the build on the host's network with the host's CA bundle and pip configuration mounted
  read-only, so the build's ``pip install`` reaches the package index the way the host does.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from pathlib import Path

from helpers.support import ROOT

STANDIN = "localhost/sqs-processor-base-standin:3.11-bookworm"
HOST_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf", "/etc/xdg/pip")


def podman() -> str | None:
    return shutil.which("podman")


def engine_flags() -> list[str]:
    flags = []
    if shutil.which("runc"):
        flags += ["--runtime", "runc"]
    if not Path("/run/systemd/system").exists():
        flags += ["--cgroup-manager", "cgroupfs"]
    return flags


def command(*args: str) -> list[str]:
    return [podman() or "podman", *engine_flags(), *args]


def ulimit_flags() -> list[str]:
    flags = []
    for name, limit in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, _ = resource.getrlimit(limit)
        value = 1024 if soft == resource.RLIM_INFINITY else min(soft, 1024)
        flags += ["--ulimit", f"{name}={value}:{value}"]
    return flags


def build_flags() -> list[str]:
    flags = ["--network", "host", *ulimit_flags()]
    for path in HOST_FILES:
        if Path(path).exists():
            flags += ["--volume", f"{path}:{path}:ro"]
    return flags


def run(args: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def official_base() -> str:
    text = (ROOT / "Dockerfile").read_text()
    return re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M).group(1)


def base_image() -> str:
    """The base to build on: see the module docstring."""
    if os.environ.get("PYTHON_IMAGE"):
        return os.environ["PYTHON_IMAGE"]
    official = official_base()
    if run(command("image", "exists", official), 60, check=False).returncode == 0:
        return official
    try:
        pulled = run(command("pull", "--quiet", official), 120,
                     check=False)
    except subprocess.TimeoutExpired:
        pulled = None
    if pulled is not None and pulled.returncode == 0:
        return official
    env = dict(os.environ, PODMAN=" ".join(command()))
    result = subprocess.run([str(ROOT / ".ci" / "standin-base.sh"), STANDIN], env=env,
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"the official base {official} cannot be pulled and the stand-in "
                             f"could not be built:\n{result.stdout}\n{result.stderr}")
    return STANDIN


def build(tag: str) -> str:
    """``make image`` with podman and this machine's flags; returns the base used."""
    base = base_image()
    make = shutil.which("make") or "make"
    run([make, "-C", str(ROOT), "image", "ENGINE=podman", f"IMAGE={tag}",
         f"ENGINE_FLAGS={' '.join(engine_flags())}", f"BUILD_FLAGS={' '.join(build_flags())}",
         f"PYTHON_IMAGE={base}"], timeout=1200)
    return base


def size(tag: str) -> int:
    return int(run(command("image", "inspect", "--format", "{{.Size}}", tag), 60).stdout)
