# syntax=docker/dockerfile:1
#
# Producer/admin image: the `toonq` CLI (migrate, submit, status, jobs, requeue, cancel, recover)
# and the Python client, without torch: the project's core dependencies only, no worker extra,
# and no worker/ source root (its commands then say what to install).
#
#   docker build -f docker/producer.Dockerfile -t toonq .
#   docker run --rm -e TOONQ_DATABASE_URL=postgresql://... toonq migrate
# checkov:skip=CKV_DOCKER_7: the base is this ARG, whose default is a version tag: checkov does not expand ARGs
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY producer producer
COPY migrations migrations
# hadolint ignore=DL3013
RUN pip install .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TOONQ_LOG_FORMAT=json
# A numeric user, so that Kubernetes' runAsNonRoot can verify it.
RUN useradd --create-home --uid 10001 --user-group toonq
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/toonq
# Each container runs one CLI command and exits: there is no server whose health to check.
HEALTHCHECK NONE
# Exec form: signals reach toonq itself.
ENTRYPOINT ["toonq"]
CMD ["--help"]
