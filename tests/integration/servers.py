"""The processes the suite runs: unbound as a DoT (or DoH, or plain DNS)
upstream, dnsdist and knot-resolver as other DoH servers, and stubborn
itself, plus the zone
data the upstreams serve so tests can compute the answer they expect."""

import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pki

ZONE = "zone.test."
ZONE_NAMES = 300
# Names under this label all answer with the serving upstream's own name, so a
# test can ask a fresh name each time (no cache could answer it) and still
# learn which upstream did.
WHO = "who." + ZONE

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def zone_name(i):
    return f"n{i}.{ZONE}"


def zone_a(i):
    return f"198.18.{i // 256}.{i % 256}"


def zone_aaaa(i):
    return f"2001:db8::{i + 1:x}"


def zone_txt(i):
    return f"txt-{i}"


# An RRset too large for a 512-byte UDP answer, to exercise truncation.
BIG = "big." + ZONE
BIG_COUNT = 30


def big_txt(i):
    return f"big-{i:02d}-" + "x" * 50


def who_name(tag):
    return f"{tag}.{WHO}"


def find_tool(name, env_var):
    """Locate an external program: an env override first, then PATH, then the
    sbin directories a non-root PATH often lacks (unbound lives there)."""
    override = os.environ.get(env_var)
    if override:
        return override
    extra = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])
    path = os.environ.get("PATH", os.defpath) + os.pathsep + extra
    return shutil.which(name, path=path)


def ipv6_loopback_usable():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def free_port(addresses):
    """A port free for both TCP and UDP on every given address.  Drawn below
    the kernel's usual ephemeral range so that the outgoing connections of
    the processes under test do not take it between this check and bind."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        socks = []
        try:
            for addr in addresses:
                family = socket.AF_INET6 if ":" in addr else socket.AF_INET
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(family, kind)
                    socks.append(s)
                    s.bind((addr, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no free port on {addresses}")


def _terminate(proc, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
    """Stop one child by its PID; escalate to SIGKILL if it hangs.  Returns
    (exit status, whether it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode, False
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=timeout), True


