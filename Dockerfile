# syntax=docker/dockerfile:1
# The remediator images, built from this repository:
#
#   docker build --target controller -t remediator:0.1.0 .          # remediator run, vmcore controller
#   docker build --target handler    -t remediator-handler:0.1.0 .  # + libvirt client library
#
# The build stage compiles every wheel (libvirt-python needs libvirt's headers); the runtime stages
# install those wheels only, with no compiler, no package index and no test or lab extras.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc pkg-config libvirt-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY remediator ./remediator
COPY vmcore ./vmcore
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

# The controllers: remediator run (remediation controller) and python -m vmcore.controller.
# libvirt-python is installed (it is a dependency of the package) but only the handler imports it.
FROM ${PYTHON_IMAGE} AS controller
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels remediator \
    && groupadd --system --gid 65532 remediator \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin remediator
# Non-root; the manifests also set runAsNonRoot, a read-only root filesystem and an emptyDir /tmp.
USER 65532:65532
ENTRYPOINT ["remediator"]
CMD ["run"]

# The vmcore handler: the same, plus libvirt's client library to talk to the node's libvirtd
# through /run/libvirt/libvirt-sock. The DaemonSet runs it as root (the socket admits root only).
FROM controller AS handler
USER 0
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvirt0 \
    && rm -rf /var/lib/apt/lists/*
USER 65532:65532
ENTRYPOINT ["python", "-m", "vmcore.handler"]
CMD ["--help"]
