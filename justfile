# Every workflow of the shop. `just --list` shows them all.
# Tools (just, nats-server, grpcurl, buf, Postgres) come from .tools/,
# installed from pinned versions by `just bootstrap`.

set shell := ["bash", "-euo", "pipefail", "-c"]

root := justfile_directory()
export PATH := root / ".tools/bin" + ":" + root / ".tools/pg/bin" + ":" + env_var('PATH')

# services the local stack runs
services := "users,catalog,inventory,payments,orders,notifications,analytics,gateway"

# show the recipes
default:
    @just --list

# install the pinned tools into .tools/ (fast when already there)
bootstrap:
    python3 libs/testkit/bootstrap.py

# `just up release` builds and runs release binaries instead of debug ones (what `just load-capacity` measures).
# the whole system on this machine: Postgres, NATS, every service, a demo catalog; Ctrl-C stops it
up profile="debug": bootstrap web
    @case "{{profile}}" in debug|release) ;; *) echo "unknown profile {{profile}}; known: debug, release"; exit 2;; esac
    @echo "==> building the services (the first build takes a few minutes)"
    cargo build {{ if profile == "release" { "--release " } else { "" } }}--bins
    @echo "==> starting the stack"
    exec target/{{profile}}/shop-stack --services {{services}} --replicas catalog=2

# every check CI runs: format, lints, contracts, unit, integration and end-to-end tests
test: bootstrap lint unit clients web integration

# formatting, clippy with warnings denied, buf lint, format and breaking of the contracts
lint: fmt-check clippy buf-lint buf-breaking deny k8s-validate openapi

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

# the contracts stay wire-compatible with proto/baseline.binpb (a buf image of them as of
# commit fd3688e); the check is itself checked: a renumbered field in a copy must fail it
buf-breaking:
    cd proto && buf breaking --against baseline.binpb
    tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT && cp -r proto/. "$tmp" \
      && sed -i 's/string product_name = 6;/string product_name = 16;/' "$tmp/shop/orders/v1/orders.proto" \
      && grep -q 'product_name = 16;' "$tmp/shop/orders/v1/orders.proto" \
      && ! (cd "$tmp" && buf breaking --against baseline.binpb > /dev/null 2>&1) \
      && echo "buf breaking: compatible with the baseline; a renumbered field is caught"

# licenses, bans and sources of every dependency (deny.toml), offline; cargo-deny is
# installed pinned into .tools/cargo. Advisories need the network: see docs/security.md.
deny:
    @(test -x .tools/cargo/bin/cargo-deny && .tools/cargo/bin/cargo-deny --version | grep -q '0\.20\.2') \
      || cargo install cargo-deny --version 0.20.2 --locked --root .tools/cargo
    .tools/cargo/bin/cargo-deny check --hide-inclusion-graph licenses bans sources

# tests/deploy.rs checks the manifests further and boots every service from them.
# the kind overlay rendered offline, validated against the Kubernetes 1.32 schemas (strict)
k8s-validate:
    kubectl kustomize k8s/overlays/kind | kubernetes-validate --strict -k 1.32 --quiet -
    @echo "k8s/overlays/kind: valid for Kubernetes 1.32"

