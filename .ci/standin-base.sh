#!/usr/bin/env bash
# A stand-in for the official python:3.11-slim-bookworm base, for machines that cannot pull it:
# Debian bookworm's own python3 (3.11) in a minimal root filesystem made with mmdebstrap, then
# a virtual environment at /usr/local so that `python` and pip live where the official image
# has them. The Dockerfile is unchanged; pass this as --build-arg PYTHON_IMAGE=... (make image
# PYTHON_IMAGE=...). Needs root, podman, mmdebstrap and Debian's package archive.
#
#   .ci/standin-base.sh [IMAGE]     (default: localhost/sqs-processor-base-standin:3.11-bookworm)
#
# Does nothing when IMAGE already exists. PODMAN may carry global flags, e.g.
# PODMAN="podman --runtime runc --cgroup-manager cgroupfs".
set -euo pipefail

IMAGE="${1:-localhost/sqs-processor-base-standin:3.11-bookworm}"
PODMAN="${PODMAN:-podman}"
ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

die() { echo "standin-base.sh: error: $*" >&2; exit 2; }

command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is not installed (Debian package mmdebstrap)"
if $PODMAN image exists "$IMAGE"; then
    echo "standin-base.sh: $IMAGE already exists"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "standin-base.sh: building $IMAGE from Debian bookworm's python3"
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv bookworm "$work/rootfs.tar"
$PODMAN import --quiet "$work/rootfs.tar" "$IMAGE-rootfs" >/dev/null
cat > "$work/Containerfile" <<CONTAINERFILE
FROM $IMAGE-rootfs
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
RUN python3 -m venv /usr/local && python --version && python -m pip --version
CONTAINERFILE
$PODMAN build --quiet "${ULIMITS[@]}" --tag "$IMAGE" --file "$work/Containerfile" "$work" >/dev/null
$PODMAN untag "$IMAGE-rootfs"
echo "standin-base.sh: $IMAGE ready"
