# geocurate: one image for every role (workers, beat, webhook receiver, one-off CLI commands).
# The role is the command: `docker run geocurate worker --queues score,train`, `... beat`, `... review webhook`.
# Settings come only from GEOCURATE_* environment variables (see README, "Configuration reference").
FROM python:3.11-slim

# Optional extra wheel index for torch, e.g. https://download.pytorch.org/whl/cpu for CPU-only I/O machines.
# Left empty, pip takes torch from PyPI (CUDA wheels on linux/x86_64), which the GPU worker needs.
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GEOCURATE_DATA_DIR=/data/geocurate-data \
    GEOCURATE_EXPORT_DIR=/data/exports \
    GEOCURATE_ADAPTERS_DIR=/data/adapters \
    HF_HOME=/data/hf-cache

WORKDIR /app

# Dependencies first, in a layer of their own, straight from pyproject.toml: the torch pins live only there.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt

COPY . .
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 geocurate \
    && mkdir -p /data/images /data/exports /data/adapters /data/geocurate-data /data/hf-cache \
    && chown -R geocurate:geocurate /data

USER geocurate
VOLUME ["/data/images", "/data/exports", "/data/adapters", "/data/geocurate-data"]
ENTRYPOINT ["geocurate"]
CMD ["--help"]
