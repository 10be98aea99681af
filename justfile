# Every workflow of the shop. `just --list` shows them all.
# Tools (just, nats-server, grpcurl, buf, Postgres) come from .tools/,
# installed from pinned versions by `just bootstrap`.

set shell := ["bash", "-euo", "pipefail", "-c"]

root := justfile_directory()
export PATH := root / ".tools/bin" + ":" + root / ".tools/pg/bin" + ":" + env_var('PATH')

# services the local stack runs
services := "users,catalog,inventory,payments,orders,notifications,analytics"

# show the recipes
default:
    @just --list

# install the pinned tools into .tools/ (fast when already there)
bootstrap:
    python3 libs/testkit/bootstrap.py

# the whole system on this machine: Postgres, NATS, every service, a demo catalog; Ctrl-C stops it
up: bootstrap
    @echo "==> building the services (the first build takes a few minutes)"
    cargo build --bins
    @echo "==> starting the stack"
    exec target/debug/shop-stack --services {{services}} --replicas catalog=2

# every check CI runs: format, lints, contracts, unit, integration and end-to-end tests
test: bootstrap lint unit integration

# formatting, clippy with warnings denied, buf lint and format of the contracts
lint: fmt-check clippy buf-lint

# fail if any file is not rustfmt-formatted
fmt-check:
    cargo fmt --all -- --check

# format every crate
fmt:
    cargo fmt --all
    cd proto && buf format -w

# clippy on every target, warnings are errors
clippy:
    cargo clippy --workspace --all-targets -- -D warnings

# lint and format-check the .proto contracts
buf-lint:
    cd proto && buf lint && buf format -d --exit-code && buf build -o /dev/null

# unit tests (no external processes)
unit:
    cargo test --workspace --lib --bins

# API tests per service (real Postgres) and end-to-end suites in tests/ (real processes)
integration:
    cargo build --workspace --bins
    cargo test --workspace --test '*'

# the README's grpcurl examples against a running `just up`
demo:
    bash tests/readme_examples.sh

# benchmarks (not tests): `just bench mesh` compares bare tonic, the full mesh and an haproxy sidecar path
bench what="mesh":
    @test "{{what}}" = mesh || (echo "unknown benchmark {{what}}; known: mesh" && exit 2)
    command -v haproxy >/dev/null || (apt-get update -qq && apt-get install -y -qq haproxy)
    cargo build --release -p shop-bench
    taskset -c 0 target/release/shop-bench mesh --conns 16 --streams 1 --out target/bench/mesh-16x1.txt
    taskset -c 0 target/release/shop-bench mesh --conns 16 --streams 10 --out target/bench/mesh-16x10.txt
