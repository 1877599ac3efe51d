"""A DoT upstream that misbehaves on purpose.  It presents a certificate
stubborn trusts, so everything it sends passes the trust gate and reaches
the reply matching, which is what the hostile tests are about.  What it
answers is up to a script; it only logs what it received and sends what the
script asks for, in the TLS record layout the test chose."""

import socket
import ssl
import struct
import threading
import time

import dns.exception
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset

import pki
import servers

# Bounds on everything the server's threads do, so that a test gone wrong
# can never leave one spinning: none of them matter to a passing test.
LIFETIME = 60.0
MAX_CONNECTIONS = 64
MAX_FRAMES = 4096           # per connection
HANDSHAKE_TIMEOUT = 5.0
# Blocking calls wake this often to look at the stop flag, and a script's
# on_idle runs after this much quiet.
TICK = 0.1
JOIN_TIMEOUT = 5.0

# How the frames of one send() leave: each in its own TLS record, all in
# one record (stubborn must split them), or one byte per record (stubborn
# must reassemble the length prefix and the message across reads).
DELIVERIES = ("record", "together", "bytewise")

DEFAULT_DATA = {"A": "192.0.2.77", "AAAA": "2001:db8::77", "TXT": '"hostile"'}


def frame(wire):
    return struct.pack("!H", len(wire)) + wire


def reply(query, data=None, name=None, rdtype=None, rdclass=None, msg_id=None):
    """A reply to `query` carrying `data` (presentation form, None for no
    answer).  name/rdtype/rdclass/msg_id replace the echoed question or ID,
    which is how a decoy differs from the real reply."""
    q = query.question[0]
    r = dns.message.make_response(query)
    name = dns.name.from_text(name) if isinstance(name, str) else (name or q.name)
    rdtype = dns.rdatatype.from_text(rdtype) if isinstance(rdtype, str) else (rdtype or q.rdtype)
    rdclass = rdclass or q.rdclass
    r.question = [dns.rrset.RRset(name, rdclass, rdtype)]
    if data is not None:
        r.answer.append(dns.rrset.from_text(name, 300, rdclass, rdtype, data))
    if msg_id is not None:
        r.id = msg_id
    return r.to_wire()


def correct(query, data=None):
    """The reply stubborn must accept: default data by query type."""
    if data is None:
        data = DEFAULT_DATA[dns.rdatatype.to_text(query.question[0].rdtype)]
    return reply(query, data)


class Script:
    """Per query, do nothing: subclasses decide.  Both hooks run in the
    connection's own thread, so a script needs no locking for per-conn
    state kept on `conn.state`."""

    def on_query(self, conn, query):
        pass

    def on_idle(self, conn):
        pass


class Conn:
    def __init__(self, server, index, sock):
        self.server = server
        self.index = index
        self.sock = sock
        self.state = {}
        self.closed = False

    def send(self, *wires, raw=False):
        """Send DNS messages, each in its own length-prefixed frame; with
        raw, the bytes go out as given (a script's own broken framing)."""
        chunks = list(wires) if raw else [frame(w) for w in wires]
        mode = self.server.delivery
        if mode == "together":
            records = [b"".join(chunks)]
        elif mode == "bytewise":
            records = [bytes([b]) for b in b"".join(chunks)]
        else:
            records = chunks
        for rec in records:
            self.sock.sendall(rec)
        self.server.log(f"conn {self.index}: sent {len(chunks)} frame(s), "
                        f"{sum(map(len, chunks))} bytes, {mode}")

    def close(self):
        """Hang up without a TLS close_notify, as a crashing server would."""
        self.closed = True


class LineLog:
    """A fixture's own log: timestamped lines, kept under its _lock in
    _lines, shown by the suite when a test fails."""

    def log(self, line):
        with self._lock:
            self._lines.append(f"{time.monotonic():.3f} {line}")

    def log_text(self):
        with self._lock:
            return "\n".join(self._lines) + "\n"


