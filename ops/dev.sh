#!/usr/bin/env bash
# Starts the hsm-ca development appliance on an embedded SoftHSM token under ./hsm-ca-dev
# (created on first start, reused afterwards). Extra arguments go to `hsm-ca dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
ops/install-deps.sh
exec cargo run --locked --quiet --bin hsm-ca -- dev "$@"