# `cargo run -p shop-http --bin shop-openapi -- write docs/openapi` regenerates them.
# the OpenAPI documents in docs/openapi are those of the contracts, and valid OpenAPI 3.1
openapi:
    cargo run -q -p shop-http --bin shop-openapi -- check docs/openapi
    openapi-spec-validator --schema 3.1 --validation-errors all docs/openapi/*.json

# every service's image (one Dockerfile, `--build-arg SERVICE=`): needs a Docker engine
images tag="dev":
    @docker info > /dev/null 2>&1 || { echo "just images needs a Docker engine (docker info failed): there is none on this machine" >&2; exit 1; }
    for s in {{replace(services, ",", " ")}}; do docker build --build-arg SERVICE=$s -t shop/$s:{{tag}} .; done

# Images built and `kind load`ed, Secrets minted by shop-secrets, every rollout waited for.
# a kind cluster running k8s/overlays/kind (needs kind, kubectl and a Docker engine)
kind-up: bootstrap
    @command -v kind > /dev/null || { echo "just kind-up needs kind (https://kind.sigs.k8s.io) and a Docker engine" >&2; exit 1; }
    @docker info > /dev/null 2>&1 || { echo "just kind-up needs a Docker engine (docker info failed)" >&2; exit 1; }
    kind get clusters | grep -qx shop || kind create cluster --name shop --config k8s/kind/cluster.yaml
    just images dev
    for s in {{replace(services, ",", " ")}}; do kind load docker-image --name shop shop/$s:dev; done
    kubectl create namespace shop --dry-run=client -o yaml | kubectl apply -f -
    cargo build -p shop-testkit --bin shop-secrets
    # Minted once per cluster and never replaced: Postgres's volume keeps the first
    # passwords, and NATS the first certificate. `just kind-down` starts afresh.
    test -d target/kind-secrets || target/debug/shop-secrets target/kind-secrets
    for d in target/kind-secrets/*; do n="$(basename "$d")"; [ "$n" = operator-identity ] && continue; kubectl -n shop get secret "$n" > /dev/null 2>&1 || kubectl -n shop create secret generic "$n" --from-file="$d"; done
    kubectl apply -k k8s/overlays/kind
    kubectl -n shop rollout status statefulset/postgres statefulset/nats --timeout=300s
    for s in {{replace(services, ",", " ")}}; do kubectl -n shop rollout status deployment/$s --timeout=300s; done
    @echo "gateway: 127.0.0.1:8443 (TLS; its CA is target/kind-secrets/gateway-identity/ca.crt)"
    @echo "try: grpcurl -cacert target/kind-secrets/gateway-identity/ca.crt 127.0.0.1:8443 list"

# delete the kind cluster of `just kind-up`
kind-down:
    @command -v kind > /dev/null || { echo "just kind-down needs kind" >&2; exit 1; }
    kind delete cluster --name shop
    rm -rf target/kind-secrets

# unit tests (no external processes), and the events library's doctests: one of them
# must not compile (a handler registered for an event type it does not handle)
unit:
    cargo test --workspace --lib --bins
    cargo test -p shop-events --doc

# Every build here has the tests' feature set (dev-dependencies unify features, so bins
# built alone would compile the whole tree a second time). The second build only adds
# the payments-failpoints binary; the test run then puts the plain payments binary back.
# API tests per service (real Postgres) and end-to-end suites in tests/ (real processes)
integration:
    cargo build --workspace --bins --tests
    cargo build --workspace --tests --features payments/failpoints --bin payments-failpoints
    cargo test --workspace --test '*'

# the grpcurl walkthrough of README.md and docs/ (tests/readme_examples.sh --list) against a running `just up`
demo:
    bash tests/readme_examples.sh

# benchmarks (not tests): `just bench mesh` compares bare tonic, the full mesh, Envoy sidecars (Istio's placement, the mesh's policy rendered) and HAProxy hops, each plaintext and with mTLS;
# `just bench saga` measures the order saga on release binaries against the ceiling of its own Postgres (fsync on);
# `just bench overload` pushes the shop through its gateway at 0.5x to 3x the capacity it measures first (release binaries);
# `just bench http` sends the same reads and orders through gRPC, the gateway's REST/JSON and Envoy's transcoder in front of its gRPC port, interleaved (release binaries);
# `just bench resilience` kills, freezes, slows, fails, restarts and overloads three replicas under load through the mesh, Envoy sidecars and bare tonic
bench what="mesh": bootstrap
    @case "{{what}}" in mesh|saga|overload|resilience|http) ;; *) echo "unknown benchmark {{what}}; known: mesh, saga, overload, resilience, http"; exit 2;; esac
    @just _bench-{{what}}

_bench-mesh:
    command -v haproxy >/dev/null || (apt-get update -qq && apt-get install -y -qq haproxy)
    cargo build --release -p shop-bench
    taskset -c 0 target/release/shop-bench mesh --conns 16 --streams 1 --out target/bench/mesh-16x1.txt
    taskset -c 0 target/release/shop-bench mesh --conns 16 --streams 10 --out target/bench/mesh-16x10.txt

_bench-saga:
    cargo build --release --workspace --bins
    SHOP_BIN_DIR={{root}}/target/release target/release/saga-bench --out target/bench/saga.txt --svg target/bench/saga.svg

_bench-resilience:
    cargo build --release -p shop-bench --bins
    taskset -c 0 target/release/shop-resilience --out target/bench/resilience.txt --svg target/bench/resilience.svg

_bench-http:
    cargo build --release --workspace --bins
    SHOP_BIN_DIR={{root}}/target/release target/release/shop-http-bench --out target/bench/http.txt

_bench-overload:
    cargo build --release --workspace --bins
    SHOP_BIN_DIR={{root}}/target/release target/release/shop-overload --out target/bench/overload.txt --svg target/bench/overload.svg

# (open loop: sign-ups, log-ins, browsing, orders with every payment outcome, details) at
# `rate` actions/s for `secs` s; per RPC availability, p50/p99 against the service catalog's
# SLOs, and p99 over time: target/load/report.txt and latency.svg
# end users' traffic through the gateway of a running `just up`, reported against the SLOs
load rate="20" secs="60": bootstrap
    cargo build --release -p shop-bench --bin shop-load
    target/release/shop-load --rate {{rate}} --secs {{secs}}

# Open-loop steps of 30 s from 20 actions/s, x1.5 each while every SLO is met (availability and p99 of
# every RPC, no action dropped), then 3 bisections between the highest rate met and the lowest missed;
# at most 16 steps and 20 minutes. Reports the capacity, the RPCs at it and at the miss above it, the CPU
# of each process of the stack per step, and p99 by offered rate: target/load/capacity.txt and capacity.svg.
# Flags pass through, e.g. `just load-capacity --from 5 --step-secs 20`.
# the gateway's capacity, the highest offered rate with every SLO met, against a running `just up [release]`
load-capacity *flags: bootstrap
    cargo build --release -p shop-bench --bin shop-load
    target/release/shop-load --find-capacity {{flags}}

# generate the gateway's Python and TypeScript clients and build their programs (tests/clients; fast when up to date)
clients: bootstrap
    bash tests/clients/generate.sh

# the storefront (web/): npm ci, its client generated from proto/, a type check and the esbuild
# bundle in web/dist/storefront, which the gateway serves at `/` (tests/storefront.rs drives it
# in headless Chromium)
web: clients
    bash web/build.sh

# run the client programs against a running gateway over TLS, e.g. `just clients-run 127.0.0.1:PORT`
clients-run target ca=".stack/pki/ca.crt": clients
    .tools/venv/bin/python tests/clients/python/shop_client.py --target {{target}} --ca {{ca}}
    .tools/venv/bin/python tests/clients/python/failures.py --target {{target}} --ca {{ca}}
    node tests/clients/ts/dist/src/client.js --target {{target}} --ca {{ca}}
    node tests/clients/ts/dist/src/failures.js --target {{target}} --ca {{ca}}
