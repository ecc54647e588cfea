# recguard: the guarded proxy in a container, serving a bundle mounted at /bundle (or baked into
# a derived image; docs/operations.md shows both).
#
#   docker build -t recguard .
#   docker run -p 8000:8000 -v "$PWD/bundles/default:/bundle:ro" \
#       -e RECGUARD_REDIS_URL=redis://my-redis:6379/0 recguard
#
# Every setting is a RECGUARD_* variable (docs/operations.md); the CMD passes no flags.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/recguard
ENV PATH=/opt/recguard/bin:$PATH
# Same pin as the Makefile. TORCH_INDEX_URL may name PyTorch's CPU-only wheel index: the
# default wheel drags in CUDA libraries the proxy never uses (it scores with numpy).
ARG TORCH_INDEX_URL=
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md MANIFEST.in ./
COPY model ./model
COPY proxy ./proxy
# A regular (not editable) install: the final stage copies the venv and nothing of /src.
RUN pip install .

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
