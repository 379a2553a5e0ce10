# syntax=docker/dockerfile:1
# prometheus-anomaly-exporter container image.
#
#   docker build -t prometheus-anomaly-exporter .
#   docker run --rm -p 9866:9866 -v "$PWD/rules.yaml:/etc/anomaly-exporter/rules.yaml:ro" prometheus-anomaly-exporter
#   docker run --rm -v "$PWD/rules.yaml:/etc/anomaly-exporter/rules.yaml:ro" prometheus-anomaly-exporter check
#
# Two stages on the same slim base: the builder turns the project and every dependency into wheels; the final
# stage installs those wheels into a venv without touching the network, and never holds a compiler, a pip cache
# or the wheels themselves (they are bind-mounted from the builder, so no layer contains them).
# tests/test_dockerfile.py checks these properties and runs the same install steps in a fresh venv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
WORKDIR /src
# Only what the build needs (.dockerignore keeps the context to these too): the package metadata, the README it
# names as long description, and the package.
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# numpy, pandas, scikit-learn and scipy ship manylinux wheels for CPython 3.11, so nothing is compiled here.
# The cache mount speeds up rebuilds and stays out of the image.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# Set by CI, e.g. --build-arg REVISION="$(git rev-parse HEAD)" --build-arg CREATED="$(date -u +%FT%TZ)".
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="prometheus-anomaly-exporter" \
      org.opencontainers.image.description="Watches Prometheus metrics for anomalies and exports anomaly scores, expected values and bands as gauges." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can verify it and volume ownership is predictable.
RUN groupadd --system --gid 10001 anomaly-exporter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin anomaly-exporter

# The venv has no pip of its own: the base image's pip installs into it (--python), offline (--no-index), from the
# builder's wheels, which are bind-mounted for this one step only. pip compiles the .pyc files here, so nothing
# needs to be written at run time (PYTHONDONTWRITEBYTECODE; a read-only root filesystem works).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-index --no-cache-dir --find-links=/wheels \
        prometheus-anomaly-exporter \
    && anomaly-exporter --version

# State kept across restarts (--storage.path: alerts.json). A named volume mounted here starts out owned by the
# user, because Docker copies the directory's ownership into a new volume.
RUN install --directory --owner=10001 --group=10001 --mode=0750 /var/lib/anomaly-exporter
# The example rules; mount your own file over it (read-only is fine: it is only read).
COPY rules.yaml /etc/anomaly-exporter/rules.yaml

# Relative paths given on the command line resolve here, so `docker run IMAGE check` checks the mounted rules.
WORKDIR /etc/anomaly-exporter
USER 10001:10001
EXPOSE 9866

# `anomaly-exporter healthcheck` asks /-/healthy with the flags of the exporter running as pid 1 (port, TLS and
# basic auth from --web.config.file), so moving the port or securing the endpoint keeps the check right.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["anomaly-exporter", "healthcheck"]

ENTRYPOINT ["anomaly-exporter"]
CMD ["--config.file=/etc/anomaly-exporter/rules.yaml", "--storage.path=/var/lib/anomaly-exporter"]
