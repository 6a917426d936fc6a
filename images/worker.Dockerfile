# The CPU worker image (inference, training, dataset prepare, data mover). Build from the
# repository root:
#   docker build -f images/worker.Dockerfile -t aigc-operator/worker:0.1.0 .
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p aigc-worker \
    && install -D -m 0755 target/release/aigc-worker /out/aigc-worker

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/aigc-worker /usr/local/bin/aigc-worker
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/aigc-worker"]
CMD ["serve"]
