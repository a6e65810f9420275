# PEON bot image. Game servers run as sibling containers on the engine(s) PEON is given: mount
# the Docker socket (see compose.yaml and the README). The bot runs as the unprivileged user
# "peon", in the group that owns the socket (scripts/docker-entrypoint.sh).

# --- build: wheels of PEON and its dependencies in a virtual environment --------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot bot
COPY cogs cogs
RUN /venv/bin/pip install .

# --- run ---------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 peon \
 && useradd --system --uid 10001 --gid peon --home-dir /data --shell /usr/sbin/nologin peon
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
