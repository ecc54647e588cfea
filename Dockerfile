# recguard: the guarded proxy in a container, serving a bundle mounted at /bundle (or baked into
# a derived image; docs/operations.md shows both).
#
#   docker build -t recguard .                          # the serving image (the last stage): no torch
#   docker run -p 8000:8000 -v "$PWD/bundles/default:/bundle:ro" \
#       -e RECGUARD_REDIS_URL=redis://my-redis:6379/0 recguard
#   docker build --target train -t recguard-train .     # `recguard train` with torch and torch-geometric
#
# Every setting is a RECGUARD_* variable (docs/operations.md); the CMD passes no flags.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/recguard
ENV PATH=/opt/recguard/bin:$PATH
WORKDIR /src

# The serving install: the project without its train extra (numpy scores; torch is never imported).
FROM venv AS build
COPY pyproject.toml README.md MANIFEST.in ./
COPY model ./model
COPY proxy ./proxy
# A regular (not editable) install: the final stage copies the venv and nothing of /src.
RUN pip install .

# The training install: torch first (same pin as the Makefile), so a change of the sources does not
# fetch it again. The default torch wheel drags in CUDA libraries; for CPU pass TORCH_INDEX_URL
# (PyTorch's CPU-only wheel index) or TORCH_FIND_LINKS (a directory or page holding a CPU wheel).
FROM venv AS train-build
ARG TORCH_INDEX_URL=
ARG TORCH_FIND_LINKS=
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"} torch==2.13.0
COPY pyproject.toml README.md MANIFEST.in ./
COPY model ./model
COPY proxy ./proxy
RUN pip install ".[train]"

# `docker run -v "$PWD/data:/data:ro" -v "$PWD/bundles:/bundles" recguard-train
#      train --data /data --out /bundles/new`: the arguments are recguard's.
FROM ${PYTHON_IMAGE} AS train
RUN groupadd --system --gid 10001 recguard \
 && useradd --system --uid 10001 --gid recguard --home-dir /app --shell /usr/sbin/nologin recguard \
 && mkdir -p /app \
 && chown recguard:recguard /app
COPY --from=train-build /opt/recguard /opt/recguard
ENV PATH=/opt/recguard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["recguard"]
CMD ["train", "--help"]

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 recguard \
 && useradd --system --uid 10001 --gid recguard --home-dir /app --shell /usr/sbin/nologin recguard \
 && mkdir -p /app /bundle \
 && chown recguard:recguard /app
COPY --from=build /opt/recguard /opt/recguard
ENV PATH=/opt/recguard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RECGUARD_BIND=0.0.0.0:8000 \
    RECGUARD_BUNDLE=/bundle \
    RECGUARD_WORKERS=2 \
    RECGUARD_REDIS_URL=redis://redis:6379/0
WORKDIR /app
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
# /livez never touches Redis or the bundle: the container turns unhealthy when its process hangs, not when Redis is down.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('RECGUARD_BIND', ':8000').rpartition(':')[2]; urllib.request.urlopen('http://127.0.0.1:' + port + '/livez', timeout=2)"]
CMD ["recguard", "serve"]
