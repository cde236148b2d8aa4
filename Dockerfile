# thaw in a container: build in the Rust image, run as a non-root user with the data
# directory on a volume.
#
#   docker build -t thaw .
#   docker run -p 8080:8080 -v thaw-data:/var/lib/thaw -e THAW_ADMIN_TOKEN=... thaw
#
# The admin API listens on 8081 inside the container; publish it only where the token and a
# TLS proxy guard it. Metrics (no token) are on 9090.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# protoc: etcd's client (cluster mode) compiles etcd's gRPC definitions at build time.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
COPY . .
# The guest examples are not part of the image; the binary is.
RUN cargo build --release --locked -p thaw-cli

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/thaw --shell /usr/sbin/nologin thaw \
 && mkdir -p /var/lib/thaw && chown 10001:10001 /var/lib/thaw && chmod 700 /var/lib/thaw
COPY --from=build /src/target/release/thaw /usr/local/bin/thaw
USER 10001:10001
VOLUME ["/var/lib/thaw"]
EXPOSE 8080 8081 9090
ENV THAW_DATA_DIR=/var/lib/thaw
ENTRYPOINT ["/usr/local/bin/thaw", "serve"]
CMD ["--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:8081", "--metrics-listen", "0.0.0.0:9090", "--data-dir", "/var/lib/thaw"]
