# The GPU worker image: candle built with the `cuda` feature on a CUDA base. Build from the
# repository root on any machine (no GPU needed to build):
#   docker build -f images/worker-gpu.Dockerfile -t aigc-operator/worker-gpu:0.1.0 .
# CUDA_COMPUTE_CAP picks the GPU generation the kernels are compiled for (80 = A100, 90 = H100).
ARG RUST_VERSION=1.89
ARG CUDA_VERSION=12.4.1

FROM rust:${RUST_VERSION}-slim-bookworm AS toolchain

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS build
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:${PATH}
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY --from=toolchain /usr/local/rustup /usr/local/rustup
COPY --from=toolchain /usr/local/cargo /usr/local/cargo
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p aigc-worker --features cuda \
    && install -D -m 0755 target/release/aigc-worker /out/aigc-worker

# The runtime flavour carries cuBLAS and cuRAND, which candle links, without the compilers.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04 AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/aigc-worker /usr/local/bin/aigc-worker
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/aigc-worker"]
CMD ["serve"]
