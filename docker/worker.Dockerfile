# GPU worker image: one `toonq worker` process per GPU.
#   docker build -f docker/worker.Dockerfile -t toonq-worker .
#   docker build -f docker/worker.Dockerfile --build-arg BAKE_WEIGHTS=1 -t toonq-worker .  # weights inside
# The base image brings CUDA, torch and torchvision (whose deform_conv2d kernel the engine uses).
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/opt/hf \
    TOONQ_LOG_FORMAT=json \
    TOONQ_METRICS_PORT=9100

WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY producer producer
COPY worker worker
COPY migrations migrations
# torch is already in the base image; pip keeps it because it satisfies the range.
RUN pip install ".[worker]" && rm -rf /src

ARG BAKE_WEIGHTS=0
RUN if [ "$BAKE_WEIGHTS" = "1" ]; then toonq model fetch; fi

RUN useradd --create-home --uid 10001 toonq && mkdir -p /opt/hf && chown toonq /opt/hf
USER toonq
EXPOSE 9100
# Exec form, so that SIGTERM reaches the worker: it finishes the job in hand, then exits.
ENTRYPOINT ["toonq", "worker"]
