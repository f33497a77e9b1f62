#!/usr/bin/env bash
# Builds the Debian package: hsm-ca_<version>_<arch>.deb and SHA256SUMS in the output folder.
#
#   ops/package.sh [--bin PATH] [--out DIR] [--fast]
#
# Without --bin it builds the release binary (`cargo build --release --locked`). --fast
# compresses with gzip -1 instead of xz (for tests). The package
# holds the binary (/usr/bin/hsm-ca), the systemd unit, the example configurations
# (/usr/share/doc/hsm-ca/examples), the man page and bash/zsh/fish completions made by
# `hsm-ca generate`. Installing it creates the `hsm-ca` system user, /etc/hsm-ca (root:hsm-ca,
# 0750) and /var/lib/hsm-ca (hsm-ca, 0700); it starts nothing: the service needs a
# configuration, a PIN and an installed intermediate first (ops/systemd/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=""
out="target/package"
compression=(-Zxz)
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --fast) compression=(-Zgzip -z1); shift ;;
    *) echo "usage: ops/package.sh [--bin PATH] [--out DIR] [--fast]" >&2; exit 2 ;;
  esac
done
if [ -z "$bin" ]; then
  cargo build --release --locked --bin hsm-ca
  bin=target/release/hsm-ca
fi
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
arch="$(dpkg --print-architecture)"
name="hsm-ca_${version}_${arch}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

install -D -m 0755 "$bin" "$root/usr/bin/hsm-ca"
# The unit as in ops/systemd, pointing at the packaged binary.
install -d "$root/lib/systemd/system"
sed 's#/usr/local/bin/hsm-ca#/usr/bin/hsm-ca#' ops/systemd/hsm-ca.service \
  > "$root/lib/systemd/system/hsm-ca.service"
chmod 0644 "$root/lib/systemd/system/hsm-ca.service"
docs="$root/usr/share/doc/hsm-ca"
install -d "$docs/examples"
install -m 0644 hsm-config/*.toml "$docs/examples/"
install -m 0644 README.md SECURITY.md "$docs/"
install -m 0644 ops/systemd/README.md "$docs/systemd.md"
cat > "$docs/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: hsm-ca
License: Apache-2.0

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
"$bin" generate man --out "$root/usr/share/man/man1" >/dev/null
gzip -9n "$root/usr/share/man/man1/hsm-ca.1"
"$bin" generate completions --shell bash --out "$root/usr/share/bash-completion/completions" >/dev/null
"$bin" generate completions --shell zsh --out "$root/usr/share/zsh/vendor-completions" >/dev/null
"$bin" generate completions --shell fish --out "$root/usr/share/fish/vendor_completions.d" >/dev/null
install -d -m 0750 "$root/etc/hsm-ca"

install -d "$root/DEBIAN"
# The Debian packages of the shared libraries the binary links.
depends="$(for lib in $(ldd "$bin" | awk '/=> \//{print $3}'); do
    dpkg -S "$lib" 2>/dev/null || dpkg -S "$(realpath "$lib")" 2>/dev/null || true
  done | cut -d: -f1 | sort -u | paste -sd, | sed 's/,/, /g')"
cat > "$root/DEBIAN/control" <<CONTROL
Package: hsm-ca
Version: ${version}
Architecture: ${arch}
Maintainer: hsm-ca maintainers <hsm-ca@localhost>
Section: admin
Priority: optional
Depends: ${depends}
Recommends: openssl
Suggests: softhsm2, swtpm
Installed-Size: $(du -sk "$root" | cut -f1)
Homepage: https://github.com/hsm-ca/hsm-ca
Description: certificate authority whose signing keys never leave an HSM or TPM
 Serves Istio's certificate API (istio.v1.auth.IstioCertificateService) and an
 mTLS admin API; CA keys are generated in and sign through a PKCS#11 HSM or a
 TPM 2.0; every decision lands in a tamper-evident audit log.
CONTROL
cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd hsm-ca >/dev/null; then
    adduser --system --group --home /var/lib/hsm-ca --no-create-home \
      --shell /usr/sbin/nologin hsm-ca >/dev/null
  fi
  install -d -m 0700 -o hsm-ca -g hsm-ca /var/lib/hsm-ca
  chown root:hsm-ca /etc/hsm-ca
  chmod 0750 /etc/hsm-ca
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
  fi
fi
POSTINST
cat > "$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
# The CA state and audit log in /var/lib/hsm-ca are kept, also on purge: they are records.
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
fi
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

dpkg-deb "${compression[@]}" --root-owner-group --build "$root" "$out/$name.deb" >/dev/null
(cd "$out" && sha256sum "$name.deb" > SHA256SUMS)
echo "$out/$name.deb"
