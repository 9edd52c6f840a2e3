# Stage0 as a container image (docs/deploy.md). Build from the repository root:
#   docker build -t stage0-authz .
#   docker run -p 8000:8000 -v stage0-data:/var/lib/stage0 stage0-authz
# Both stages use the same base image: the virtualenv built in the first links to its python.

# -- build: the package and its runtime dependencies (no extras) in a virtualenv --------------
FROM python:3.12-slim-trixie AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/stage0
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src/ src/
# pip compiles the bytecode here, so the read-only runtime image never needs to write it.
RUN /opt/stage0/bin/pip install --no-cache-dir . \
    && /opt/stage0/bin/stage0 --version

# -- runtime: python, the virtualenv and the entrypoint; runs as uid 10001 ---------------------
FROM python:3.12-slim-trixie
RUN groupadd --system --gid 10001 stage0 \
    && useradd --system --uid 10001 --gid stage0 --home-dir /var/lib/stage0 --no-create-home \
        --shell /usr/sbin/nologin stage0 \
    && install -d -o stage0 -g stage0 -m 0750 /var/lib/stage0
COPY --from=build /opt/stage0 /opt/stage0
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/stage0-entrypoint
ENV PATH=/opt/stage0/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STAGE0_DATABASE_URL=sqlite:////var/lib/stage0/stage0.db \
    STAGE0_HOST=0.0.0.0 \
    STAGE0_PORT=8000 \
    STAGE0_WORKERS=1
WORKDIR /var/lib/stage0
VOLUME /var/lib/stage0
USER 10001:10001
EXPOSE 8000
# /readyz answers 200 when the policy is loaded and the store takes writes, else 503.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/stage0/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('STAGE0_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/local/bin/stage0-entrypoint"]
