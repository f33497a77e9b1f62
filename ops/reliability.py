#!/usr/bin/env python3
"""The figures a security team asks for, each from a real run of the dev appliance.

Run through ops/reliability.sh (it builds the release binary). Each scenario starts the
appliance (`hsm-ca dev`) in a folder of its own on a fresh SoftHSM token, disturbs it, and
measures what a user would see. One row per figure: what was measured, the value, the promise,
and whether it held. Exits 1 when any promise is broken.

Scenarios:
  kill9       `kill -9` under issuance load, N times: certificates received vs missing from
              the audit log, and the log still verifies.
  descriptors the appliance under a low open-files limit with idle TLS connections holding
              its descriptors: does issuance go on, and how long until it works once they close.
  disk        the data folder on a small filesystem that fills up (root only: tmpfs):
              how long until issuance works again once space is freed, without a restart.
  device      the token's files taken away and put back: how long until issuance recovers.
  idle        hundreds of idle TLS connections: are they closed, does issuance go on meanwhile.
  refusals    a flood of unauthenticated admin requests: audit records added per second.
  memory      saturating issuance load (h2load, 8 connections) for some minutes: the
              appliance's resident memory.
"""
import argparse
import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

BIN = None
RESULTS = []


def row(figure, value, promise, ok):
    RESULTS.append((figure, value, promise, ok))
    print(f"{figure:<52} {value:>14}  {promise:<22} {'ok' if ok else 'BROKEN'}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Appliance:
    """`hsm-ca dev` in its own folder, on ports of its own."""

    def __init__(self, folder, prefix=(), extra_config=""):
        self.dir = folder
        self.grpc = free_port()
        self.admin = free_port()
        self.prefix = list(prefix)
        self.proc = None
        self.log = open(os.path.join(os.path.dirname(folder), os.path.basename(folder) + ".log"), "ab")
        subprocess.run([BIN, "dev", "--dir", folder, "--setup-only"], check=True,
                       stdout=subprocess.DEVNULL, stderr=self.log)
        if extra_config:
            with open(self.config, "a") as f:
                f.write("\n" + extra_config + "\n")

    @property
    def config(self):
        return os.path.join(self.dir, "hsm-ca.toml")

    def start(self, timeout=30):
        started = time.monotonic()
        self.proc = subprocess.Popen(
            self.prefix + [BIN, "dev", "--dir", self.dir, "--listen", f"127.0.0.1:{self.grpc}",
                           "--admin-listen", f"127.0.0.1:{self.admin}"],
            stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the appliance exited with {self.proc.returncode}; see {self.log.name}")
            if self.ready()[0] == 200:
                return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError("the appliance did not become ready")

    def kill9(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()
        # sled releases its lock a moment after the process is gone.
        time.sleep(0.5)

    def tls(self, client_cert=False):
        ctx = ssl.create_default_context(cafile=os.path.join(self.dir, "root-cert.pem"))
        if client_cert:
            ctx.load_cert_chain(os.path.join(self.dir, "admin-cert.pem"),
                                os.path.join(self.dir, "admin-key.pem"))
        return ctx

    def https(self, path, client_cert=False, timeout=5):
        """GET on the admin listener: (status, body) or (None, error)."""
        try:
            with socket.create_connection(("127.0.0.1", self.admin), timeout=timeout) as raw:
                with self.tls(client_cert).wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
                    data = b""
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            return int(head.split()[1]), body
        except (OSError, ValueError, IndexError) as e:
            return None, str(e).encode()

    def ready(self):
        return self.https("/readyz", timeout=2)

    def issue(self, out, timeout=15):
        """One certificate the way istio-agent asks; its serial, or None."""
        try:
            r = subprocess.run([BIN, "request", "--dev", self.dir, "--addr", f"127.0.0.1:{self.grpc}",
                                "--ns", "default", "--sa", "web", "--out", out],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if r.returncode != 0:
            return None
        s = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", os.path.join(out, "cert-chain.pem")],
                           capture_output=True, text=True)
        if s.returncode != 0:
            return None
        return normal_serial(s.stdout.strip().split("=", 1)[1])

    def audit_records(self):
        """Every audit record (the appliance must be stopped)."""
        out = tempfile.mkdtemp(dir=os.path.dirname(self.dir))
        shutil.rmtree(out)
        subprocess.run([BIN, "--config", self.config, "audit", "export", "--out", out],
                       check=True, stdout=subprocess.DEVNULL, stderr=self.log)
        with open(os.path.join(out, "audit.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]

    def audit_verifies(self):
        r = subprocess.run([BIN, "--config", self.config, "audit", "verify"],
                           stdout=subprocess.DEVNULL, stderr=self.log)
        return r.returncode == 0


def normal_serial(s):
    return s.replace(":", "").lower().lstrip("0")


def until(check, timeout, step=0.2):
    """Seconds until `check()` is true, or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(step)
    return None


class Load:
    """Issuing threads that record every certificate they receive."""

    def __init__(self, app, work, threads=4):
        self.app, self.work, self.stop = app, work, threading.Event()
        self.received, self.failed, self.lock = set(), 0, threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(threads)]

    def run(self, i):
        n = 0
        while not self.stop.is_set():
            out = os.path.join(self.work, f"load-{i}-{n}")
            serial = self.app.issue(out)
            with self.lock:
                if serial:
                    self.received.add(serial)
                else:
                    self.failed += 1
            shutil.rmtree(out, ignore_errors=True)
            n += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def idle_connections(app, n, port):
    """`n` TLS connections that finish the handshake and then say nothing."""
    ctx = app.tls()
    ctx.set_alpn_protocols(["h2"])
    held = []
    for _ in range(n):
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.append(ctx.wrap_socket(raw, server_hostname="localhost"))
        except OSError:
            break
    return held


def closed_by_peer(sock):
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ssl.SSLWantReadError:
        return False
    except BlockingIOError:
        return False
    except (OSError, ssl.SSLError):
        return True


def scenario_kill9(work, kills):
    app = Appliance(os.path.join(work, "kill9"))
    app.start()
    restarts = []
    with Load(app, work) as load:
        for _ in range(kills):
            time.sleep(0.7)
            app.kill9()
            restarts.append(app.start())
        time.sleep(0.7)
    app.stop()
    audited = {normal_serial(r["event"]["serial"]) for r in app.audit_records()
               if r["event"].get("kind") == "issued"}
    missing = load.received - audited
    row(f"kill -9 x{kills}: certificates received", str(len(load.received)), "> 0", len(load.received) > 0)
    row(f"kill -9 x{kills}: received but missing from the audit", str(len(missing)), "0", not missing)
    row("kill -9: audit log verifies after", "yes" if app.audit_verifies() else "no", "yes", app.audit_verifies())
    row("kill -9: slowest restart to ready (s)", f"{max(restarts):.2f}", "<= 5", max(restarts) <= 5)


def scenario_descriptors(work):
    app = Appliance(os.path.join(work, "fds"), prefix=["prlimit", "--nofile=256:256"])
    app.start()
    held = idle_connections(app, 240, app.grpc)
    during = app.issue(os.path.join(work, "fds-during")) is not None
    for s in held:
        s.close()
    took = until(lambda: app.issue(os.path.join(work, "fds-after")) is not None, 60)
    ready = app.ready()[0] == 200
    app.stop()
    # While idle connections fill the descriptor budget, new clients wait for a free slot (the
    # idle timeout frees them); the device keeps its descriptors. Shown, not promised.
    row(f"descriptors: issuance while {len(held)} idle connections hold the budget",
        "issued" if during else "refused", "(shown)", True)
    row("descriptors: issuance works again after (s)", "never" if took is None else f"{took:.2f}",
        "<= 10", took is not None and took <= 10)
    row("descriptors: /readyz ready after", "yes" if ready else "no", "yes", ready)


def scenario_disk(work):
    if os.geteuid() != 0:
        row("disk full: skipped (needs root for a tmpfs)", "-", "-", True)
        return
    mount = os.path.join(work, "small-disk")
    os.makedirs(mount)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", mount], check=True)
    try:
        app = Appliance(os.path.join(mount, "app"))
        app.start()
        filler = os.path.join(mount, "filler")
        free = shutil.disk_usage(mount).free
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - 256 * 1024))
        with Load(app, work, threads=4) as load:
            full = until(lambda: load.failed > 0, 120, step=0.5)
        not_ready = app.ready()[0] == 503
        os.remove(filler)
        took = until(lambda: app.issue(os.path.join(work, "disk-after")) is not None, 60)
        ready = app.ready()[0] == 200
        app.stop()
        verifies = app.audit_verifies()
        row("disk full: issuance refused once full", "yes" if full is not None else "no", "yes", full is not None)
        row("disk full: /readyz says not ready while full", "yes" if not_ready else "no", "yes", not_ready)
        row("disk full: issuance works again after (s)", "never" if took is None else f"{took:.2f}",
            "<= 10", took is not None and took <= 10)
        row("disk full: /readyz ready and log verifies after", "yes" if ready and verifies else "no",
            "yes", ready and verifies)
    finally:
        subprocess.run(["umount", "-l", mount])


def scenario_device(work):
    app = Appliance(os.path.join(work, "device"))
    app.start()
    tokens = os.path.join(app.dir, "tokens")
    os.rename(tokens, tokens + ".away")
    refused = app.issue(os.path.join(work, "dev-during")) is None
    not_ready = until(lambda: app.ready()[0] == 503, 10) is not None
    os.rename(tokens + ".away", tokens)
    took = until(lambda: app.issue(os.path.join(work, "dev-after")) is not None, 60)
    ready = until(lambda: app.ready()[0] == 200, 10) is not None
    app.stop()
    row("device lost: issuance refused while gone", "yes" if refused else "no", "yes", refused)
    row("device lost: /readyz says not ready while gone", "yes" if not_ready else "no", "yes", not_ready)
    row("device back: issuance works again after (s)", "never" if took is None else f"{took:.2f}",
        "<= 10", took is not None and took <= 10)
    row("device back: /readyz ready", "yes" if ready else "no", "yes", ready)


def scenario_idle(work, idle_secs):
    app = Appliance(os.path.join(work, "idle"), extra_config="")
    app.start()
    held = idle_connections(app, 500, app.grpc)
    during = app.issue(os.path.join(work, "idle-during")) is not None
    time.sleep(idle_secs)
    closed = sum(1 for s in held if closed_by_peer(s))
    for s in held:
        s.close()
    app.stop()
    row(f"idle flood: {len(held)} connections, issuance meanwhile", "issued" if during else "refused",
        "issued", during)
    row(f"idle flood: closed by the server after {idle_secs}s", f"{closed}/{len(held)}", "all",
        closed == len(held) and len(held) > 0)


def scenario_refusals(work, secs):
    app = Appliance(os.path.join(work, "refusals"))
    app.start()
    app.stop()
    before = len(app.audit_records())
    app.start()
    stop, count = threading.Event(), [0]

    def flood():
        while not stop.is_set():
            app.https("/v1/state")
            count[0] += 1

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(secs)
    stop.set()
    for t in threads:
        t.join()
    app.stop()
    added = len(app.audit_records()) - before
    rate = added / secs
    row(f"refusal flood: {count[0]} unauthenticated admin requests", f"{rate:.1f} rec/s",
        "<= 5 rec/s", rate <= 5)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_ecdsa_to_raw(der):
    """An ECDSA signature from DER (SEQUENCE of two INTEGERs) to JWS's r || s (P-256)."""
    def integer(at):
        assert der[at] == 0x02
        n = der[at + 1]
        return der[at + 2:at + 2 + n], at + 2 + n
    at = 3 if der[1] & 0x80 else 2
    r, at = integer(at)
    s, _ = integer(at)
    return r.lstrip(b"\0").rjust(32, b"\0") + s.lstrip(b"\0").rjust(32, b"\0")


def service_account_token(app, ns, sa, lifetime):
    """An ES256 service-account token signed with the dev appliance's token signer key."""
    with open(os.path.join(app.dir, "jwks.json")) as f:
        kid = json.load(f)["keys"][0]["kid"]
    now = int(time.time())
    header = {"alg": "ES256", "typ": "JWT", "kid": kid}
    claims = {"iss": "https://hsm-ca-dev.invalid/token-issuer", "aud": ["istio-ca"],
              "sub": f"system:serviceaccount:{ns}:{sa}", "iat": now, "nbf": now - 5,
              "exp": now + lifetime}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    der = subprocess.run(["openssl", "dgst", "-sha256", "-sign",
                          os.path.join(app.dir, "token-signer-key.pem")],
                         input=signing_input.encode(), capture_output=True, check=True).stdout
    return f"{signing_input}.{b64url(der_ecdsa_to_raw(der))}"


def varint(n):
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def grpc_request_body(work, identity, ttl):
    """One IstioCertificateRequest (a fresh P-256 CSR for `identity`) as a gRPC message."""
    key = os.path.join(work, "load-key.pem")
    csr = subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-subj", "/O=load", "-addext", f"subjectAltName=URI:{identity}"],
        capture_output=True, check=True).stdout
    message = b"\x0a" + varint(len(csr)) + csr + b"\x10" + varint(ttl)
    return b"\x00" + len(message).to_bytes(4, "big") + message


def issued_ok(app):
    """`hsmca_issuances_total{result="ok"}` from /metrics (auditor's view)."""
    status, body = app.https("/metrics", client_cert=True)
    if status != 200:
        return 0
    for line in body.decode().splitlines():
        if line.startswith("hsmca_issuances_total") and 'result="ok"' in line:
            return int(float(line.split()[-1]))
    return 0


def scenario_memory(work, minutes):
    """Resident memory under saturating load: h2load with 8 connections, one request in flight
    on each, each request a CSR and a service-account token, for `minutes`."""
    app = Appliance(os.path.join(work, "memory"))
    app.start()
    # `hsm-ca dev` runs the appliance in its own process: that is the one measured.
    idle = rss_mb(app.proc.pid)
    body = os.path.join(work, "memory-request.bin")
    with open(body, "wb") as f:
        f.write(grpc_request_body(work, "spiffe://cluster.local/ns/default/sa/web", 3600))
    token = service_account_token(app, "default", "web", int(minutes * 60) + 600)
    secs = int(minutes * 60)
    before = issued_ok(app)
    load = subprocess.Popen(
        ["h2load", "-c", "8", "-m", "1", "-D", str(secs), "-d", body,
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         "-H", f"authorization: Bearer {token}",
         f"https://127.0.0.1:{app.grpc}/istio.v1.auth.IstioCertificateService/CreateCertificate"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, samples = idle, []
    while load.poll() is None:
        time.sleep(5)
        now = rss_mb(app.proc.pid)
        samples.append(now)
        peak = max(peak, now)
    out = load.stdout.read()
    rate = (issued_ok(app) - before) / secs
    last = rss_mb(app.proc.pid)
    app.stop()
    # Start to serving with the log the load left behind.
    restart = app.start()
    records = 0
    status, metrics = app.https("/metrics", client_cert=True)
    for line in (metrics.decode() if status == 200 else "").splitlines():
        if line.startswith("hsmca_audit_records "):
            records = int(float(line.split()[-1]))
    app.stop()
    with open(os.path.join(work, "memory-h2load.txt"), "w") as f:
        f.write(out)
        f.write("\nresident MB every 5 s: " + " ".join(f"{m:.0f}" for m in samples) + "\n")
    row("memory: idle resident (MB)", f"{idle:.0f}", "<= 50", idle <= 50)
    row(f"memory: peak over {minutes:g} min at {rate:.0f} issuances/s (MB)", f"{peak:.0f}",
        "<= 100", peak <= 100 and rate > 0)
    row("memory: resident after the load (MB)", f"{last:.0f}", "<= 100", last <= 100)
    row(f"start to serving with {records:,} audit records (s)", f"{restart:.2f}", "<= 1",
        restart <= 1)


def main():
    global BIN
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--idle-secs", type=int, default=75)
    p.add_argument("--memory-minutes", type=float, default=10)
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args()
    BIN = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="hsm-ca-reliability-")
    print(f"{'figure':<52} {'value':>14}  {'promise':<22} held", flush=True)
    scenarios = {
        "kill9": lambda: scenario_kill9(work, args.kills),
        "descriptors": lambda: scenario_descriptors(work),
        "disk": lambda: scenario_disk(work),
        "device": lambda: scenario_device(work),
        "idle": lambda: scenario_idle(work, args.idle_secs),
        "refusals": lambda: scenario_refusals(work, 10),
        "memory": lambda: scenario_memory(work, args.memory_minutes),
    }
    for name, run in scenarios.items():
        if args.only and name not in args.only:
            continue
        try:
            run()
        except Exception as e:  # a scenario that cannot run breaks its promise
            row(f"{name}: could not run", type(e).__name__, "runs", False)
            print(f"  {e}", file=sys.stderr)
    broken = [r for r in RESULTS if not r[3]]
    print(f"{len(RESULTS) - len(broken)} held, {len(broken)} broken; logs in {work}")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
