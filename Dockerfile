# syntax=docker/dockerfile:1
# The trainsim daemon, for the docker-compose demo stack.
#
# The base image is pinned by version tag. For bit-for-bit reproducible builds, pin its digest
# as well (look it up with `docker buildx imagetools inspect python:3.11.10-slim-bookworm`):
#   FROM python:3.11.10-slim-bookworm@sha256:<digest>
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package build needs (see .dockerignore); the sources are removed after the
# install so the image holds the installed package alone.
WORKDIR /tmp/trainsim
COPY pyproject.toml README.md ./
COPY simulator/ simulator/
# simulator/configs links to configs/, the one copy of the shipped files (package data).
COPY configs/ configs/
RUN pip install . \
    && cd / && rm -rf /tmp/trainsim

# /backfill: where `trainsim backfill` writes in the compose stack. A named volume mounted
# there starts as a copy of this directory, owner included, so the user below can write it.
RUN groupadd --system --gid 10001 trainsim \
    && useradd --system --uid 10001 --gid trainsim --no-create-home --shell /usr/sbin/nologin trainsim \
    && install -d -o trainsim -g trainsim -m 0755 /backfill
USER trainsim:trainsim
WORKDIR /

EXPOSE 9310

# slim has no curl: probe /healthz with the interpreter that is there anyway. The port is the
# one CMD listens on; keep them in step if you change --web.listen-address.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:9310/healthz', timeout=2); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["trainsim"]
# The daemon listens on every interface inside the container so that Prometheus (another
# container) can scrape it. It refuses a non-loopback address while the control API's changes
# are on without a token, and the bare image has no token: so they are off here (reads under
# /api/v1 still work). docker-compose.yml mounts a token file and turns them on; to do the same,
# pass `run ... --web.control-token-file FILE` with FILE mounted read-only (docs/api.md).
CMD ["run", "--web.listen-address", "0.0.0.0:9310", "--no-web.enable-control-api"]
