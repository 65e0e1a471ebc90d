# syntax=docker/dockerfile:1
#
# eso: one image, three binaries (`eso`, `payment`, `delivery`).
#
#   docker build -t eso:0.1.0 .
#   docker run --rm -p 3000:3000 eso:0.1.0            # the orchestrator (default)
#   docker run --rm -e DATABASE_URL=... -e NATS_URL=... eso:0.1.0 payment
#
# The command selects the binary; all three are on PATH. Needs BuildKit (the
# default builder of Docker 23+ and of `docker compose`) for the cache mounts.

ARG RUST_VERSION=1.95

############################ build ############################
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src

# Nothing to install: the slim Rust image has gcc and libc6-dev, SQLite is
# bundled by sqlx and TLS is rustls/ring (no OpenSSL).
COPY . .

# The cache mounts keep the registry and target/ between builds; the binaries
# are copied out in the same step because target/ is not part of the layer.
# `--bins` builds the default members' binaries: `eso` (package eso/) and
# `payment`, `delivery` (participants/). Saga definitions (sagas/definitions/*.toml)
# and migrations (one folder per owner, compiled into the binaries; the copy is
# for reading) are staged here so that an empty or missing folder does not break
# the COPY below.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bins \
 && mkdir -p /out/bin /out/sagas /out/migrations \
 && cp target/release/eso target/release/payment target/release/delivery /out/bin/ \
 && find sagas/definitions -maxdepth 1 -name '*.toml' -exec cp {} /out/sagas/ \; \
 && (cp -r migrations/. /out/migrations/ 2>/dev/null || true)

############################ run ############################
FROM debian:bookworm-slim AS runtime

# ca-certificates for TLS to managed Postgres/NATS/OTLP endpoints; curl for the
# container healthcheck (docker compose), nothing else.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 eso \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin eso \
 && mkdir -p /app/data \
 && chown 10001:10001 /app/data

COPY --from=builder /out/bin/ /usr/local/bin/
COPY --from=builder /out/sagas/ /app/sagas/
COPY --from=builder /out/migrations/ /app/migrations/

WORKDIR /app
# Without DATABASE_URL, eso keeps its embedded SQLite file in /app/data
# (mount a volume there to keep it). The binaries listen on loopback by
# default; in a container the port must be reachable from outside it.
ENV SAGAS_DIR=/app/sagas \
    ESO_SQLITE_PATH=/app/data/eso.db \
    BIND=0.0.0.0

USER 10001:10001
EXPOSE 3000 8080
STOPSIGNAL SIGTERM

# No HEALTHCHECK here: the port differs per binary (eso 3000, participants
# 8080 as compose and the chart set it), so docker-compose.yml declares one per service with curl, and
# Kubernetes uses its own probes on /healthz and /readyz.
CMD ["eso"]
