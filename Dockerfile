# Build: the whole workspace in release mode.
FROM rust:1.95-slim-bookworm AS build
# cmake and g++ build whisper.cpp and libopus (the offline transcription engine).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY .cargo .cargo
COPY Cargo.toml Cargo.lock ./
COPY migrations migrations
COPY src src
COPY benches benches
COPY tests/common tests/common
# Every binary: `beep` (all services) and `beep-<service>` (one each, deploy/docker-compose.yml).
RUN cargo build --release --locked --features whisper --bins \
 && for bin in beep beep-auth beep-core beep-heartbeat beep-pictures beep-permissions beep-bites; do \
      strip "target/release/$bin"; done

# Run: a small Debian with CA certificates (for S3, SMS and SMTP over TLS) and a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data beep \
 && mkdir -p /data /etc/beep \
 && chown beep /data
COPY --from=build /src/target/release/beep /src/target/release/beep-auth \
     /src/target/release/beep-core /src/target/release/beep-heartbeat \
     /src/target/release/beep-pictures /src/target/release/beep-permissions \
     /src/target/release/beep-bites /usr/local/bin/
USER beep
WORKDIR /data
VOLUME /data
ENV BEEP_SERVER__LISTEN=0.0.0.0:8080 \
    BEEP_SERVER__DATA_DIR=/data \
    BEEP_TELEMETRY__LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["beep"]
CMD ["serve"]
