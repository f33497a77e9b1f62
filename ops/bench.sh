#!/usr/bin/env bash
# Runs the benchmarks: in-process issuance vs raw HSM signing, and the running appliance over
# gRPC+TLS vs raw signing and vs cfssl (a software CA). Installs golang-cfssl when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ops/install-deps.sh golang-cfssl
cargo bench --locked --bench issuance
cargo bench --locked --bench grpc
