# LLM Gateway container image.
#
#   docker build -t llmgateway .
#   docker run --rm -p 8000:8000 -v llmgw-data:/data \
#       -e LLM_DEFAULT_URL=http://my-llm-host:8000 llmgateway
#   docker exec <container> llmgateway keys create --user alice --name laptop
#
# The default config is kubernetes/gateway.toml, baked in at /etc/llmgateway/gateway.toml (API on
# 8000, metrics on 9464); mount another file there (or set LLMGW_CONFIG) to change models. State
# (SQLite store and the usage spool) lives on the /data volume.

# --- build: install the package and its dependencies into a virtualenv -------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what `pip install .` needs: setup.py, the two packages and the portal's static files. pycurl,
# tornado, APScheduler, lxml and xmlsec come as wheels (bundling libcurl, libxml2 and xmlsec1), so
# no compiler or -dev packages.
COPY setup.py ./
COPY llmgateway ./llmgateway
COPY handlers ./handlers
COPY static ./static
RUN pip install . \
    && python -c "import pycurl, tornado, apscheduler, handlers.app; print(pycurl.version)"

# --- runtime --------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LLMGW_LISTEN=0.0.0.0:8000 \
    LLMGW_STORE_URL=sqlite:////data/llmgateway.db \
    LLMGW_SPOOL_DIR=/data/spool \
    LLMGW_CONFIG=/etc/llmgateway/gateway.toml

# Unprivileged user with a fixed uid/gid (10001) that Kubernetes' runAsUser/fsGroup match.
RUN groupadd --system --gid 10001 llmgateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin llmgateway \
    && mkdir -p /data/spool /etc/llmgateway \
    && chown -R 10001:10001 /data

COPY --from=build /opt/venv /opt/venv
COPY kubernetes/gateway.toml /etc/llmgateway/gateway.toml

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# 8000: the API. 9464: Prometheus' /metrics, as [metrics] listen in kubernetes/gateway.toml sets
# it; publish it only to your monitoring (it asks for no key).
EXPOSE 8000 9464

# SIGTERM: stop accepting, drain open streams for server.drain_seconds (30), flush usage.
# Give `docker stop` enough time: docker stop --time 45 (Kubernetes: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

# For plain Docker; Kubernetes ignores HEALTHCHECK and uses the probes in deployment.yaml.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('LLMGW_LISTEN', ':8000').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["llmgateway"]
CMD ["serve"]
