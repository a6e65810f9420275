# PEON bot image. Run with the Docker socket mounted (see README); game servers run as
# sibling containers on the host's engine.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot bot
COPY cogs cogs
RUN pip install --no-cache-dir .
COPY warplans warplans
COPY config config
ENV PEON_DATA_DIR=/data PYTHONUNBUFFERED=1
VOLUME /data
HEALTHCHECK --interval=60s --timeout=20s CMD ["peon", "check"]
ENTRYPOINT ["peon"]
CMD ["run"]
