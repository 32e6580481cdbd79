# tidewatch-collector: ingest, sink, signer, migrate, pki, query.
# Build from the repository root:
#   docker build -f deploy/docker/collector.Dockerfile -t tidewatch-collector .

FROM rust:1-bookworm AS build
WORKDIR /src
# cmake and a C toolchain build the bundled librdkafka; libssl-dev and
# pkg-config give it TLS and SASL/SCRAM.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY . .
# The same command as "Build from source" in the README.
RUN cargo build --release --locked -p tidewatch-collector \
    && install -m 0755 target/release/tidewatch-collector /tidewatch-collector

FROM debian:bookworm-slim
# CA certificates and OpenSSL: Kafka over TLS and ClickHouse over HTTPS.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 tidewatch \
    && useradd --system --uid 65532 --gid tidewatch --no-create-home --shell /usr/sbin/nologin tidewatch
COPY --from=build /tidewatch-collector /usr/local/bin/tidewatch-collector
USER 65532:65532
# 4443: sensors (mTLS gRPC); 4444: the signer (ingest only); 8086: plaintext
# gRPC health; 9100/9101: metrics.
EXPOSE 4443 4444 8086 9100 9101
ENTRYPOINT ["/usr/local/bin/tidewatch-collector"]
CMD ["--help"]
