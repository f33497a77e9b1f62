#!/usr/bin/env bash
# Runs the benchmarks, each side by side in one run on this machine:
#   issuance  in-process issuance vs raw HSM signing, and the audit writer alone (1/8/64 callers)
#   grpc      the running appliance under h2load (8 x 1 and 64 in flight, audit on and off)
#             vs raw signing and vs cfssl's sign API (a software CA) at its best concurrency
# `--profile` also samples both appliances' CPU (the `profile` feature) and writes the hottest
# functions to target/bench-profile.txt (audit on) and target/bench-profile-audit-off.txt.
# Installs golang-cfssl and nghttp2-client (h2load) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ops/install-deps.sh golang-cfssl nghttp2-client
features=()
if [ "${1:-}" = "--profile" ]; then
    features=(--features profile)
    export BENCH_PROFILE="$PWD/target/bench-profile.txt"
    rm -f "$BENCH_PROFILE" "${BENCH_PROFILE%.txt}-audit-off.txt"
fi
cargo bench --locked "${features[@]}" --bench issuance
cargo bench --locked "${features[@]}" --bench grpc
