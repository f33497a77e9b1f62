#!/usr/bin/env bash
# Runs the whole hsm-ca test suite: unit tests and the integration tests against real SoftHSM
# tokens (each test makes its own), with openssl as the independent certificate verifier.
# Ends with one summary line: "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
ops/install-deps.sh
# The house rules first: formatting, the module graph, lints, and the dependency policy.
cargo fmt --check
python3 ops/check-modules.py
cargo clippy --locked --all-targets --quiet -- -D warnings
ops/deny.sh
cargo build --locked --all-targets --quiet
# The PKCS#11-only build (no `tpm` feature) links no libtss2.
ops/check-no-tpm.sh
# Every fuzz target builds (once) and runs for a few seconds from its seed corpus without a
# crash; `ops/fuzz.sh SECONDS` runs them longer.
ops/fuzz.sh "${FUZZ_SECONDS:-5}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
