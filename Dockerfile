# PEON bot image. Game servers run as sibling containers on the engine(s) PEON is given: mount
# the Docker socket (see compose.yaml and the README). The bot runs as the unprivileged user
# "peon", in the group that owns the socket (scripts/docker-entrypoint.sh).

# The base of both stages. Another Debian bookworm image with python3 3.11 (and its venv
# module) works too, e.g. one made with debootstrap where no registry is reachable (the tests).
ARG BASE=python:3.11-slim-bookworm

# --- build: PEON and its dependencies in a virtual environment -------------------------------
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/tmp/pip-ca.pem
# Behind a proxy that intercepts TLS, pip needs the proxy's CA to reach PyPI:
# --build-arg EXTRA_CA_CERTS="$(cat proxy-ca.pem)". Added to pip's own bundle, in this stage
# only: the image keeps none of it.
ARG EXTRA_CA_CERTS=""
# python3: /usr/local/bin/python3 in the official image, /usr/bin/python3 in Debian's.
RUN python3 -m venv /venv \
 && /venv/bin/python -c 'import pip._vendor.certifi as c; print(open(c.where()).read())' \
      > /tmp/pip-ca.pem \
 && printf '%s\n' "$EXTRA_CA_CERTS" >> /tmp/pip-ca.pem
WORKDIR /src
# The dependencies in a layer of their own, from pyproject.toml alone: a change to PEON's
# code (or README) reuses it and rebuilds only the last layer.
COPY pyproject.toml ./
RUN /venv/bin/python -c 'import tomllib; \
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
 && /venv/bin/pip install --requirement /tmp/requirements.txt
COPY README.md ./
COPY bot bot
COPY cogs cogs
# Then pip and setuptools go: the bot needs neither (25 MB).
RUN /venv/bin/pip install --no-deps . \
 && /venv/bin/pip uninstall --yes pip setuptools

# --- run ---------------------------------------------------------------------------------------
FROM ${BASE}
RUN groupadd --system --gid 10001 peon \
 && useradd --system --uid 10001 --gid peon --home-dir /data --shell /usr/sbin/nologin peon
# restic stores backups in repositories (backups.repository, backups.offsite); ssh is its
# SFTP transport, ca-certificates its TLS to S3 and REST servers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends restic openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /venv /venv
COPY warplans /app/warplans
COPY config /app/config
COPY scripts/docker-entrypoint.sh /usr/local/bin/docker-entrypoint
WORKDIR /app
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PEON_DATA_DIR=/data \
    PEON_CONFIG=/app/config/peon.yaml
VOLUME /data
# `peon check`: config, war plans, database, every Docker host. Through the entrypoint, so it
# runs as "peon" too and never leaves root-owned files in /data.
HEALTHCHECK --interval=60s --timeout=30s --start-period=30s --retries=3 \
  CMD ["docker-entrypoint", "check"]
# SIGTERM: PEON finishes (or records) running operations within shutdown_grace (60 s); give
# it that long before the engine sends SIGKILL (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["docker-entrypoint"]
CMD ["run"]
