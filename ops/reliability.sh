#!/usr/bin/env bash
# The reliability figures a security team asks for, each from a real run of the dev appliance
# (release build): kill -9 under load, descriptor exhaustion, a full disk, device loss, an idle
# connection flood, an admin refusal flood, memory under saturating load (h2load) and the start
# time that load leaves. Prints one row per figure with its promise and exits non-zero when a
# promise is broken. Arguments go to ops/reliability.py (--only kill9 ...,
# --kills N, --idle-secs N). The disk scenario needs root (a small tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
ops/install-deps.sh util-linux nghttp2-client
cargo build --locked --release --quiet --bin hsm-ca
exec python3 ops/reliability.py --bin target/release/hsm-ca "$@"
