# queuestream: the `queuestream` command (sim, refresh, produce, consume, verify, demo).
#   docker build -t queuestream .
#   docker run --rm queuestream --help
# docker-compose.yml runs it four times: a simulator, a producer and two consumers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# What pyproject.toml packages: the import packages queuestream, producer, consumers, schemas.
COPY pyproject.toml README.md ./
COPY queuestream ./queuestream
COPY producer ./producer
COPY consumers ./consumers
COPY schemas ./schemas
# confluent-kafka and psycopg[binary] come as manylinux wheels (librdkafka and libpq inside).
# gcc only while installing: it compiles the Avro readers' and writers' C extensions
# (schemas/avro/_creader.c, _cwriter.c).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install . \
    && (cd / && python -c "from schemas.avro import compiled_reader as r, compiled_writer as w; assert r.AVAILABLE and w.AVAILABLE") \
    && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 queuestream

USER queuestream
WORKDIR /home/queuestream
ENTRYPOINT ["queuestream"]
CMD ["--help"]
