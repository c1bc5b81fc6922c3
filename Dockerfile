# syntax=docker/dockerfile:1
# One image for the operator and the gateway: `kanal operator ...` and `kanal gateway ...`
# (the chart's Deployments pass the subcommand and its flags as args; the entrypoint is `kanal`).
#   docker build -t kanal:dev .
# Base: a full patch tag of the official image; both stages use the same one, so the venv's
# interpreter symlink (/usr/local/bin/python3.11) is valid in the final stage. Pin it by digest
# when releasing: docker buildx imagetools inspect python:3.11.14-slim-bookworm

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/kanal/ operator/kanal/
COPY functions/runtime/ functions/runtime/
# The kanal wheel (pure Python), then a venv with it and its dependencies. Every dependency
# ships as a manylinux wheel (--only-binary): nothing is compiled, no compiler is installed.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/kanal \
    && /opt/kanal/bin/pip install --no-cache-dir --only-binary=:all: /wheels/kanal-*.whl \
    && /opt/kanal/bin/pip uninstall --yes pip setuptools

FROM python:3.11.14-slim-bookworm
ENV PATH=/opt/kanal/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/kanal /opt/kanal
# 65532: the conventional "nonroot" uid/gid. Nothing in the image needs to be writable (the
# chart mounts an emptyDir at /tmp and makes the root filesystem read-only).
USER 65532:65532
# gateway: HTTP 8080, gRPC 9090 (the operator's snapshot 9443 and health 8081 are set by flags)
EXPOSE 8080 9090 9464
ENTRYPOINT ["kanal"]
CMD ["--help"]
