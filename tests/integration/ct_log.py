"""A Certificate Transparency log of the suite's own: RFC 6962 over HTTPS on
127.0.0.1, with a real Merkle tree, signed tree heads and the read API a
monitor uses, so that the real certspotter (and stubborn's CT code) can be
pointed at something whose every entry a test chose.

    log = CTLog(tmp_path / "log").start()
    entry = log.add_cert(leaf_der, [intermediate_der, root_der])
    log.publish()                          # a new STH covering the entry
    log.write_log_list(tmp_path / "logs.json")   # for certspotter -logs
    ...
    log.stop()

What is served, under the log's URL (https://127.0.0.1:PORT/PREFIX/):

    ct/v1/get-sth                 the latest published STH
    ct/v1/get-sth-consistency     RFC 6962 2.1.2 proofs between published sizes
    ct/v1/get-proof-by-hash       RFC 6962 2.1.1 audit paths
    ct/v1/get-entries             leaf_input + extra_data (the chain)
    ct/v1/get-roots               the roots given to the constructor

Entries are added directly (add_cert / add_precert), not through add-chain:
the log checks nothing about a chain, which is what lets a test log a
certificate no CA would issue.  Entries become visible only when an STH
covers them (publish(), or auto_publish=True): like a real log, nothing
past the published tree size is served.

certspotter 0.16 facts this fixture was written against (test_ct_log.py
checks those marked *; the rest is from its source):

  * -logs takes a file path (or an https URL) of a v2/v3 log list.  It reads
    `operators[].logs[]` (not `tiled_logs`), requires log_id == SHA-256(key)
    for each, uses `url` and `key` and ignores the state.  LOG_URI in a
    hook's environment is `url` verbatim, trailing slash included. *
  * It polls each log once at start-up and then every 5 minutes *
    (monitorLogInterval, a compile-time constant: no flag, no environment
    variable; measured here: get-sth at 0, 300.1 and 600.1 s).  A test gets
    "one poll" by starting, or restarting, certspotter after the log
    changed: the state directory makes a restart resume where it stopped. *
  * Per poll: get-sth, its signature checked against `key` *; then
    get-entries from its position to the STH's size, asked as
    [start, start+999] whatever the tree size, so the log must clamp `end`
    as RFC 6962 4.6 allows *.  Entries are matched and hooks run as they
    download; only then is the root compared with the STH's * (a mismatch
    is logged and the position rewound, but the hook has already run).
    With -start_at_end and no state it rebuilds the tree from the last
    entry and its audit path (get-proof-by-hash) *.  It never asks for
    get-sth-consistency or get-roots *.
  * A 5xx answer is retried with exponential backoff (1 s, 2 s, 4 s, ...
    up to 10 times); a 4xx fails that poll.
  * TLS: its log client does not verify the log's certificate at all *
    (InsecureSkipVerify: the log's own signatures are what it trusts).  The
    fixture still serves a certificate for IP 127.0.0.1 from its own CA
    (ca_pem), for clients that do verify (SSL_CERT_FILE for Go ones).
  * Loopback and an IP address in the URL are fine.  Go never proxies
    loopback; the Certspotter runner clears the proxy variables anyway.
  * Hooks (-script, and every executable in $CERTSPOTTER_CONFIG_DIR/hooks.d)
    run with no arguments *, certspotter's own environment plus the event's.
    A hook exiting non-zero makes certspotter exit non-zero, and the entry
    is reported again on the next run *.  A certificate already reported
    (a .notified file per CERT_SHA256 in the state directory) is not
    reported again, even from another entry *.  -healthcheck takes any Go duration ("2s"), the quick
    way to an EVENT=error *.
"""

import base64
import datetime
import hashlib
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

import hostile

ADDRESS = "127.0.0.1"

# RFC 6962 enumerations.
ENTRY_X509 = 0
ENTRY_PRECERT = 1
SIG_CERTIFICATE_TIMESTAMP = 0
SIG_TREE_HASH = 1
LEAF_TIMESTAMPED_ENTRY = 0
HASH_SHA256 = 4
SIG_RSA = 1
SIG_ECDSA = 3

