# syntax=docker/dockerfile:1
#
# leadscore's container image: `docker build -t leadscore .` (docker-compose.yml builds it too).
#
# Two stages: the build stage compiles the release binary (with librdkafka built from source by
# rdkafka-sys, hence cmake and a C++ compiler); the runtime stage is Debian slim with only the
# shared libraries the binary links (libssl3 for TLS to Kafka; zlib and glibc are in the base)
# and CA certificates, the binary, and the example model. It runs as an unprivileged user.
#
# Both stages are Debian 12 (bookworm), so the binary finds the glibc and OpenSSL it was linked
# against. scripts/test-ops checks that every library `ldd` lists for a local build of the same
# sources is provided by the runtime stage.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ libssl-dev pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
# The registry and target directories are BuildKit caches: a rebuild after a source change
# recompiles leadscore only, not its ~300 dependencies. The release profile keeps line tables
# (debug = 1, for profiling); the image drops them but keeps the symbols, so a panic's backtrace
# still names functions: 42 MB -> 9 MB.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin leadscore \
 && install -D -m 0755 target/release/leadscore /out/leadscore \
 && strip --strip-debug /out/leadscore

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 leadscore \
 && useradd --system --uid 10001 --gid leadscore --home-dir /app --shell /usr/sbin/nologin leadscore
COPY --from=build /out/leadscore /usr/local/bin/leadscore
COPY examples/model.toml /app/examples/model.toml
# The default model path (examples/model.toml) is relative to the working directory.
WORKDIR /app
USER 10001:10001
EXPOSE 9898
# The image's defaults listen on all interfaces (the binary's default is 127.0.0.1, unreachable
# from outside a container). Anything else comes from --config, LEADSCORE_* variables or flags;
# only the brokers are required: docker run leadscore run --brokers kafka:9092
ENV LEADSCORE_HTTP_LISTEN=0.0.0.0:9898
# /healthz answers 200 while the process lives. No curl in the image: bash's /dev/tcp. The port
# follows LEADSCORE_HTTP_LISTEN when it is changed. Containers that do not serve HTTP
# (`leadscore generate`) should disable the check (docker-compose.yml does).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${LEADSCORE_HTTP_LISTEN##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 2 status <&3 && [[ $status == 'HTTP/1.'[01]' 200'* ]]"]
ENTRYPOINT ["/usr/local/bin/leadscore"]
CMD ["run"]
