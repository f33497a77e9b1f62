"""Drives hsm-ca's Vault front door with hvac, HashiCorp's Vault client library, the way
SPIRE, cert-manager and operators' scripts use it: logs in by cert, kubernetes and approle,
looks up and renews its token, signs an intermediate and leaves, reads the CA and the CRL, and
checks that refusals raise the exceptions Vault's status codes map to. Run by vault_hvac.rs,
which gives the inputs in environment variables and checks the certificates written to $OUT
with openssl. Secrets come from files; none is printed."""

import json
import os
import sys

import hvac
from hvac import exceptions

env = os.environ
addr, ca = env["VAULT_ADDR"], env["VAULT_CACERT"]
read = lambda name: open(env[name]).read()
out = {}


def refused(exc, call):
    try:
        call()
    except exc as e:
        return str(e)
    sys.exit(f"expected {exc.__name__}")


anonymous = hvac.Client(url=addr, verify=ca)
health = anonymous.sys.read_health_status(method="GET")
assert health["initialized"] and not health["sealed"], health

# cert: the SPIRE server's client certificate, role "spire".
spire = hvac.Client(url=addr, verify=ca, cert=(env["CLIENT_CERT"], env["CLIENT_KEY"]))
spire.auth.cert.login(name="spire", cert_pem=env["CLIENT_CERT"], key_pem=env["CLIENT_KEY"])
assert spire.is_authenticated()
me = spire.auth.token.lookup_self()["data"]
assert me["policies"] == ["spire-upstream"] and me["renewable"], me
renewed = spire.auth.token.renew_self(increment=300)
assert renewed["auth"]["client_token"] == spire.token
signed = spire.secrets.pki.sign_intermediate(
    csr=read("SPIRE_CSR"),
    common_name="",
    extra_params={"organization": "SPIFFE", "country": "US", "ttl": "3600"},
)
out["intermediate"] = signed["data"]

# kubernetes: cert-manager's service account.
cm = hvac.Client(url=addr, verify=ca)
cm.auth.kubernetes.login(role="cert-manager", jwt=read("K8S_JWT").strip())
leaf = cm.secrets.pki.sign_certificate(
    name="mesh-gateways",
    csr=read("GW_CSR"),
    common_name="gw.mesh.example.com",
    extra_params={"alt_names": "gw.mesh.example.com", "ttl": "2160h0m0s",
                  "exclude_cn_from_sans": True},
)
out["leaf"] = leaf["data"]
out["wrong_domain"] = refused(exceptions.InvalidRequest, lambda: cm.secrets.pki.sign_certificate(
    name="mesh-gateways", csr=read("BAD_CSR"), common_name="www.example.net"))
out["no_grant"] = refused(exceptions.Forbidden, lambda: cm.secrets.pki.sign_intermediate(
    csr=read("SPIRE_CSR"), common_name=""))

# approle: role id, secret id from its file.
ci = hvac.Client(url=addr, verify=ca)
ci.auth.approle.login(role_id=env["APPROLE_ID"], secret_id=read("APPROLE_SECRET_FILE").strip())
out["approle_leaf"] = ci.secrets.pki.sign_certificate(
    name="mesh-gateways", csr=read("GW_CSR"), common_name="gw.mesh.example.com")["data"]
out["bad_secret"] = refused(exceptions.InvalidRequest, lambda: hvac.Client(url=addr, verify=ca)
                            .auth.approle.login(role_id=env["APPROLE_ID"], secret_id="guess"))
ci.auth.token.revoke_self()
assert not ci.is_authenticated(), "a revoked token still authenticates"
out["revoked"] = refused(exceptions.Forbidden, lambda: ci.secrets.pki.sign_certificate(
    name="mesh-gateways", csr=read("GW_CSR"), common_name="gw.mesh.example.com"))

out["ca"] = anonymous.secrets.pki.read_ca_certificate()
out["ca_chain"] = anonymous.secrets.pki.read_ca_certificate_chain()
out["crl"] = anonymous.secrets.pki.read_crl()
with open(env["OUT"], "w") as f:
    json.dump(out, f)
