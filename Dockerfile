# syntax=docker/dockerfile:1
# bulk360-relay image. Build: `docker build -t bulk360-relay .`
# Runs `bulk360-relay serve` on port 8000; `docker run IMAGE migrate` upgrades the database.
# Every setting (DATABASE_URL, credentials, API_KEYS, DN_HOOK_TOKEN...) comes from the
# environment at run time: nothing secret is baked into a layer.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, read from pyproject.toml alone: this layer is rebuilt only when
# pyproject.toml changes, not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the package itself, as a regular (non-editable) install; the migrations ship inside it,
# so `bulk360-relay migrate` works from any directory. `pip check` catches a dependency list that
# changed without the layer above being rebuilt.
COPY README.md ./
COPY migrations ./migrations
COPY app ./app
RUN pip install --no-deps . && pip check


FROM python:3.11-slim AS runtime
LABEL org.opencontainers.image.title="bulk360-relay" \
      org.opencontainers.image.description="Relay between internal services and the Bulk360 SMS/WhatsApp gateway"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --create-home --home-dir /home/relay \
       --shell /usr/sbin/nologin relay
COPY --from=builder /opt/venv /opt/venv
# The image has no embedded PostgreSQL (the `embedded` extra is left out): it runs against
# DATABASE_URL, the compose file's postgres service or a managed server.
WORKDIR /home/relay
USER 10001:10001

EXPOSE 8000
# The slim image has no curl: probe with the venv's Python.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# uvicorn drains in-flight requests (and the DN queue) on SIGTERM, for up to 30 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["bulk360-relay"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