# 1.3.6.1.4.1.11129.2.4.3, the precertificate poison, as a DER OID.
POISON_OID_DER = bytes.fromhex("060a2b06010401d679020403")

# get-entries answers at most this many entries, as real logs cap theirs.
MAX_ENTRIES = 256
# Bounds on the server's threads: a handshake, an idle keep-alive
# connection, and a join at stop.
HANDSHAKE_TIMEOUT = 5.0
IDLE_TIMEOUT = 5.0
JOIN_TIMEOUT = 5.0
MAX_CONNECTIONS = 256


# --- TLS encodings ------------------------------------------------------------

def u16(data):
    return struct.pack(">H", len(data)) + data


def u24(data):
    if len(data) >= 1 << 24:
        raise ValueError("too long for opaque<..2^24-1>")
    return struct.pack(">I", len(data))[1:] + data


def b64(data):
    return base64.b64encode(data).decode()


def sha256(data):
    return hashlib.sha256(data).digest()


# --- Merkle tree (RFC 6962 2.1) ------------------------------------------------

EMPTY_ROOT = sha256(b"")


def leaf_hash(leaf):
    """MTH({d}) = SHA-256(0x00 || d)."""
    return sha256(b"\x00" + leaf)


def node_hash(left, right):
    """SHA-256(0x01 || left || right)."""
    return sha256(b"\x01" + left + right)


