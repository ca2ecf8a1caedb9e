# syntax=docker/dockerfile:1
#
# rocketchat-shim as a container image:
#
#   docker build -t rocketchat-shim:0.1.0 .
#   docker run --rm --read-only --cap-drop ALL --security-opt no-new-privileges \
#     -v "$PWD/config.toml:/etc/rocketchat-shim/config.toml:ro" rocketchat-shim:0.1.0 check --online
#
# Two stages: the official Rust image compiles the release binary; the runtime image is
# distroless (glibc, libgcc and nothing else: no shell, no package manager) and runs it as
# the unprivileged user 65532. The shim writes nothing to disk (logs go to stdout, TLS roots
# are compiled in), so it runs with a read-only root filesystem; the config is mounted at
# /etc/rocketchat-shim/config.toml (ROCKETCHAT_SHIM_CONFIG below), the service-account token
# comes from the environment (ROCKETCHAT_SHIM_SERVICE_TOKEN), never from the image.
#
# Builder and runtime share Debian 12 (bookworm), so the binary's glibc is the one it runs on.
# Built with --no-default-features: the `demo` command and the stand-in Rocket.Chat it embeds
# are left out of the production image.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
# Only what the build reads (.dockerignore keeps the rest, target/ included, out of the context).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY standin/Cargo.toml ./standin/Cargo.toml
COPY standin/src ./standin/src
# Cargo.toml declares these bench targets; the manifest does not load without their files.
COPY benches ./benches
# The registry and target directories are BuildKit caches, so a rebuild after a source change
# recompiles the shim, not its dependencies; the binary is copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin rocketchat-shim \
 && install -D -m 0755 target/release/rocketchat-shim /out/rocketchat-shim

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/rocketchat-shim /usr/local/bin/rocketchat-shim
ENV ROCKETCHAT_SHIM_CONFIG=/etc/rocketchat-shim/config.toml
# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
# Client port and admin port (/livez, /readyz, /metrics), as in deploy/kubernetes/.
EXPOSE 8080 9090
# SIGTERM drains (server.shutdown_grace); no init needed: the shim reaps nothing.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/rocketchat-shim"]
