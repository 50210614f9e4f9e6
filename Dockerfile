# syntax=docker/dockerfile:1
# One image for `meshplug operator` and `meshplug agent` (ENTRYPOINT ["meshplug"]).
# Build: docker build -t ghcr.io/meshplug/meshplug:0.1.0 .
# Stage 1 builds wheels (meshplug's and every dependency's); meshplug's wheel carries the agent's compiled data
# path (setup.py: the _wasmcall C extension and the mypyc-compiled per-request modules), hence gcc in that stage
# only. The final stage installs the wheels from a bind mount, so no wheel, compiler or source tree lands in the
# image. tests/unit/test_dockerfile.py checks this file; tests/integration/test_dockerfile_steps.py runs the pip
# steps on the test machine.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY meshplug ./meshplug
RUN python -m pip wheel --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/meshplug/bin:$PATH \
    MESHPLUG_CACHE=/var/cache/meshplug HOME=/tmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/meshplug \
    && python -m pip --python /opt/meshplug/bin/python install --no-index --find-links /wheels meshplug \
    && mkdir -p /var/cache/meshplug /var/lib/meshplug \
    && chown 65532:65532 /var/cache/meshplug /var/lib/meshplug
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["meshplug"]
CMD ["version"]