def split_point(n):
    """The largest power of two smaller than n (n > 1): RFC 6962's k."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


class MerkleTree:
    """Leaf hashes in order, with the RFC 6962 tree hash, audit paths and
    consistency proofs for any size up to the current one.  Subtree hashes
    are cached: entries never change, so neither do they."""

    def __init__(self):
        self.leaves = []
        self._cache = {}

    def __len__(self):
        return len(self.leaves)

    def append(self, lh):
        self.leaves.append(lh)
        return len(self.leaves) - 1

    def _mth(self, lo, hi):
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return self.leaves[lo]
        key = (lo, hi)
        h = self._cache.get(key)
        if h is None:
            k = split_point(n)
            h = node_hash(self._mth(lo, lo + k), self._mth(lo + k, hi))
            self._cache[key] = h
        return h

    def root(self, size=None):
        size = len(self.leaves) if size is None else size
        self._check_size(size)
        return self._mth(0, size)

    def inclusion_path(self, index, size=None):
        """PATH(m, D[n]) (RFC 6962 2.1.1)."""
        size = len(self.leaves) if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of size {size}")

        def path(m, lo, hi):
            n = hi - lo
            if n <= 1:
                return []
            k = split_point(n)
            if m < k:
                return path(m, lo, lo + k) + [self._mth(lo + k, hi)]
            return path(m - k, lo + k, hi) + [self._mth(lo, lo + k)]

        return path(index, 0, size)

    def consistency_proof(self, first, second=None):
        """PROOF(m, D[n]) (RFC 6962 2.1.2); empty when m is 0 or m == n."""
        second = len(self.leaves) if second is None else second
        self._check_size(second)
        if not 0 <= first <= second:
            raise ValueError(f"no consistency proof from {first} to {second}")
        if first in (0, second):
            return []

        def subproof(m, lo, hi, whole):
            n = hi - lo
            if m == n:
                return [] if whole else [self._mth(lo, hi)]
            k = split_point(n)
            if m <= k:
                return subproof(m, lo, lo + k, whole) + [self._mth(lo + k, hi)]
            return subproof(m - k, lo + k, hi, False) + [self._mth(lo, lo + k)]

        return subproof(first, 0, second, True)

    def _check_size(self, size):
        if not 0 <= size <= len(self.leaves):
            raise ValueError(f"tree size {size} is beyond {len(self.leaves)}")


# --- DER, just enough to take the poison out of a precertificate --------------

def _tlv(buf, off):
    """(tag, content start, end) of the DER element at off."""
    tag = buf[off]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not expected here")
    n = buf[off + 1]
    pos = off + 2
    if n & 0x80:
        count = n & 0x7F
        if count == 0 or count > 4:
            raise ValueError("unsupported DER length")
        n = int.from_bytes(buf[pos:pos + count], "big")
        pos += count
    end = pos + n
    if end > len(buf):
        raise ValueError("DER element runs past its container")
    return tag, pos, end


def _children(buf, start, end):
    out = []
    off = start
    while off < end:
        tag, cstart, cend = _tlv(buf, off)
        out.append((tag, off, cstart, cend))
        off = cend
    if off != end:
        raise ValueError("DER children overrun their parent")
    return out


def _der_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _der(tag, content):
    return bytes([tag]) + _der_len(len(content)) + content


def tbs_without_poison(precert_der):
    """The TBSCertificate a log puts in a precert entry: the precertificate's
    TBS with the poison extension removed (RFC 6962 3.2), re-encoded."""
    _, cstart, cend = _tlv(precert_der, 0)
    tbs_tag, tbs_off, tbs_start, tbs_end = _children(precert_der, cstart, cend)[0]
    fields = _children(precert_der, tbs_start, tbs_end)
    out = b""
    removed = 0
    for tag, off, fstart, fend in fields:
        if tag != 0xA3:                         # extensions [3] EXPLICIT
            out += precert_der[off:fend]
            continue
        _, seq_start, seq_end = _tlv(precert_der, fstart)
        kept = b""
        for _t, eoff, estart, eend in _children(precert_der, seq_start, seq_end):
            oid_tag, oid_off, _os, oid_end = _children(precert_der, estart, eend)[0]
            if precert_der[oid_off:oid_end] == POISON_OID_DER:
                removed += 1
                continue
            kept += precert_der[eoff:eend]
        if not kept:
            raise ValueError("a precertificate whose only extension is the poison")
        out += _der(0xA3, _der(0x30, kept))
    if removed != 1:
        raise ValueError(f"expected one poison extension, found {removed}")
    return _der(tbs_tag, out)


# --- the log ------------------------------------------------------------------

@dataclass
class Entry:
    """One logged certificate: where it is and what the log served/signed."""
    index: int
    entry_type: int
    timestamp_ms: int
    leaf_input: bytes           # the MerkleTreeLeaf
    extra_data: bytes
    leaf_hash: bytes
    sct: bytes                  # serialized v1 SCT over the same entry
    cert_der: bytes             # the certificate or precertificate as given
    chain_ders: tuple

    @property
    def cert_sha256(self):
        return hashlib.sha256(self.cert_der).hexdigest()


@dataclass
class STH:
    tree_size: int
    timestamp_ms: int
    root_hash: bytes
    signature: bytes            # DigitallySigned, TLS-encoded

    def json(self):
        return {"tree_size": self.tree_size, "timestamp": self.timestamp_ms,
                "sha256_root_hash": b64(self.root_hash),
                "tree_head_signature": b64(self.signature)}


def _now_ms():
    return int(time.time() * 1000)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stubborn CT log tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _https_identity(directory, address):
    """A throw-away CA and a server certificate for `address` (an IP SAN:
    a client connecting to https://127.0.0.1 checks that, not a DNS name)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    nb, na = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder()
          .subject_name(_name("CT log test CA")).issuer_name(_name("CT log test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(nb).not_valid_after(na)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                       False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(_name(f"CT log {address}")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(nb).not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(IPv4Address(address)), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_pem = directory / "https-ca.pem"
    ca_pem.write_bytes(ca.public_bytes(pem))
    chain_pem = directory / "https-chain.pem"
    chain_pem.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_pem = directory / "https-key.pem"
    key_pem.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key_pem.chmod(0o600)
    return ca_pem, chain_pem, key_pem


class CTLog(hostile.LineLog):
    """One RFC 6962 log.  Thread-safe: tests add entries from their own
    thread while the server threads answer certspotter."""

    def __init__(self, workdir, name="stubborn test log", operator="stubborn tests",
                 key_kind="ec", prefix="/ct-test/", roots=(), auto_publish=False,
                 mmd=86400):
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError("prefix must start and end with '/'")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.operator = operator
        self.key_kind = key_kind
        if key_kind == "ec":
            self.key = ec.generate_private_key(ec.SECP256R1())
        elif key_kind == "rsa":
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(f"key_kind {key_kind!r}: ec or rsa")
        self.spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.log_id = sha256(self.spki)          # RFC 6962 3.2
        self.prefix = prefix
        self.roots = [bytes(r) for r in roots]
        self.auto_publish = auto_publish
        self.mmd = mmd
        self.tree = MerkleTree()
        self.entries = []
        self.sths = []
        self._lock = threading.Lock()
        self._lines = []
        self._requests = []
        self._server = None
        self._serve_thread = None
        self._conn_threads = []
        self._conns = set()
        self._stopping = threading.Event()
        self.address = ADDRESS
        self.port = None
        self.ca_pem, self._chain_pem, self._key_pem = _https_identity(self.dir, ADDRESS)
        # A log starts with the empty tree's STH, as a new real log does.
        self.publish()

    # Signing -------------------------------------------------------------------

    def _digitally_signed(self, data):
        if self.key_kind == "rsa":
            sig = self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
            alg = SIG_RSA
        else:
            sig = self.key.sign(data, ec.ECDSA(hashes.SHA256()))
            alg = SIG_ECDSA
        return struct.pack(">BB", HASH_SHA256, alg) + u16(sig)

    def _sign_sth(self, size, timestamp_ms, root):
        """TreeHeadSignature (RFC 6962 3.5) in a DigitallySigned."""
        signed = struct.pack(">BBQQ", 0, SIG_TREE_HASH, timestamp_ms, size) + root
        return self._digitally_signed(signed)

    def _sign_sct(self, timestamp_ms, entry_type, signed_entry, extensions=b""):
        """A v1 SignedCertificateTimestamp (RFC 6962 3.2), serialized."""
        signed = (struct.pack(">BBQH", 0, SIG_CERTIFICATE_TIMESTAMP, timestamp_ms, entry_type)
                  + signed_entry + u16(extensions))
        return (b"\x00" + self.log_id + struct.pack(">Q", timestamp_ms) + u16(extensions)
                + self._digitally_signed(signed))

    # Adding entries -------------------------------------------------------------

    def _add(self, entry_type, signed_entry, extra_data, cert_der, chain, timestamp_ms):
        with self._lock:
            ts = timestamp_ms
            if ts is None:
                # Strictly increasing, so that logging the same certificate
                # twice gives two distinct leaves (a leaf hash is what
                # get-proof-by-hash looks up).
                ts = _now_ms()
                if self.entries and ts <= self.entries[-1].timestamp_ms:
                    ts = self.entries[-1].timestamp_ms + 1
            extensions = b""
            # MerkleTreeLeaf: version v1(0), leaf_type timestamped_entry(0),
            # TimestampedEntry{timestamp, entry_type, signed_entry, extensions}.
            leaf = (struct.pack(">BBQH", 0, LEAF_TIMESTAMPED_ENTRY, ts, entry_type)
                    + signed_entry + u16(extensions))
            lh = leaf_hash(leaf)
            index = self.tree.append(lh)
            e = Entry(index, entry_type, ts, leaf, extra_data, lh,
                      self._sign_sct(ts, entry_type, signed_entry, extensions),
                      bytes(cert_der), tuple(bytes(c) for c in chain))
            self.entries.append(e)
        self.log(f"entry {index}: {'precert' if entry_type else 'x509'} "
                 f"sha256 {e.cert_sha256}")
        if self.auto_publish:
            self.publish()
        return e

    def add_cert(self, cert_der, chain_ders=(), timestamp_ms=None):
        """Log a certificate (x509_entry); chain_ders is its issuer first,
        up to a root, as add-chain would have taken it."""
        chain = list(chain_ders)
        extra = u24(b"".join(u24(c) for c in chain))      # ASN.1Cert certificate_chain<>
        return self._add(ENTRY_X509, u24(cert_der), extra, cert_der, chain, timestamp_ms)

    def add_precert(self, precert_der, chain_ders, timestamp_ms=None):
        """Log a precertificate (precert_entry): chain_ders[0] must be its
        issuer (no precertificate signing certificate), whose SPKI hash is
        the entry's issuer_key_hash."""
        chain = list(chain_ders)
        if not chain:
            raise ValueError("a precertificate entry needs its issuer")
        issuer = x509.load_der_x509_certificate(chain[0])
        issuer_key_hash = sha256(issuer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
        signed_entry = issuer_key_hash + u24(tbs_without_poison(precert_der))
        # PrecertChainEntry{pre_certificate, precertificate_chain<>}.
        extra = u24(precert_der) + u24(b"".join(u24(c) for c in chain))
        return self._add(ENTRY_PRECERT, signed_entry, extra, precert_der, chain, timestamp_ms)

    def publish(self, root_hash=None):
        """Sign and publish an STH over every entry added so far.  With
        root_hash, sign that root instead: a log whose signed view its own
        entries do not back (what a monitor must catch)."""
        with self._lock:
            size = len(self.tree)
            ts = _now_ms()
            if self.sths and ts <= self.sths[-1].timestamp_ms:
                ts = self.sths[-1].timestamp_ms + 1
            root = self.tree.root(size) if root_hash is None else bytes(root_hash)
            sth = STH(size, ts, root, self._sign_sth(size, ts, root))
            self.sths.append(sth)
        self.log(f"published STH size {size} root {root.hex()}"
                 + (" (not the tree's)" if root_hash is not None else ""))
        return sth

    @property
    def sth(self):
        with self._lock:
            return self.sths[-1]

    # Log lists -----------------------------------------------------------------

    @property
    def url(self):
        if self.port is None:
            raise RuntimeError("the log has no URL before start()")
        return f"https://{self.address}:{self.port}{self.prefix}"

    def log_list_entry(self, state="usable"):
        """This log's object in a v3 log list (Chrome's log_list.json)."""
        when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
        return {
            "description": self.name,
            "log_id": b64(self.log_id),
            "key": b64(self.spki),
            "url": self.url,
            "mmd": self.mmd,
            "state": {state: {"timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ")}},
            "temporal_interval": {"start_inclusive": "2020-01-01T00:00:00Z",
                                  "end_exclusive": "2040-01-01T00:00:00Z"},
        }

    def write_log_list(self, path, others=()):
        """A v3 log list naming this log (and `others`) for certspotter's
        -logs; returns the path."""
        return write_log_list(path, [self, *others])

    # Serving -------------------------------------------------------------------

    def requests(self, endpoint=None, since=None):
        """(monotonic time, endpoint, query dict, status) of each request,
        optionally only one endpoint's ("get-sth") and only after `since`."""
        with self._lock:
            return [r for r in self._requests
                    if (endpoint is None or r[1] == endpoint)
                    and (since is None or r[0] >= since)]

    def start(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self._chain_pem), str(self._key_pem))
        ctx.set_alpn_protocols(["http/1.1"])
        self._server = _Server((self.address, 0), _Handler, self, ctx)
        self.port = self._server.server_address[1]
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"ctlog-{self.port}", daemon=True)
        self._serve_thread.start()
        self.log(f"listening on {self.url}")
        return self

    def stop(self):
        """Stop serving and join every thread; returns what did not stop."""
        problems = []
        if self._server is None:
            return problems
        self._stopping.set()
        self._server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        threads = [self._serve_thread] + list(self._conn_threads)
        for t in threads:
            t.join(JOIN_TIMEOUT)
            if t.is_alive():
                problems.append(f"CT log {self.url}: thread {t.name} still running "
                                f"{JOIN_TIMEOUT}s after stop")
        self._server.server_close()
        self._server = None
        return problems

    # Answers (called from the handler threads) --------------------------------

    def _answer(self, endpoint, query):
        """(status, JSON object) for one GET."""
        def one(name, kind=int):
            values = query.get(name)
            if not values or len(values) != 1:
                raise _BadRequest(f"{name}: exactly one value required")
            try:
                return kind(values[0])
            except ValueError:
                raise _BadRequest(f"{name}: malformed") from None

        with self._lock:
            sth = self.sths[-1]
            size = sth.tree_size
            if endpoint == "get-sth":
                return 200, sth.json()
            if endpoint == "get-roots":
                return 200, {"certificates": [b64(r) for r in self.roots]}
            if endpoint == "get-entries":
                start, end = one("start"), one("end")
                if start < 0 or end < start or start >= size:
                    raise _BadRequest(f"start={start} end={end} with tree size {size}")
                end = min(end, size - 1, start + MAX_ENTRIES - 1)
                return 200, {"entries": [{"leaf_input": b64(e.leaf_input),
                                          "extra_data": b64(e.extra_data)}
                                         for e in self.entries[start:end + 1]]}
            if endpoint == "get-sth-consistency":
                first, second = one("first"), one("second")
                if not 0 <= first <= second <= size:
                    raise _BadRequest(f"first={first} second={second} with tree size {size}")
                return 200, {"consistency": [b64(h) for h in
                                             self.tree.consistency_proof(first, second)]}
            if endpoint == "get-proof-by-hash":
                h = one("hash", lambda v: base64.b64decode(v, validate=True))
                tree_size = one("tree_size")
                if len(h) != 32 or not 0 < tree_size <= size:
                    raise _BadRequest(f"hash or tree_size={tree_size} (size {size})")
                try:
                    index = self.tree.leaves.index(h, 0, tree_size)
                except ValueError:
                    return 404, {"error": "no such leaf hash in that tree"}
                return 200, {"leaf_index": index,
                             "audit_path": [b64(p) for p in
                                            self.tree.inclusion_path(index, tree_size)]}
        return 404, {"error": f"unknown endpoint {endpoint!r}"}


def write_log_list(path, logs, timestamp=None):
    """A v3-layout log list (the schema of Chrome's log_list.json), one
    operator per distinct CTLog.operator."""
    when = timestamp or datetime.datetime.now(datetime.timezone.utc)
    operators = {}
    for lg in logs:
        op = operators.setdefault(lg.operator, {
            "name": lg.operator, "email": ["ct@example.test"], "logs": [], "tiled_logs": []})
        op["logs"].append(lg.log_list_entry())
    doc = {"version": "1.0", "log_list_timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
           "operators": list(operators.values())}
    path = Path(path)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


class _BadRequest(Exception):
    pass


class _Server(ThreadingHTTPServer):
    """HTTPS with the handshake in each connection's own thread (a client
    that stalls in the handshake holds up nobody else), threads tracked so
    stop() can join them with a bound."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, log, ctx):
        self.ctlog = log
        self.ctx = ctx
        self.count = 0
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        log = self.ctlog
        self.count += 1
        if self.count > MAX_CONNECTIONS or log._stopping.is_set():
            log.log(f"conn {self.count}: refused")
            self.shutdown_request(request)
            return
        t = threading.Thread(target=self.process_request_thread,
                             args=(request, client_address),
                             name=f"ctlog-{self.server_address[1]}-conn{self.count}",
                             daemon=True)
        with log._lock:
            log._conn_threads.append(t)
        t.start()

    def finish_request(self, request, client_address):
        log = self.ctlog
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as e:
            log.log(f"handshake from {client_address[0]}:{client_address[1]} failed: {e}")
            return
        with log._lock:
            log._conns.add(tls)
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except OSError as e:
            log.log(f"connection from {client_address[1]}: {e}")
        finally:
            with log._lock:
                log._conns.discard(tls)
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    server_version = "stubborn-ctlog"

    def log_message(self, fmt, *args):
        self.server.ctlog.log("http: " + (fmt % args))

    def _send(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        log = self.server.ctlog
        parts = urlsplit(self.path)
        endpoint = None
        base = log.prefix + "ct/v1/"
        if parts.path.startswith(base):
            endpoint = parts.path[len(base):]
        query = parse_qs(parts.query, keep_blank_values=True)
        if endpoint is None:
            status, obj = 404, {"error": "not a CT endpoint"}
        else:
            try:
                status, obj = log._answer(endpoint, query)
            except _BadRequest as e:
                status, obj = 400, {"error": str(e)}
            except ValueError as e:     # the fixture's own bug: say so loudly
                status, obj = 400, {"error": f"fixture: {e}"}
        with log._lock:
            log._requests.append((time.monotonic(), endpoint or parts.path,
                                  {k: v[0] for k, v in query.items()}, status))
        self._send(status, obj)


# --- certspotter, run against such logs -----------------------------------------

STOP_TIMEOUT = 10.0

# certspotter-script(8): a hook that records each event's environment, one
# NUL-separated file per event, renamed into place so a reader never sees
# half of one.  HOOK_ARGC (not certspotter's) is how many arguments it got.
ENV_DUMP_SCRIPT = """#!/bin/sh
# certspotter runs this once per event, with the event in its environment.
out='{out}'
tmp="$out/.event.$$"
{{ env -0; printf 'HOOK_ARGC=%s\\0' "$#"; }} > "$tmp" &&
	mv "$tmp" "$out/event-$(date +%s%N)-$$.env"
exit {status}
"""


def write_env_dump_script(path, out_dir, status=0):
    """A -script for certspotter that saves each event's environment in
    out_dir (read them back with read_events); it exits with `status`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = Path(path)
    path.write_text(ENV_DUMP_SCRIPT.format(out=out_dir, status=int(status)))
    path.chmod(0o755)
    return path


def read_events(out_dir):
    """The environments recorded by write_env_dump_script's hook, oldest
    first, each a dict (with HOOK_ARGC added by the hook itself)."""
    events = []
    for f in sorted(Path(out_dir).glob("event-*.env")):
        env = {}
        for item in f.read_bytes().split(b"\0"):
            if item:
                k, _, v = item.decode(errors="replace").partition("=")
                env[k] = v
        events.append(env)
    return events


class Certspotter:
    """certspotter as a child process with everything it reads or writes in
    one directory: its own HOME, config dir (so no hooks.d or
    email_recipients of the machine's user apply) and state dir.  Stopped
    by its PID with SIGTERM, on which it saves its state and exits 0."""

    def __init__(self, binary, workdir, logs, watchlist, script=None,
                 start_at_end=False, extra_args=(), trust=None):
        self.binary = binary
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.dir / "state"
        self.config_dir = self.dir / "config"
        self.config_dir.mkdir(exist_ok=True)
        self.watchlist = self.dir / "watchlist"
        self.watchlist.write_text("".join(f"{w}\n" for w in watchlist))
        self.logs = Path(logs)
        self.script = script
        self.start_at_end = start_at_end
        self.extra_args = tuple(extra_args)
        self.trust = trust
        self.output = self.dir / "certspotter.out"
        self.proc = None
        self.started_at = None
        self.runs = 0

    def command(self):
        cmd = [self.binary, "-logs", str(self.logs), "-watchlist", str(self.watchlist),
               "-state_dir", str(self.state_dir), "-verbose"]
        if self.script is not None:
            cmd += ["-script", str(self.script)]
        if self.start_at_end:
            cmd.append("-start_at_end")
        return cmd + list(self.extra_args)

    def environment(self):
        env = {k: v for k, v in os.environ.items()
               if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
               and not k.startswith("CERTSPOTTER_")}
        env["HOME"] = str(self.dir)
        env["CERTSPOTTER_CONFIG_DIR"] = str(self.config_dir)
        env["CERTSPOTTER_STATE_DIR"] = str(self.state_dir)
        if self.trust is not None:
            # Go reads it; certspotter 0.16 skips verifying the log's TLS
            # certificate anyway (see the module docstring).
            env["SSL_CERT_FILE"] = str(self.trust)
        return env

    def start(self):
        """Start it (again, after stop(): the state directory stays, so it
        resumes where it was).  Its first poll of each log begins at once."""
        if self.alive():
            raise RuntimeError("certspotter is already running")
        self.runs += 1
        with open(self.output, "ab") as out:
            out.write(f"--- run {self.runs}: {' '.join(self.command())}\n".encode())
            out.flush()
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(self.command(), env=self.environment(),
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM by PID and a bounded wait (then SIGKILL); returns
        (exit status, whether it had to be killed)."""
        if self.proc is None:
            return None, False
        if self.proc.poll() is not None:
            return self.proc.returncode, False
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT), False
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=STOP_TIMEOUT), True

    def log_text(self):
        try:
            return self.output.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def verified_size(self, log):
        """The tree size up to which certspotter has downloaded and checked
        `log` against a signed tree head, from its state file (written at
        the end of every poll); None before its first poll ends."""
        # Go's base64.RawURLEncoding: URL alphabet, no padding.
        d = base64.urlsafe_b64encode(log.log_id).decode().rstrip("=")
        try:
            state = json.loads((self.state_dir / "logs" / d / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        sth = state.get("verified_sth") or {}
        return sth.get("tree_size", 0 if state.get("verified_position") else None)
