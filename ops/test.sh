#!/usr/bin/env bash
# Runs the whole hsm-ca test suite: unit tests and the integration tests against real SoftHSM
# tokens (each test makes its own), with openssl as the independent certificate verifier.
set -euo pipefail
cd "$(dirname "$0")/.."
ops/install-deps.sh
cargo build --locked --benches --quiet
exec cargo test --locked "$@"
