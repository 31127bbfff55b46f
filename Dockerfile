# syntax=docker/dockerfile:1.7
# One image, one binary: `sdplane router`, `sdplane controller --backend kubernetes` and
# `sdplane replica` are the same image with different arguments (see charts/sdplane).
#
#   docker build -t sdplane:0.1.0 .                       # CPU replicas
#   docker build -t sdplane:0.1.0-cuda \
#     --build-arg BUILDER_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04 \
#     --build-arg FEATURES=cuda --build-arg CUDA_COMPUTE_CAP=90 .
#
# The CUDA build needs nvcc at build time (the devel image) and the CUDA runtime libraries at run
# time; the driver comes from the node through the NVIDIA container toolkit.

ARG RUST_VERSION=1.95
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS build
ARG RUST_VERSION
ARG FEATURES=""
# candle-kernels compiles for this compute capability when there is no GPU to ask (9.0: H100).
ARG CUDA_COMPUTE_CAP=90
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    PATH=/usr/local/cargo/bin:/root/.cargo/bin:${PATH}
# The rust image has cargo; a CUDA devel image gets a minimal toolchain of the same version.
RUN if ! command -v cargo >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
      && rm -rf /var/lib/apt/lists/* \
      && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"; \
    fi
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sdplane ${FEATURES:+--features ${FEATURES}} \
    && install -D -m 0755 target/release/sdplane /out/sdplane

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sdplane \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sdplane
COPY --from=build /out/sdplane /usr/local/bin/sdplane
# Numeric user so Kubernetes can verify `runAsNonRoot` (uid 10001, as the chart's securityContext).
USER 10001:10001
# router, controller admin API, replica
EXPOSE 8000 8001 9000
ENTRYPOINT ["sdplane"]
CMD ["--help"]
