# syntax=docker/dockerfile:1
#
# GPU worker image: `toonq worker`, one process per GPU, model loaded and warmed up once.
#
#   docker build -f docker/worker.Dockerfile -t toonq-worker .
#   docker build -f docker/worker.Dockerfile --build-arg BAKE_WEIGHTS=1 -t toonq-worker .
#
# With BAKE_WEIGHTS=1 the ToonOut weights are inside the image. Without, the worker downloads them
# on its first start into HF_HOME (mount a volume there to keep them), or loads
# TOONQ_MODEL=/path/to/weights.pth or TOONQ_MODEL=s3://bucket/key.
#
# The "base" flavour of the CUDA image is enough: the NVIDIA container runtime reads its NVIDIA_*
# variables (which GPUs, which driver libraries, the lowest driver that runs CUDA 13.0), while
# torch's CUDA wheels bring their own cuBLAS and cuDNN; the "runtime" flavour would ship them twice.
# For a driver older than CUDA 13.0 needs (580), build with
#   --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# checkov:skip=CKV_DOCKER_7: the base is this ARG, whose default is a version tag: checkov does not expand ARGs
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS python
# tini is PID 1: it forwards SIGTERM to the worker, and SIGTERM also stops a worker that is still
# loading the model (a Python PID 1 without a handler would ignore it until SIGKILL).
# apt packages are left unpinned on purpose (DL3008): a rebuild picks up the distribution's
# security fixes; Python packages are pinned or ranged by pyproject.toml (DL3013).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 tini ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM python AS venv
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The weights get a stage of their own, which depends on nothing in the source tree: a code change
# does not download the 885 MB again. The revision is the one toonq pins and verifies
# (toonq.worker.engine.weights.KNOWN_CHECKPOINTS), so the worker finds the file in HF_HOME.
FROM venv AS weights
ARG BAKE_WEIGHTS=0
ARG HF_HUB_VERSION=2.4.0
ARG MODEL_REPO=joelseytre/toonout
ARG MODEL_FILE=birefnet_finetuned_toonout.pth
ARG MODEL_REVISION=cbf720eca394edcde66b861a8a8c20fbabe9c748
ENV HF_HOME=/opt/hf
RUN mkdir -p "$HF_HOME" \
    && if [ "$BAKE_WEIGHTS" = "1" ]; then \
        pip install "huggingface_hub==${HF_HUB_VERSION}" \
        && hf download "$MODEL_REPO" "$MODEL_FILE" --revision "$MODEL_REVISION" \
        && rm -rf "$HF_HOME/xet"; \
    fi

FROM venv AS build
# torch first, in a layer of its own: the largest download, which changes only with the pin
# (the Makefile's TORCH_SPEC). torchvision brings the deform_conv2d kernel the engine prefers.
ARG TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
ARG TORCH_INDEX_URL=""
# hadolint ignore=DL3013
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} $TORCH_SPEC
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY producer producer
COPY worker worker
COPY migrations migrations
# The project with its worker extra; pip keeps the torch above, which satisfies the extra's range.
# hadolint ignore=DL3013
RUN pip install ".[worker]"

FROM python
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/opt/hf \
    TOONQ_LOG_FORMAT=json \
    TOONQ_METRICS_PORT=9100
# A numeric user, so that Kubernetes' runAsNonRoot can verify it.
RUN useradd --create-home --uid 10001 --user-group toonq
COPY --from=build /opt/venv /opt/venv
# Owned by the worker's user: an image built without weights downloads them here at start.
COPY --from=weights --chown=10001:10001 /opt/hf /opt/hf
USER 10001:10001
WORKDIR /home/toonq
# /metrics, /livez and /readyz.
EXPOSE 9100
# Healthy once the model is loaded and warmed up and the worker consumes (/readyz on
# TOONQ_METRICS_PORT); the start period leaves room for a first start that downloads the weights.
# Kubernetes ignores this and uses the manifest's probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ['TOONQ_METRICS_PORT'], timeout=3)"]
# Exec form: tini, then toonq, receive SIGTERM directly (no shell in between). On SIGTERM the
# worker stops taking jobs, lets those in hand finish for TOONQ_SHUTDOWN_GRACE_S, hands the rest
# back to the queue, and exits.
ENTRYPOINT ["/usr/bin/tini", "--", "toonq"]
CMD ["worker"]