class ThreadedServer(LineLog):
    """What the hostile servers share: a listener bound before start()
    returns, one thread per connection, bounded in number and lifetime, and
    a stop() that joins them all.  A subclass sets kind, name, address,
    port, _lock, _stop, _threads, _listener and connections, and provides
    log() and _serve(raw, index, deadline)."""

    kind = "hostile"

    def _listen(self):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.address, self.port))
        self._listener.listen(16)
        self._listener.settimeout(TICK)
        self._spawn(self._accept_loop, "accept")

    def stop(self):
        """Stop every thread; returns what did not stop in time."""
        self._stop.set()
        problems = []
        for t in self._threads:
            t.join(JOIN_TIMEOUT)
            if t.is_alive():
                problems.append(f"{self.kind} {self.name}: thread {t.name} "
                                f"still running {JOIN_TIMEOUT}s after stop")
        if self._listener is not None:
            self._listener.close()
        return problems

    def _spawn(self, target, tname, *args):
        t = threading.Thread(target=target, args=args, daemon=True,
                             name=f"{self.kind}-{self.name}-{tname}")
        self._threads.append(t)
        t.start()

    def _refused(self, index):
        """A connection over MAX_CONNECTIONS was closed unserved."""

    def _accept_loop(self):
        deadline = time.monotonic() + LIFETIME
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                raw, peer = self._listener.accept()
            except (socket.timeout, BlockingIOError):
                continue
            except OSError as e:
                self.log(f"accept: {e}")
                return
            with self._lock:
                self.connections += 1
                index = self.connections
            self.log(f"conn {index}: accepted from {peer[0]}:{peer[1]}")
            if index > MAX_CONNECTIONS:
                self.log(f"conn {index}: over {MAX_CONNECTIONS}, refused")
                raw.close()
                self._refused(index)
                continue
            self._spawn(self._serve, f"conn{index}", raw, index, deadline)


class HostileDot(ThreadedServer):
    def __init__(self, name, address, cert, script, delivery="record"):
        if delivery not in DELIVERIES:
            raise ValueError(delivery)
        self.name = name
        self.address = address
        self.cert = cert
        self.script = script
        self.delivery = delivery
        self.port = servers.free_port([address])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lines = []
        self._queries = []
        self._wires = []
        self._threads = []
        self._listener = None
        self.connections = 0

    def spec(self, pins=()):
        return servers.UpstreamSpec(self.name, self.address, self.port,
                                    pki.HOSTNAME, tuple(pins))

    def queries(self):
        """(connection number, rewritten ID, name, type) of each query, in
        the order received."""
        with self._lock:
            return list(self._queries)

    def raw_queries(self):
        """The bytes of every DNS message received (no length prefix), in
        order, parsable or not: what the padding and EDNS tests inspect."""
        with self._lock:
            return list(self._wires)

    def start(self):
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(self.cert.chain_pem), str(self.cert.key_pem))
        # Bound and listening before start() returns: the kernel queues
        # stubborn's connect, so no readiness probe (which would count as a
        # connection) is needed.
        self._listen()
        self.log(f"listening on {self.address}:{self.port}")
        return self

    def _serve(self, raw, index, deadline):
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT)
            try:
                tls = self._ctx.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError) as e:
                self.log(f"conn {index}: handshake failed: {e}")
                return
            with tls:
                self._frames(Conn(self, index, tls), deadline)
        except Exception as e:  # anything else is the fixture's bug: say so
            self.log(f"conn {index}: server error: {e!r}")
        finally:
            raw.close()

    def _frames(self, conn, deadline):
        sock = conn.sock
        sock.settimeout(TICK)
        buf = b""
        nframes = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                self.script.on_idle(conn)
                if conn.closed:
                    break
                continue
            except (OSError, ssl.SSLError) as e:
                self.log(f"conn {conn.index}: recv: {e}")
                return
            if not data:
                self.log(f"conn {conn.index}: closed by peer")
                return
            buf += data
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                wire, buf = buf[2:2 + n], buf[2 + n:]
                nframes += 1
                if nframes > MAX_FRAMES:
                    self.log(f"conn {conn.index}: over {MAX_FRAMES} frames, hanging up")
                    return
                self._query(conn, wire)
                if conn.closed:
                    break
            if conn.closed:
                break
        # A FIN without close_notify: what stubborn sees when a server
        # process dies, which is the case the hang-up scripts stand for.
        self.log(f"conn {conn.index}: hanging up")
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _query(self, conn, wire):
        with self._lock:
            self._wires.append(wire)
        try:
            query = dns.message.from_wire(wire)
            q = query.question[0]
        except (dns.exception.DNSException, IndexError) as e:
            self.log(f"conn {conn.index}: unparsable query ({len(wire)} bytes): {e}")
            return
        entry = (conn.index, query.id, q.name.to_text(),
                 dns.rdatatype.to_text(q.rdtype))
        with self._lock:
            self._queries.append(entry)
        self.log(f"conn {conn.index}: query id={query.id} {entry[2]} {entry[3]} "
                 f"{dns.rdataclass.to_text(q.rdclass)}")
        self.script.on_query(conn, query)
