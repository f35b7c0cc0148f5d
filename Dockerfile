# syntax=docker/dockerfile:1
# anomaly-stream worker image. Build from the repository root:
#   docker build -t anomaly-stream:0.1.0 .
# Both stages use the same exact base tag so the venv's interpreter symlink
# (/opt/venv/bin/python -> /usr/local/bin/python3.11) resolves in the final stage.

FROM python:3.11.13-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
# Every dependency comes from the project's own metadata (setup.cfg install_requires);
# all of them ship manylinux wheels, so the builder needs no compiler or apt packages.
COPY . .
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip uninstall --yes pip

FROM python:3.11.13-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="anomaly-stream" \
      org.opencontainers.image.description="Faust worker: Ethereum transaction anomaly detection with River half-space trees" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/var/lib/anomaly-stream \
    WEB_PORT=6066
# A fixed numeric uid/gid so Kubernetes runAsNonRoot can verify it; no home, no shell.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin app \
    && mkdir -p /var/lib/anomaly-stream \
    && chown 10001:10001 /var/lib/anomaly-stream
COPY --from=builder /opt/venv /opt/venv
WORKDIR /var/lib/anomaly-stream
USER 10001:10001
EXPOSE 6066
# slim has no curl: probe /health/live with the standard library. Faust binds 0.0.0.0,
# so loopback always reaches it; urlopen raises (exit 1) on any non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('WEB_PORT', '6066'), timeout=4)"]
ENTRYPOINT ["anomaly-stream"]
CMD ["worker"]
