# akeeba-backupd in a container. Build and run (see the README, "Run in Docker"):
#
#   docker build -t akeeba-backupd .
#   docker run -d --name akeeba-backupd --stop-timeout 90 -p 9489:9489 \
#     -v akeeba-state:/var/lib/akeeba-backupd \
#     -v /srv/akeeba/config.yaml:/etc/akeeba-backupd/config.yaml:ro \
#     -v /srv/akeeba/secrets:/run/secrets:ro \
#     akeeba-backupd
#
# The config must listen on all interfaces ("0.0.0.0:9489") to be reachable from outside the
# container, which needs api_token_file (e.g. /run/secrets/api-token). Secret files must be
# readable by uid 10001 and by no group or other: chown 10001:10001, chmod 0400.
#
# The base is pinned by tag; pin it by digest as well with
#   --build-arg PYTHON_IMAGE=python:3.12.8-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

# --- builder: a virtualenv with the daemon and its dependencies ---------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# What setuptools needs to build the package: its metadata (the README is the long
# description) and the sources. .dockerignore keeps everything else out of the context.
COPY pyproject.toml README.md ./
COPY daemon/ daemon/

RUN python -m venv /opt/akeeba-backupd \
    && /opt/akeeba-backupd/bin/pip install --no-cache-dir /src \
    && /opt/akeeba-backupd/bin/akeeba-backupd --version

# --- the image: the virtualenv on the same base, run by an unprivileged numeric user ------------
FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="akeeba-backupd" \
      org.opencontainers.image.description="Scheduled Akeeba Backup runs for many sites, watched by Prometheus" \
      org.opencontainers.image.licenses="GPL-3.0-or-later" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

ENV PATH=/opt/akeeba-backupd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AKEEBA_BACKUPD_CONFIG=/etc/akeeba-backupd/config.yaml

COPY --from=builder /opt/akeeba-backupd /opt/akeeba-backupd

# uid/gid 10001: no clash with a host account, and not root. The state directory belongs to
# it, so a fresh named volume mounted there does too; nothing else is writable.
RUN groupadd --system --gid 10001 akeeba \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/akeeba-backupd --shell /usr/sbin/nologin akeeba \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/akeeba-backupd \
    && install -d -m 0755 /etc/akeeba-backupd

# state.db (runs, pauses, in-flight backups to resume): keep it across container restarts.
VOLUME ["/var/lib/akeeba-backupd"]
WORKDIR /var/lib/akeeba-backupd
USER 10001:10001

# /metrics, /healthz, /readyz, the API and the status page (the config's listen port).
EXPOSE 9489

# SIGTERM: running backups finish their current step (--shutdown-grace, 60 s), so give
# `docker stop` more than that: --stop-timeout 90 (compose: stop_grace_period: 90s).
STOPSIGNAL SIGTERM

# /healthz answers 200 while the event loop runs. The image has no curl: the stdlib does it.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9489/healthz', timeout=8).status == 200 else 1)"]

ENTRYPOINT ["akeeba-backupd"]
CMD ["run", "--config", "/etc/akeeba-backupd/config.yaml"]
