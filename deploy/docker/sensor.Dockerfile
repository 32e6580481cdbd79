# tidewatch-sensor, for ship boxes that run containers (most run the binary
# under systemd instead: deploy/systemd/).
# Build from the repository root:
#   docker build -f deploy/docker/sensor.Dockerfile -t tidewatch-sensor .
# Run with the capture capability only and the state on a volume:
#   docker run --network host --cap-drop ALL --cap-add NET_RAW \
#     -v tidewatch-state:/var/lib/tidewatch-sensor -v /etc/tidewatch:/etc/tidewatch:ro \
#     tidewatch-sensor run --interface eth1 --collector https://ingest.example:4443 \
#     --ca /etc/tidewatch/ca.pem --cert /etc/tidewatch/sensor.pem --key /etc/tidewatch/sensor-key.pem

FROM rust:1-bookworm AS build
WORKDIR /src
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpcap-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .
# The same command as "Build from source" in the README.
RUN cargo build --release --locked -p tidewatch-sensor \
    && install -m 0755 target/release/tidewatch-sensor /tidewatch-sensor

FROM debian:bookworm-slim
COPY --from=build /tidewatch-sensor /usr/local/bin/tidewatch-sensor
# libpcap for capture; ieee-data for asset vendors (the OUI registry).
# The binary gets CAP_NET_RAW as a file capability, so the non-root user can
# capture when the container keeps NET_RAW (and nothing else).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpcap0.8 ieee-data ca-certificates libcap2-bin \
    && setcap cap_net_raw=ep /usr/local/bin/tidewatch-sensor \
    && apt-get purge -y libcap2-bin \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 tidewatch \
    && useradd --system --uid 65532 --gid tidewatch --no-create-home --shell /usr/sbin/nologin tidewatch \
    && install -d -o tidewatch -g tidewatch -m 0750 /var/lib/tidewatch-sensor
USER 65532:65532
VOLUME ["/var/lib/tidewatch-sensor"]
ENV TIDEWATCH_STATE_DIR=/var/lib/tidewatch-sensor
ENTRYPOINT ["/usr/local/bin/tidewatch-sensor"]
CMD ["--help"]
