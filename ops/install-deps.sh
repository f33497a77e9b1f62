#!/usr/bin/env bash
# Installs the system packages hsm-ca's development appliance and tests need, when missing:
# SoftHSM (the PKCS#11 token), openssl (the independent verifier), protoc (the gRPC code
# generator the build runs), the TPM 2.0 software stack the build links (libtss2-dev, found
# with pkg-config), swtpm (the software TPM the tests and `dev --backend tpm` start),
# PostgreSQL (the tests of the `postgres` state backend start their own servers with it),
# promtool (in Debian's `prometheus` package: the tests check the alert rules in
# ops/prometheus/ and the /metrics text with it), Debian's python3-prometheus-client (its
# text parser reads /metrics in the tests, run with /usr/bin/python3) and python3-venv, for the
# virtual environment with hvac that the Vault front-door test uses (made by
# ops/hvac-venv.sh, run at the end), and the ACME front door's real clients: lego, certbot and
# pebble (whose pebble-challtestsrv is the tests' mock DNS server and http-01 responder; curl
# sets its records). Extra package names given as arguments are installed too.
set -euo pipefail

need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/struct.proto ] || need+=(libprotobuf-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists tss2-esys 2>/dev/null || need+=(libtss2-dev)
command -v swtpm >/dev/null 2>&1 || need+=(swtpm)
command -v swtpm_setup >/dev/null 2>&1 || need+=(swtpm-tools)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
/usr/bin/python3 -c 'import prometheus_client.parser' >/dev/null 2>&1 || need+=(python3-prometheus-client)
dpkg -s python3-venv >/dev/null 2>&1 || need+=(python3-venv)
command -v lego >/dev/null 2>&1 || need+=(lego)
command -v certbot >/dev/null 2>&1 || need+=(certbot)
command -v pebble-challtestsrv >/dev/null 2>&1 || need+=(pebble)
command -v curl >/dev/null 2>&1 || need+=(curl)
for extra in "$@"; do
  dpkg -s "$extra" >/dev/null 2>&1 || need+=("$extra")
done

if [ "${#need[@]}" -ne 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
"$(dirname "$0")/hvac-venv.sh" >/dev/null