def wait_listening(address, port, deadline, proc, what, log_text, tls=True, alpn=None):
    """Wait for a listener without asking it anything: a TLS handshake (or
    a bare TCP connect) proves it is up yet leaves its query log empty, so
    a test may require zero queries of a server it must refuse."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_text()}")
        try:
            with socket.create_connection((address, port), timeout=1) as raw:
                if not tls:
                    return
                with ctx.wrap_socket(raw, server_hostname=pki.HOSTNAME):
                    return
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not accept {'TLS' if tls else 'TCP'} on "
                       f"{address}:{port} within {START_TIMEOUT}s ({last}):\n"
                       f"{log_text()}")


def tcp_connections(address, port):
    """How many TCP connections to address:port are established now, as
    the kernel sees them (client ends only), whichever process holds
    them."""
    # The kernel prints the address as the network-order word read as a
    # native integer.
    raw = int.from_bytes(socket.inet_aton(address), sys.byteorder)
    want = f"{raw:08X}:{port:04X}"
    n = 0
    for line in _read("/proc/net/tcp").splitlines()[1:]:
        fields = line.split()
        # fields: sl local remote state ...; 01 is ESTABLISHED.
        if len(fields) > 3 and fields[2] == want and fields[3] == "01":
            n += 1
    return n


def _read(path):
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


@dataclass
class UpstreamSpec:
    """One [upstream NAME] section of a stubborn conf."""
    name: str
    address: str
    port: int
    hostname: str = pki.HOSTNAME
    pins: tuple = ()
    ca_file: object = None
    extra: tuple = ()
    # "https" makes it a DoH upstream; path "" leaves stubborn's default.
    scheme: str = "tls"
    path: str = "/dns-query"

    @property
    def url(self):
        if self.scheme == "https":
            return f"https://{self.hostname}:{self.port}{self.path}"
        return f"tls://{self.hostname}:{self.port}"

    def section(self):
        lines = [f"[upstream {self.name}]", f"url = {self.url}",
                 f"address = {self.address}"]
        lines += [f"pin = {p}" for p in self.pins]
        if self.ca_file is not None:
            lines.append(f"ca-file = {self.ca_file}")
        lines += list(self.extra)
        return "\n".join(lines) + "\n"


TRANSPORTS = ("dot", "doh", "plain")


class Unbound:
    """unbound serving the test zone on its own loopback address, over DoT,
    DoH (HTTP/2) or plain DNS, each on a port of its own."""

    # One line per query with log-queries: "... info: <ip> <name> <type> IN".
    QUERY_LINE = re.compile(r"\binfo: (\S+) (\S+) (\S+) IN$")

    def __init__(self, binary, name, address, cert, workdir, transports=("dot",),
                 extra_conf=()):
        if not transports or set(transports) - set(TRANSPORTS):
            raise ValueError(f"transports {transports!r}: pick from {TRANSPORTS}")
        self.binary = binary
        self.name = name
        self.address = address
        self.cert = cert
        self.transports = tuple(transports)
        # More lines for its server: clause (local-data a test needs).
        self.extra_conf = tuple(extra_conf)
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "unbound.conf"
        self.log = self.dir / "unbound.log"
        self.stdout = self.dir / "unbound.stdout"
        self.ports = {}
        for t in self.transports:
            port = free_port([address])
            while port in self.ports.values():
                port = free_port([address])
            self.ports[t] = port
        # The port a spec points at unless told otherwise: the first listed.
        self.port = self.ports[self.transports[0]]
        self.proc = None

    def spec(self, pins=(), ca_file=None, hostname=pki.HOSTNAME, extra=(),
             transport=None, path="/dns-query"):
        transport = transport or self.transports[0]
        if transport not in ("dot", "doh") or transport not in self.ports:
            raise ValueError(f"unbound {self.name} serves no {transport} upstream")
        return UpstreamSpec(self.name, self.address, self.ports[transport], hostname,
                            tuple(pins), ca_file, tuple(extra),
                            "https" if transport == "doh" else "tls", path)

    def _config(self):
        lines = [
            "server:",
            "  verbosity: 1",
            "  do-daemonize: no",
            "  use-syslog: no",
            f'  logfile: "{self.log}"',
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{self.dir}"',
            '  pidfile: ""',
            "  num-threads: 1",
            "  interface-automatic: no",
        ]
        # unbound decides what a listening port speaks by its number: the
        # tls-port is DoT, the https-port DoH, any other plain DNS.
        lines += [f"  interface: {self.address}@{p}" for p in self.ports.values()]
        if "dot" in self.ports:
            lines.append(f"  tls-port: {self.ports['dot']}")
        if "doh" in self.ports:
            lines += [f"  https-port: {self.ports['doh']}",
                      '  http-endpoint: "/dns-query"',
                      # More than stubborn's own 100, so that it is the
                      # client's queueing a test sees, not the server's.
                      "  http-max-streams: 200"]
        if "dot" in self.ports or "doh" in self.ports:
            lines += [f'  tls-service-key: "{self.cert.key_pem}"',
                      f'  tls-service-pem: "{self.cert.chain_pem}"']
        lines += [
            "  access-control: 127.0.0.0/8 allow",
            # The default of 10 would make the concurrency tests measure
            # unbound's limit rather than stubborn.
            "  incoming-num-tcp: 512",
            "  log-queries: yes",
            '  module-config: "iterator"',
            # Nothing may leave the machine: refuse everything not local.
            '  local-zone: "." refuse',
            # Without nodefault unbound answers the special-use test. itself.
            '  local-zone: "test." nodefault',
            f'  local-zone: "{ZONE}" static',
            f'  local-data: "a.{ZONE} 300 IN A 192.0.2.1"',
        ]
        for i in range(ZONE_NAMES):
            n = zone_name(i)
            lines.append(f'  local-data: "{n} 300 IN A {zone_a(i)}"')
            lines.append(f'  local-data: "{n} 300 IN AAAA {zone_aaaa(i)}"')
            lines.append(f"  local-data: '{n} 300 IN TXT \"{zone_txt(i)}\"'")
        for i in range(BIG_COUNT):
            lines.append(f"  local-data: '{BIG} 300 IN TXT \"{big_txt(i)}\"'")
        lines.append(f'  local-zone: "{WHO}" redirect')
        lines.append(f"  local-data: '{WHO} 300 IN TXT \"{self.name}\"'")
        lines += [f"  {line}" for line in self.extra_conf]
        return "\n".join(lines) + "\n"

    def start(self):
        """Start it; again after kill() it comes back on the same ports."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"unbound {self.name} is already running")
        self.conf.write_text(self._config())
        with open(self.stdout, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-d", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        for transport, port in self.ports.items():
            wait_listening(self.address, port, deadline, self.proc,
                           f"unbound {self.name}", self.log_text,
                           tls=transport != "plain",
                           alpn=["h2"] if transport == "doh" else None)
        return self

    def queries(self):
        """(client, name, type) of every query unbound has received."""
        found = []
        for line in _read(self.log).splitlines():
            m = self.QUERY_LINE.search(line)
            if m:
                found.append(m.groups())
        return found

    def queries_seen(self):
        return len(self.queries())

    def kill(self):
        """Stop it abruptly, as a crash would."""
        if self.proc is not None:
            _terminate(self.proc, signal.SIGKILL)

    def stop(self):
        if self.proc is not None:
            _terminate(self.proc)

    def log_text(self):
        return _read(self.log) + _read(self.stdout)


class DohFront:
    """A DoH server of another implementation, on its own loopback address,
    in front of `backend`: an unbound serving the zone over plain DNS, so
    the who.zone.test marker names that unbound."""

    def __init__(self, binary, name, address, cert, backend, workdir):
        self.binary = binary
        self.name = name
        self.address = address
        self.cert = cert
        self.backend = backend
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port([address])
        self.proc = None

    def spec(self, pins=(), path="/dns-query"):
        return UpstreamSpec(self.name, self.address, self.port, pki.HOSTNAME,
                            tuple(pins), scheme="https", path=path)

    def stop(self):
        if self.proc is not None:
            _terminate(self.proc)


class Dnsdist(DohFront):
    """dnsdist as a second, independent DoH server implementation: its DoH
    front end forwards in plain DNS to an unbound (which holds the zone),
    so the who.zone.test marker names that unbound.  Every query dnsdist
    receives is logged with the message ID it carried on the wire."""

    # LogAction's line: "Packet from 127.0.0.1:40312 for n1.zone.test. A with id 0"
    QUERY_LINE = re.compile(r"^Packet from (\S+) for (\S+) (\S+) with id (\d+)$")
    # Its health checks ask this, which the backend's log then shows too.
    CHECK_NAME = "a." + ZONE

    def __init__(self, binary, name, address, cert, backend, workdir):
        super().__init__(binary, name, address, cert, backend, workdir)
        self.conf = self.dir / "dnsdist.conf"
        self.stdout = self.dir / "dnsdist.stdout"
        self.querylog = self.dir / "queries.log"
        # Without setLocal it would listen on port 53 as well.
        self.plain_port = free_port([address])
        while self.plain_port == self.port:
            self.plain_port = free_port([address])

    def _config(self):
        backend = f"{self.backend.address}:{self.backend.ports['plain']}"
        return "\n".join([
            # No security-status queries to the outside world.
            "setSecurityPollSuffix('')",
            f"setLocal('{self.address}:{self.plain_port}')",
            f"addDOHLocal('{self.address}:{self.port}', '{self.cert.chain_pem}', "
            f"'{self.cert.key_pem}', '/dns-query')",
            # Its own source address, so the backend's log tells dnsdist's
            # queries from anybody else's.
            f"newServer({{ address = '{backend}', name = 'backend', "
            f"checkName = '{self.CHECK_NAME}', source = '{self.address}' }})",
            # Unbuffered, appended: readable while it runs.
            f"addAction(AllRule(), LogAction('{self.querylog}', false, true, false))",
        ]) + "\n"

    def start(self):
        self.conf.write_text(self._config())
        with open(self.stdout, "wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "--supervised", "--disable-syslog", "-C", str(self.conf)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        wait_listening(self.address, self.port, time.monotonic() + START_TIMEOUT,
                       self.proc, f"dnsdist {self.name}", self.log_text, alpn=["h2"])
        # It checks its backend once before it opens any listener: by now
        # the verdict is in its log.
        if "as 'up'" not in self.log_text():
            raise RuntimeError(f"dnsdist {self.name}: backend {self.backend.name} "
                               f"not up:\n{self.log_text()}")
        return self

    def queries(self):
        """(client address:port, name, type, wire ID) of every query."""
        found = []
        for line in _read(self.querylog).splitlines():
            m = self.QUERY_LINE.match(line.strip())
            if m:
                found.append(m.groups()[:3] + (int(m.group(4)),))
        return found

    def log_text(self):
        return _read(self.stdout) + "--- query log\n" + _read(self.querylog)


class Kresd(DohFront):
    """knot-resolver as a third DoH server (kind doh2), in front of an unbound
    over plain DNS as dnsdist is.  It is strict in ways the others are not:
    it takes a connection's requests one at a time (a stream whose HEADERS
    come while another's body is still due is refused), a POST body cut
    across two TLS records is lost, and past its pipeline limit (100
    queries) it stops reading."""

    def __init__(self, binary, name, address, cert, backend, workdir):
        super().__init__(binary, name, address, cert, backend, workdir)
        self.conf = self.dir / "kresd.conf"
        self.rundir = self.dir / "run"
        self.stdout = self.dir / "kresd.stdout"

    def _config(self):
        backend = f"{self.backend.address}@{self.backend.ports['plain']}"
        return "\n".join([
            f"net.listen('{self.address}', {self.port}, {{ kind = 'doh2' }})",
            f"net.tls('{self.cert.chain_pem}', '{self.cert.key_pem}')",
            # Nothing may leave the machine: no root priming, no trust
            # anchor, and every name but the test zone's refused.
            "modules.unload('priming')",
            "modules.unload('detect_time_skew')",
            "trust_anchors.remove('.')",
            # STUB: to the backend as asked (the special-use test. is not
            # answered locally), without DNSSEC validation.
            f"policy.add(policy.suffix(policy.STUB('{backend}'), "
            f"{{todname('{ZONE}')}}))",
            "policy.add(policy.all(policy.REFUSE))",
            "cache.size = 10 * MB",
        ]) + "\n"

    def start(self):
        self.conf.write_text(self._config())
        self.rundir.mkdir(exist_ok=True)
        with open(self.stdout, "wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-n", "-c", str(self.conf), str(self.rundir)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        wait_listening(self.address, self.port, time.monotonic() + START_TIMEOUT,
                       self.proc, f"kresd {self.name}", self.log_text, alpn=["h2"])
        return self

    def log_text(self):
        return _read(self.stdout)


class Stubborn:
    """The binary under test, run in the foreground with its log captured."""

    READY = re.compile(r"\bready\b")

    def __init__(self, binary, workdir, port, conf_text, verbose=False, cwd=None,
                 conf_arg=None):
        """cwd: where it starts (the test's own by default); conf_arg:
        what -c says, the conf's absolute path by default."""
        self.binary = binary
        self.verbose = verbose
        self.cwd = cwd
        self.conf_arg = conf_arg
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.conf = self.dir / "stubborn.conf"
        self.conf.write_text(conf_text)
        self.log = self.dir / "stubborn.log"
        self.proc = None
        self.ready = False
        self.exit_status = None

    def start(self):
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "run", "-c", self.conf_arg or str(self.conf), "-f"]
                + (["-v"] if self.verbose else []),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.cwd)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.READY.search(self.log_text()):
                self.ready = True
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"stubborn exited with status {self.proc.returncode} before "
                    f"logging 'ready'.\nconf:\n{self.conf.read_text()}\n"
                    f"log:\n{self.log_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"stubborn logged no 'ready' line within "
                           f"{START_TIMEOUT}s.\nlog:\n{self.log_text()}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM and wait; returns (exit status, whether it hung)."""
        if self.proc is None:
            return None, False
        status, hung = _terminate(self.proc)
        self.exit_status = status
        return status, hung

    def log_text(self):
        return _read(self.log)

    def incidents(self):
        """Every trust-incident record: one JSON object alone on its line."""
        found = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("event") == "trust-incident":
                found.append(obj)
        return found


def stubborn_conf(port, upstreams, ca_file, listen_v6, allow=None,
                  quarantine=3600, server_extra=(), trust_extra=(), cache_extra=()):
    lines = ["[server]", f"listen = 127.0.0.1:{port}"]
    if listen_v6:
        lines.append(f"listen = [::1]:{port}")
    if allow is not None:
        lines.append(f"allow = {allow}")
    lines += list(server_extra)
    lines += ["", "[trust]", f"ca-file = {ca_file}", f"quarantine = {quarantine}",
              # The test certificates carry no SCTs: these tests are about
              # chain, hostname and pins, and must not start failing the day
              # CT enforcement (the default) lands.
              "ct = off"]
    lines += list(trust_extra)
    if cache_extra:
        lines += ["", "[cache]"] + list(cache_extra)
    text = "\n".join(lines) + "\n"
    for u in upstreams:
        text += "\n" + u.section()
    return text


def proc_status(pid):
    """/proc/PID/status as a dict of field name to its words."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return fields
