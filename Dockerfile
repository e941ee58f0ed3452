# hookrelay: build in the Rust image, run in a slim Debian one.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/hookrelay

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /data --create-home hookrelay
COPY --from=build /src/target/release/hookrelay /usr/local/bin/hookrelay
USER hookrelay
WORKDIR /data
ENV HOOKRELAY_LISTEN=0.0.0.0:8080 \
    HOOKRELAY_LOG_FORMAT=json
EXPOSE 8080
# No curl in the image: hookrelay asks its own /readyz. A worker serves it too.
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 \
    CMD ["hookrelay", "healthcheck"]
ENTRYPOINT ["hookrelay"]
CMD ["serve"]
