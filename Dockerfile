# syntax=docker/dockerfile:1
# Every service's image from one Dockerfile:
#   docker build --build-arg SERVICE=orders -t shop/orders:dev .
# (`just images` builds all of them). The dependency layer is cached apart
# from the sources: cargo-chef records what the workspace depends on, so an
# edit to a service recompiles the workspace's crates only.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /src

# The dependency graph only (manifests and lock file), not the sources.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
# The services' binaries, in release; migrations and protos are compiled in.
RUN cargo build --release --locked \
      -p users -p catalog -p inventory -p orders -p payments \
      -p notifications -p analytics -p gateway \
    && mkdir /out \
    && for s in users catalog inventory orders payments notifications analytics gateway; do \
         cp target/release/$s /out/; done

# The one binary asked for: an unset or unknown SERVICE fails the build here.
FROM build AS picked
ARG SERVICE
RUN test -n "$SERVICE" && test -x "/out/$SERVICE" \
    || { echo "--build-arg SERVICE= one of: $(ls /out)" >&2; exit 1; }

# A minimal base: glibc and CA certificates, no shell, no package manager;
# uid 65532 (`nonroot`). The manifests mount the root filesystem read-only.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG SERVICE
COPY --from=picked /out/${SERVICE} /usr/local/bin/service
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/service"]
