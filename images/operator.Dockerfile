# The operator image. Build from the repository root:
#   docker build -f images/operator.Dockerfile -t aigc-operator/operator:0.1.0 .
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p aigc-operator \
    && install -D -m 0755 target/release/aigc-operator /out/aigc-operator

FROM debian:bookworm-slim AS runtime
# CA roots for TLS to the API server and to S3 endpoints; nothing else.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/aigc-operator /usr/local/bin/aigc-operator
# A numeric user, so runAsNonRoot can verify it without a passwd entry.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/aigc-operator"]
CMD ["run"]
