#!/usr/bin/env bash
# The dependency policy in deny.toml, checked offline: licenses, duplicate crate versions,
# sources. Installs cargo-deny (pinned, --locked) into ~/.cargo/bin when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
  echo "installing cargo-deny $CARGO_DENY_VERSION" >&2
  cargo install --quiet --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi
cargo fetch --locked --quiet
cargo deny --offline check licenses bans sources
