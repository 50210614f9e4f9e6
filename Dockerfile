# syntax=docker/dockerfile:1
# One image for `meshplug operator` and `meshplug agent` (ENTRYPOINT ["meshplug"]).
# Build: docker build -t ghcr.io/meshplug/meshplug:0.1.0 .      (podman/buildah build work the same way)
#
# Both stages start from Debian's slim root and use Debian's python3 (3.11), so the whole image is Debian's
# packages plus meshplug's wheels. BASE is a build argument only so that the clean-room test
# (tests/integration/test_image_build.py) can build this file, unchanged, on a root debootstrapped here
# (scripts/install-debian-root.sh) where no registry serves debian:bookworm-slim.
#
# Stage 1 builds wheels: meshplug's (with the agent's compiled data path: setup.py builds the _wasmcall C
# extension, the HTTP/2 codec over libnghttp2 and the mypyc-compiled per-request modules, hence gcc, python3-dev
# and libnghttp2-dev in this stage only; the final stage has the library itself, libnghttp2-14), every
# dependency's, and pip's own. The final stage creates a venv without pip and installs the wheels into it with
# pip run from its wheel, offline, from a bind mount: no wheel, pip, compiler or source tree lands in the image.
ARG BASE=debian:bookworm-slim
ARG PIP_VERSION=26.3

FROM ${BASE} AS build
ARG PIP_VERSION
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev libnghttp2-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build && /opt/build/bin/python -m pip install -q "pip==${PIP_VERSION}"
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY meshplug ./meshplug
RUN /opt/build/bin/python -m pip wheel --wheel-dir /wheels . "pip==${PIP_VERSION}"

FROM ${BASE}
ARG PIP_VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/meshplug/bin:$PATH \
    MESHPLUG_CACHE=/var/cache/meshplug HOME=/tmp
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates libnghttp2-14 \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv --without-pip /opt/meshplug \
    && /opt/meshplug/bin/python "/wheels/pip-${PIP_VERSION}-py3-none-any.whl/pip" install -q --no-index --find-links /wheels meshplug \
    && mkdir -p /var/cache/meshplug /var/lib/meshplug \
    && chown 65532:65532 /var/cache/meshplug /var/lib/meshplug
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["meshplug"]
CMD ["version"]
