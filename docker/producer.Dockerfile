# Producer/admin image: the `toonq` CLI and the Python client, without torch.
#   docker build -f docker/producer.Dockerfile -t toonq .
#   docker run --rm -e TOONQ_DATABASE_URL=... toonq migrate
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TOONQ_LOG_FORMAT=json
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY producer producer
COPY worker worker
COPY migrations migrations
RUN pip install . && rm -rf /src
RUN useradd --create-home --uid 10001 toonq
USER toonq
ENTRYPOINT ["toonq"]
