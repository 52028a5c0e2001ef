# The sqs-processor image.
#
#   docker build -t sqs-processor:0.1.0 .
#   docker run --rm -p 8080:8080 -e SQS_QUEUE_URL=... -e S3_BUCKET_NAME=... sqs-processor:0.1.0
#
# Two stages: the build stage installs the package and the dependencies its pyproject.toml
# declares into a virtual environment; the runtime stage is the same slim Python base with that
# environment copied in, pip removed, and nothing added. It runs as UID 10001 and writes
# nothing outside /tmp, so it works with a read-only root filesystem.
#
# Config: the built-in default pipeline (configs/default.yaml, which reads SQS_QUEUE_URL,
# S3_BUCKET_NAME and the other variables of the original service) is baked in at
# /etc/sqs-processor/pipeline.yaml. Mount your own file there, or point SQS_PROCESSOR_CONFIG
# (or --config) at another path.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build -------------------------------------------------------------------------------
# checkov:skip=CKV_DOCKER_7: the base is pinned to a version tag by the ARG PYTHON_IMAGE default above; checkov does not resolve ARGs
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY plugins ./plugins
COPY configs ./configs

# The project and its declared dependencies, compiled to bytecode at install time (the runtime
# cannot write __pycache__), then the installer itself is dropped from the environment.
RUN python -m venv /opt/sqs-processor \
    && /opt/sqs-processor/bin/pip install --no-cache-dir --compile . \
    && /opt/sqs-processor/bin/pip uninstall --yes pip setuptools wheel

# ---- runtime -----------------------------------------------------------------------------
# checkov:skip=CKV_DOCKER_7: the same version-tagged base as the build stage (ARG default above)
FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown

LABEL org.opencontainers.image.title="sqs-processor" \
      org.opencontainers.image.description="Archives Amazon SQS messages into S3 through a plugin pipeline wired in YAML." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A fixed unprivileged user; no package installs, and the base image's pip, setuptools and
# wheel go too (the service installs nothing at run time).
RUN groupadd --system --gid 10001 sqs-processor \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sqs-processor \
    && python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
    && rm -rf /usr/local/lib/python3*/ensurepip /root/.cache

COPY --from=build /opt/sqs-processor /opt/sqs-processor
COPY configs/default.yaml /etc/sqs-processor/pipeline.yaml

ENV PATH=/opt/sqs-processor/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SQS_PROCESSOR_CONFIG=/etc/sqs-processor/pipeline.yaml

USER 10001:10001
EXPOSE 8080
# For docker and podman (Kubernetes ignores it and uses the pod's probes): the liveness check
# of /healthz on the health port, made with the image's own Python (it ships no HTTP tool).
# urlopen raises on a refused connection and on any answer but 2xx, so both fail the check.
# It asks the default health port; a pipeline with another service.health_port needs its own.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["sqs-processor"]
CMD ["run"]
