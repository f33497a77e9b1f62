#!/usr/bin/env bash
# The PKCS#11-only build: `cargo build --no-default-features` (without the `tpm` feature)
# links no libtss2, and that binary refuses a TPM config with an error naming the key.
# Builds in the usual target directory (only hsm-ca itself is compiled again, about a minute)
# and builds the default binary again at the end, so target/debug/hsm-ca is the full one.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
out="$(mktemp -d)"
trap 'rm -rf "$out"; cargo build --locked --quiet --bin hsm-ca' EXIT
cargo build --locked --quiet --no-default-features --bin hsm-ca
cp "$target/debug/hsm-ca" "$out/hsm-ca"
if ldd "$out/hsm-ca" | grep -i tss2; then
  echo "FAIL: the --no-default-features binary links libtss2" >&2
  exit 1
fi
if "$out/hsm-ca" --config hsm-config/tpm.toml config check >"$out/stdout" 2>"$out/stderr"; then
  echo "FAIL: the --no-default-features binary accepted hsm-config/tpm.toml" >&2
  exit 1
fi
if ! grep -q 'keystore.backend.*without TPM support' "$out/stderr"; then
  echo "FAIL: the refusal of a TPM config does not name keystore.backend:" >&2
  cat "$out/stderr" >&2
  exit 1
fi
"$out/hsm-ca" --config hsm-config/softhsm.toml config check >/dev/null
echo "no-tpm build: no libtss2 linked; a TPM config is refused; PKCS#11 configs check"
