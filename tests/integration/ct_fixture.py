#!/usr/bin/python3
"""Offline Certificate Transparency material for stubborn's tests.

Everything a CT test needs is generated here, with no network and no CT log:
test logs (ECDSA P-256, or RSA-2048) grouped under named operators, a CA
(root -> intermediate), leaves for one hostname that carry RFC 6962 v1
precertificate SCTs in the 1.3.6.1.4.1.11129.2.4.2 extension, optional
TLS-extension SCTs over the final certificate, and a log list in the v3
layout that Chrome and Apple publish.  A JSON sidecar next to each leaf says
which log signed each SCT, when, and what a verifier must conclude, so tests
compare stubborn's verdicts to intent rather than to a recording.

Library use (what the tests do):

    u = ct_fixture.Universe(now=None)        # one CA + a fixed set of logs
    u.write(directory)                       # root.pem, log_list.json, ...
    leaf = u.preset("ok2")                   # a Leaf; leaf.chain_pem, ...
    u.write_log_list(path, timestamp=...)    # variants: stale, partial

Command line:

    ct_fixture.py presets --out DIR [NAME ...]   every preset (or those named)
    ct_fixture.py custom --out DIR --operators A,A,B [knobs]
    ct_fixture.py list                           the presets and their intent

Only the standard library and python3-cryptography (38 or newer) are used.
"""

import argparse
import base64
import datetime
import hashlib
import json
import os
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki import spki_pin

HOSTNAME = "dns.test"
DAY = 86400
UTC = datetime.timezone.utc

OID_SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")

# RFC 6962 enumerations.
ENTRY_X509 = 0
ENTRY_PRECERT = 1
SIG_RSA = 1
SIG_ECDSA = 3
HASH_SHA256 = 4

# What stubborn prints per SCT (`sct: ... status=`) and puts in incident JSON.
VALID = "valid"
INVALID = "invalid"
UNKNOWN_LOG = "unknown_log"
FUTURE = "future"

STATES = ("pending", "qualified", "usable", "readonly", "retired", "rejected")

# SCTs are back-dated from `now` by this much unless told otherwise.  OpenSSL
# has no clock-skew allowance (a handshake compares whole seconds), so an SCT
# from "now" can be judged to be from the future.
DEFAULT_SCT_AGE = 3600
MIN_SCT_AGE = 2


# --- encodings ------------------------------------------------------------

def u16(data):
    """TLS opaque<0..2^16-1>."""
    return struct.pack(">H", len(data)) + data


def u24(data):
    """TLS opaque<1..2^24-1>."""
    return struct.pack(">I", len(data))[1:] + data


def der_length(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def leaf_index_extension(index):
    """The CtExtensions a static-ct-api (tiled) log puts in every SCT: one
    leaf_index(0) entry holding a 40-bit index.  Signed, so it must survive
    parsing and re-serialisation byte for byte."""
    return struct.pack(">BH", 0, 5) + index.to_bytes(5, "big")


def sct_list(serialized):
    """SignedCertificateTimestampList (RFC 6962 s3.3)."""
    return u16(b"".join(u16(s) for s in serialized))


def spki_der(public_key):
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def b64(data):
    return base64.b64encode(data).decode()


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# --- time -----------------------------------------------------------------

def rfc3339(unix):
    return datetime.datetime.fromtimestamp(int(unix), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text):
    """Unix seconds or RFC 3339 -> Unix seconds (int)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"{text!r}: a time zone is required")
    return int(when.timestamp())


def _dt(unix):
    return datetime.datetime.fromtimestamp(int(unix), UTC)


def _write(path, data, mode=0o644):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    path.chmod(mode)
    return path


# --- logs -----------------------------------------------------------------

class Log:
    """One test CT log: a key pair, the operator that runs it, and how the
    log list describes it."""

    def __init__(self, description, operator, *, kind="ec", state="usable",
                 state_time=None, tiled=False, listed=True,
                 previous_operators=(), mmd=None, slug=None):
        if state not in STATES:
            raise ValueError(f"unknown log state {state!r}")
        self.description = description
        self.operator = operator
        self.kind = kind
        if kind == "rsa":
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif kind == "ec":
            self.key = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"unknown key kind {kind!r}")
        self.spki = spki_der(self.key.public_key())
        self.log_id = hashlib.sha256(self.spki).digest()   # RFC 6962 s3.2
        self.state = state
        self.state_time = state_time
        self.tiled = tiled
        self.listed = listed
        # [(name, end_time unix)], oldest first, as in the v3 schema.
        self.previous_operators = sorted(previous_operators, key=lambda p: p[1])
        self.mmd = mmd if mmd is not None else (60 if tiled else DAY)
        self.slug = slug or "".join(c for c in description.lower() if c.isalnum())[:24]

    @property
    def log_id_b64(self):
        return b64(self.log_id)

    @property
    def key_b64(self):
        return b64(self.spki)

    def operator_at(self, unix):
        """The operator running the log at a given time: the first previous
        operator whose tenure had not ended yet, else the current one."""
        for name, end in self.previous_operators:
            if unix < end:
                return name
        return self.operator

    def sct(self, timestamp_ms, entry_type, signed_entry, extensions=b"",
            corrupt=False):
        """A serialized v1 SignedCertificateTimestamp (RFC 6962 s3.2)."""
        signed = (struct.pack(">BBQH", 0, 0, timestamp_ms, entry_type)
                  + signed_entry + u16(extensions))
        if self.kind == "rsa":
            sig_alg = SIG_RSA
            sig = self.key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
        else:
            sig_alg = SIG_ECDSA
            sig = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        if corrupt:
            # The last byte of an ECDSA DER signature is inside s, of an RSA
            # one inside the signature value: either way still well formed,
            # so the SCT parses and only verification fails.
            sig = sig[:-1] + bytes([sig[-1] ^ 0x01])
        return (struct.pack(">B", 0) + self.log_id + struct.pack(">Q", timestamp_ms)
                + u16(extensions) + struct.pack(">BB", HASH_SHA256, sig_alg) + u16(sig))

    def entry(self, now):
        """This log's object in a v3 log list."""
        when = self.state_time if self.state_time is not None else now - 365 * DAY
        state = {"timestamp": rfc3339(when)}
        if self.state == "readonly":
            state["final_tree_head"] = {"sha256_root_hash": b64(bytes(32)), "tree_size": 0}
        e = {"description": self.description, "log_id": self.log_id_b64,
             "key": self.key_b64}
        if self.tiled:
            e["submission_url"] = f"https://{self.slug}.ct.test/"
            e["monitoring_url"] = f"https://{self.slug}.mon.ct.test/"
        else:
            e["url"] = f"https://{self.slug}.ct.test/"
        e["mmd"] = self.mmd
        e["state"] = {self.state: state}
        e["temporal_interval"] = {"start_inclusive": "2020-01-01T00:00:00Z",
                                  "end_exclusive": "2040-01-01T00:00:00Z"}
        if self.previous_operators:
            e["previous_operators"] = [{"name": n, "end_time": rfc3339(t)}
                                       for n, t in self.previous_operators]
        return e


def log_list(logs, timestamp, version="1.0", reference=None):
    """A v3-layout log list holding the listed ones of `logs`, grouped by
    operator in order of first appearance.  `timestamp` (Unix seconds) is
    log_list_timestamp; default state times are a year before `reference`
    (default: the timestamp)."""
    operators = {}
    for lg in logs:
        if not lg.listed:
            continue
        op = operators.setdefault(lg.operator, {
            "name": lg.operator,
            "email": [f"ct@{''.join(c for c in lg.operator.lower() if c.isalnum())}.test"],
            "logs": [], "tiled_logs": []})
        op["tiled_logs" if lg.tiled else "logs"].append(
            lg.entry(timestamp if reference is None else reference))
    return {"version": version, "log_list_timestamp": rfc3339(timestamp),
            "operators": list(operators.values())}


def openssl_cnf(logs):
    """The same listed logs in OpenSSL's CTLOG_STORE_load_file format, so
    the SCTs can be cross-checked with OpenSSL's own verifier."""
    names = [f"log_{lg.log_id.hex()}" for lg in logs if lg.listed]
    out = ["enabled_logs = " + ",".join(names), ""]
    for lg in logs:
        if not lg.listed:
            continue
        # NCONF expands $ and cuts at #, so keep only harmless characters.
        desc = "".join(c if c.isalnum() or c in " '._-()" else "_" for c in lg.description)
        out += [f"[log_{lg.log_id.hex()}]", f"description = {desc}", f"key = {lg.key_b64}", ""]
    return "\n".join(out)


# --- certificates ---------------------------------------------------------

def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stubborn CT tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CA:
    """Root -> intermediate.  The intermediate issues every leaf, so its SPKI
    hash is the issuer_key_hash of every precertificate entry."""

    def __init__(self, now, cn="stubborn CT test"):
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.key = ec.generate_private_key(ec.SECP256R1())
        nb, na = _dt(now - 30 * DAY), _dt(now + 3650 * DAY)
        self.root = self._ca(f"{cn} root", self.root_key, None, nb, na)
        self.cert = self._ca(f"{cn} intermediate", self.key, self.root_key, nb, na)

    def _ca(self, cn, key, signer, nb, na):
        b = (x509.CertificateBuilder()
             .subject_name(_name(cn))
             .issuer_name(self.root.subject if signer else _name(cn))
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(nb).not_valid_after(na)
             .add_extension(x509.BasicConstraints(
                 ca=True, path_length=None if signer is None else 0), critical=True)
             .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                          False, False), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                            critical=False))
        if signer is not None:
            b = b.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False)
        return b.sign(signer or key, hashes.SHA256())

    @property
    def issuer_key_hash(self):
        return hashlib.sha256(spki_der(self.key.public_key())).digest()

    def write(self, directory):
        d = Path(directory)
        _write(d / "root.pem", cert_pem(self.root))
        _write(d / "intermediate.pem", cert_pem(self.cert))
        _write(d / "root.key", key_pem(self.root_key), 0o600)
        _write(d / "intermediate.key", key_pem(self.key), 0o600)


@dataclass
class SctSpec:
    """One SCT to put on a leaf, and what a correct verifier makes of it."""
    log: Log
    timestamp_ms: int
    source: str = "embedded"          # or "tls"
    corrupt: bool = False
    extensions: bytes = b""
    # Statuses a correct verifier may print; the first is the intended one.
    accept: tuple = ()
    note: str = ""

    def expected(self, check_ms):
        if self.accept:
            return self.accept
        if not self.log.listed:
            return (UNKNOWN_LOG,)
        if self.corrupt:
            return (INVALID,)
        if self.timestamp_ms > check_ms:
            return (FUTURE,)
        return (VALID,)

    def counts_for(self, check_ms):
        """Whether a Chrome-policy verifier may count this SCT: verified,
        from a listed log in a state that counts, and for a retired log
        issued before the retirement (embedded SCTs only)."""
        lg = self.log
        if self.expected(check_ms)[0] != VALID or lg.state in ("pending", "rejected"):
            return False
        if lg.state == "retired":
            return self.source == "embedded" and self.timestamp_ms < lg.state_time * 1000
        return True


@dataclass
class Leaf:
    """A generated server certificate and everything written for it."""
    name: str
    host: str
    cert: x509.Certificate
    precert: x509.Certificate
    key: object
    ca: CA
    scts: list
    tls_scts: list
    tls_list: bytes
    not_before: int
    not_after: int
    now: int
    check_time: int
    compliant: dict = field(default_factory=dict)
    description: str = ""
    directory: Path = None

    @property
    def chain_pem(self):
        return self.directory / "chain.pem"

    @property
    def key_pem(self):
        return self.directory / "key.pem"

    @property
    def leaf_pem(self):
        return self.directory / "leaf.pem"

    @property
    def sidecar(self):
        return self.directory / "scts.json"

    @property
    def pin(self):
        return spki_pin(self.cert)

    @property
    def leaf_sha256(self):
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def lifetime(self):
        return self.not_after - self.not_before

    def expected_scts(self):
        """The sidecar's records: one dict per SCT."""
        check_ms = self.check_time * 1000
        out = []
        for s in list(self.scts) + list(self.tls_scts):
            secs = s.timestamp_ms // 1000
            out.append({
                "source": s.source,
                "log": s.log.slug,
                "description": s.log.description if s.log.listed else None,
                "log_id": s.log.log_id_b64,
                "operator": s.log.operator_at(secs) if s.log.listed else None,
                "operator_now": s.log.operator if s.log.listed else None,
                "listed": s.log.listed,
                "log_state": s.log.state if s.log.listed else None,
                "timestamp": rfc3339(secs),
                "timestamp_ms": s.timestamp_ms,
                "status": s.expected(check_ms)[0],
                "accept": list(s.expected(check_ms)),
                "corrupt": s.corrupt,
                "extensions_hex": s.extensions.hex(),
                "counts": s.counts_for(check_ms),
                "note": s.note,
            })
        return out

    def write(self, directory, log_list_name="log_list.json"):
        d = self.directory = Path(directory)
        _write(d / "leaf.pem", cert_pem(self.cert))
        _write(d / "precert.pem", cert_pem(self.precert))
        _write(d / "chain.pem", cert_pem(self.cert) + cert_pem(self.ca.cert))
        _write(d / "fullchain.pem", cert_pem(self.cert) + cert_pem(self.ca.cert)
               + cert_pem(self.ca.root))
        _write(d / "key.pem", key_pem(self.key), 0o600)
        if self.tls_scts:
            write_tls_scts(d, self.tls_list)
        side = {
            "name": self.name,
            "description": self.description,
            "host": self.host,
            "now": rfc3339(self.now), "now_unix": self.now,
            "check_time": rfc3339(self.check_time), "check_time_unix": self.check_time,
            "not_before": rfc3339(self.not_before), "not_after": rfc3339(self.not_after),
            "lifetime_seconds": self.lifetime,
            "spki_pin": self.pin,
            "leaf_sha256": self.leaf_sha256,
            # Relative: the directory may be moved or copied.
            "log_list": os.path.relpath(d.parent / log_list_name, d),
            "root": os.path.relpath(d.parent / "root.pem", d),
            "compliant": self.compliant,
            "scts": self.expected_scts(),
        }
        _write(d / "scts.json", json.dumps(side, indent=2) + "\n")
        return self


def write_tls_scts(directory, raw):
    """The TLS-extension SCT list, raw and as `openssl s_server -serverinfo`
    files: SERVERINFO (TLS <= 1.2 only) and SERVERINFOV2 with context 0x11C0
    (ClientHello | TLS 1.2 ServerHello | ignore on resumption | TLS 1.3
    Certificate), without which a TLS 1.3 handshake carries no TLS SCTs."""
    d = Path(directory)
    _write(d / "tls_scts.bin", raw)
    blob = struct.pack(">HH", 18, len(raw)) + raw
    _write(d / "serverinfo.pem",
           "-----BEGIN SERVERINFO FOR signed_certificate_timestamp-----\n"
           + base64.encodebytes(blob).decode()
           + "-----END SERVERINFO FOR signed_certificate_timestamp-----\n")
    blob2 = struct.pack(">IHH", 0x11C0, 18, len(raw)) + raw
    _write(d / "serverinfo-v2.pem",
           "-----BEGIN SERVERINFOV2 FOR signed_certificate_timestamp-----\n"
           + base64.encodebytes(blob2).decode()
           + "-----END SERVERINFOV2 FOR signed_certificate_timestamp-----\n")


def issue(ca, host, not_before, lifetime, embedded=(), tls=(), key=None):
    """Issue a leaf for `host` under `ca` carrying the given SCTs.

    The precertificate and the final certificate come from one builder with
    one serial, one validity and one extension order; the poison and the SCT
    list are each added last, so dropping either gives the same TBS, which is
    what the logs signed and what a verifier rebuilds."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    nb, na = _dt(not_before), _dt(not_before + lifetime)

    def builder():
        return (x509.CertificateBuilder()
                .subject_name(_name(host)).issuer_name(ca.cert.subject)
                .public_key(key.public_key()).serial_number(serial)
                .not_valid_before(nb).not_valid_after(na)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                             False, False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca.key.public_key()), critical=False))

    precert = (builder().add_extension(x509.PrecertPoison(), critical=True)
               .sign(ca.key, hashes.SHA256()))
    # cryptography refuses tbs_precertificate_bytes on a poisoned certificate,
    # so the signed TBS is taken from the same builder without the poison.
    tbs = builder().sign(ca.key, hashes.SHA256()).tbs_certificate_bytes
    precert_entry = ca.issuer_key_hash + u24(tbs)

    b = builder()
    if embedded:
        lst = sct_list([s.log.sct(s.timestamp_ms, ENTRY_PRECERT, precert_entry,
                                  s.extensions, s.corrupt) for s in embedded])
        # extnValue is itself an OCTET STRING wrapping the TLS-encoded list.
        b = b.add_extension(x509.UnrecognizedExtension(
            OID_SCT_LIST, b"\x04" + der_length(len(lst)) + lst), critical=False)
    cert = b.sign(ca.key, hashes.SHA256())
    if embedded:
        assert cert.tbs_precertificate_bytes == tbs, "precertificate and final TBS differ"
        assert cert.serial_number == precert.serial_number

    tls_list = b""
    if tls:
        der = cert.public_bytes(serialization.Encoding.DER)
        tls_list = sct_list([s.log.sct(s.timestamp_ms, ENTRY_X509, u24(der), s.extensions,
                                       s.corrupt) for s in tls])
    return cert, precert, key, tls_list


def verify_embedded(cert, issuer, logs):
    """Re-verify a leaf's embedded SCTs along a path independent of the one
    that made them: cryptography's own SCT-extension parser and the
    TBS it strips itself.  Returns [(log_id_b64, timestamp_ms, verified)];
    `logs` maps raw log_id -> Log, and unknown logs verify as False."""
    try:
        ext = cert.extensions.get_extension_for_class(
            x509.PrecertificateSignedCertificateTimestamps)
    except x509.ExtensionNotFound:
        return []
    ikh = hashlib.sha256(spki_der(issuer.public_key())).digest()
    entry = ikh + u24(cert.tbs_precertificate_bytes)
    epoch = datetime.datetime(1970, 1, 1)
    out = []
    for sct in ext.value:
        ts = (sct.timestamp - epoch) // datetime.timedelta(milliseconds=1)
        signed = (struct.pack(">BBQH", 0, 0, ts, ENTRY_PRECERT) + entry
                  + u16(sct.extension_bytes))
        lg = logs.get(sct.log_id)
        ok = False
        if lg is not None:
            try:
                if lg.kind == "rsa":
                    lg.key.public_key().verify(sct.signature, signed, padding.PKCS1v15(),
                                               hashes.SHA256())
                else:
                    lg.key.public_key().verify(sct.signature, signed, ec.ECDSA(hashes.SHA256()))
                ok = True
            except Exception:   # InvalidSignature, or a mangled DER signature
                ok = False
        out.append((b64(sct.log_id), ts, ok))
    return out


# --- reading stubborn's check-cert output ----------------------------------

CHECKS = ("chain", "hostname", "pin", "ct", "verdict")
_ATTR = re.compile(r'(\w+)=(?:"([^"]*)"|(\S*))')


@dataclass
class CheckCert:
    """One `stubborn check-cert` run: exit status, raw output, the one line
    per check (text after "NAME: ") and the sct lines as dicts."""
    status: int
    stdout: str
    stderr: str
    checks: dict
    scts: list
    duplicates: list

    def __str__(self):
        return (f"exit {self.status}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}")


def parse_check_cert(status, stdout, stderr):
    checks, scts, dup = {}, [], []
    for line in stdout.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        rest = rest.strip()
        if key == "sct":
            scts.append({m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
                         for m in _ATTR.finditer(rest)})
        elif key in CHECKS:
            if key in checks:
                dup.append(key)
            checks[key] = rest
    return CheckCert(status, stdout, stderr, checks, scts, dup)


def parse_rfc3339_ms(text):
    """RFC 3339 with or without a fraction -> (whole seconds, ms or None)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        raise ValueError(f"not RFC 3339: {text!r}")
    secs = parse_time(m.group(1) + m.group(3))
    ms = int((m.group(2) + "00")[:3]) if m.group(2) else None
    return secs, ms


def sct_mismatches(got, expected):
    """Differences between reported SCTs (check-cert lines, or incident
    "scts" objects with their JSON keys) and the sidecar records; [] if
    they agree.  Matched by source and log_id, since one log may give both
    an embedded and a TLS SCT; order is not part of the contract."""
    problems = []
    if len(got) != len(expected):
        problems.append(f"{len(got)} SCT(s) reported, {len(expected)} presented")
    by_id = {}
    for g in got:
        by_id.setdefault((g.get("source"), g.get("log_id")), []).append(g)
    for e in expected:
        found = by_id.get((e["source"], e["log_id"]), [])
        who = f"{e['source']} SCT of log {e['log']} ({e['log_id']})"
        if len(found) != 1:
            problems.append(f"{who}: reported {len(found)} time(s)")
            continue
        g = found[0]
        if g.get("status") not in e["accept"]:
            problems.append(f"{who}: status {g.get('status')!r}, expected one of {e['accept']}")
        if e["listed"] and g.get("status") != UNKNOWN_LOG:
            desc = g.get("log", g.get("description"))
            if desc != e["description"]:
                problems.append(f"{who}: description {desc!r}, expected {e['description']!r}")
            if g.get("operator") not in (e["operator"], e["operator_now"]):
                problems.append(f"{who}: operator {g.get('operator')!r}, expected "
                                f"{e['operator']!r}")
        when = g.get("time", g.get("timestamp"))
        try:
            secs, ms = parse_rfc3339_ms(when or "")
            if secs != e["timestamp_ms"] // 1000 or (ms is not None
                                                     and ms != e["timestamp_ms"] % 1000):
                problems.append(f"{who}: time {when!r}, expected {e['timestamp']} "
                                f"({e['timestamp_ms']} ms)")
        except ValueError as err:
            problems.append(f"{who}: {err}")
    return problems


# --- the shared universe and its presets ----------------------------------

@dataclass
class Preset:
    description: str
    scts: tuple                 # log slugs, in certificate order
    days: float = 90
    lifetime: int = None        # seconds; overrides days
    corrupt: tuple = ()         # slugs whose SCT gets a bad signature
    future: tuple = ()          # slugs whose SCT is dated after the check time
    chrome: bool = None         # compliant under the policy (None: not asserted)
    apple: bool = None
    tls: tuple = ()             # log slugs giving TLS-extension SCTs


PRESETS = {
    "ok2": Preset("90-day leaf, 2 SCTs from 2 logs of 2 operators",
                  ("alpha1", "beta1"), chrome=True, apple=True),
    "ok3_long": Preset("200-day leaf, 3 SCTs from 3 logs of 2 operators (2 + 1)",
                       ("alpha1", "alpha2", "beta1"), days=200, chrome=True, apple=True),
    "too_few_long": Preset("200-day leaf, 2 SCTs from 2 operators: over 180 days needs 3",
                           ("alpha1", "beta1"), days=200, chrome=False, apple=False),
    "one_operator": Preset("90-day leaf, 2 SCTs from 2 logs of the same operator",
                           ("alpha1", "alpha2"), chrome=False, apple=False),
    "one_sct": Preset("90-day leaf, 1 SCT", ("alpha1",), chrome=False, apple=False),
    "bad_sig": Preset("3 SCTs, alpha2's signature corrupted; alpha1 + beta1 still suffice",
                      ("alpha1", "alpha2", "beta1"), corrupt=("alpha2",), chrome=True, apple=True),
    "bad_sig_fail": Preset("3 SCTs, beta1's signature corrupted: what is left is one operator",
                           ("alpha1", "alpha2", "beta1"), corrupt=("beta1",),
                           chrome=False, apple=False),
    "unknown_log": Preset("2 SCTs, one from a log that is not in the list",
                          ("alpha1", "rogue"), chrome=False, apple=False),
    "future": Preset("2 SCTs, beta1's dated an hour after the check time",
                     ("alpha1", "beta1"), future=("beta1",), chrome=False, apple=False),
    "retired_before": Preset("SCT from a log retired after the SCT, plus a usable log of "
                             "another operator", ("alpha_retired", "beta1"),
                             chrome=True, apple=True),
    "retired_after": Preset("SCT from a log retired before the SCT, plus a usable log of "
                            "another operator", ("beta_early", "alpha1"),
                            chrome=False, apple=False),
    "only_retired": Preset("2 SCTs from 2 operators' logs, both retired after the SCTs: "
                           "no current log", ("alpha_retired", "beta_retired"),
                           chrome=False, apple=False),
    "tiled": Preset("2 SCTs, one from a static-ct-api (tiled) log",
                    ("alpha1", "gamma_tiled"), chrome=True, apple=True),
    "no_scts": Preset("a plain certificate without SCTs", (), chrome=False, apple=False),
    "rsa": Preset("2 SCTs, one signed by an RSA-2048 log", ("alpha1", "gamma_rsa"),
                  chrome=True, apple=True),
    "readonly": Preset("2 SCTs, one from a read-only log", ("delta_readonly", "alpha1"),
                       chrome=True),
    "qualified_odd_name": Preset("2 SCTs, one from a qualified log whose description holds "
                                 "# and $", ("gamma_odd", "alpha1"), chrome=True, apple=True),
    "pending": Preset("2 SCTs, one from a pending log", ("delta_pending", "alpha1"),
                      chrome=False, apple=False),
    "rejected": Preset("2 SCTs, one from a rejected log", ("delta_rejected", "alpha1"),
                       chrome=False, apple=False),
    "edge_180": Preset("lifetime 180 days minus 1 s: 2 SCTs suffice",
                       ("alpha1", "beta1"), lifetime=180 * DAY - 1, chrome=True, apple=True),
    # Where the policies part: Chrome compares notAfter - notBefore with 180
    # days, Apple counts both ends (RFC 5280), which makes this 180 days + 1 s.
    "exact_180": Preset("lifetime exactly 180 days, 2 SCTs: enough for Chrome, not for Apple",
                        ("alpha1", "beta1"), lifetime=180 * DAY, chrome=True, apple=False),
    "edge_181": Preset("lifetime 180 days plus 1 s: 2 SCTs are too few",
                       ("alpha1", "beta1"), lifetime=180 * DAY + 1, chrome=False, apple=False),
    "previous_operator_same": Preset(
        "alpha1 + a log Beta took over from Alpha after the SCT: one operator at SCT time",
        ("alpha1", "moved"), chrome=False),
    "previous_operator_distinct": Preset(
        "beta1 + a log Beta took over from Alpha after the SCT: two operators at SCT time",
        ("beta1", "moved"), chrome=True),
}


# Leaves whose SCTs (some or all) travel in the TLS extension: only a
# handshake with `openssl s_server -serverinfo` delivers them, so check-cert
# cannot judge these.  Chrome counts TLS SCTs only from logs that are
# current at the time of check, never from retired ones.
TLS_PRESETS = {
    "tls_ok": Preset("no embedded SCTs; TLS SCTs from 2 logs of 2 operators", (),
                     tls=("alpha1", "beta1"), chrome=True),
    "tls_one": Preset("no embedded SCTs; 1 TLS SCT", (), tls=("alpha1",), chrome=False),
    "tls_retired": Preset("no embedded SCTs; TLS SCTs from a usable and a retired log", (),
                          tls=("beta1", "alpha_retired"), chrome=False),
    "tls_same_log": Preset("the same log embedded and in TLS: one log, counted once",
                           ("alpha1",), tls=("alpha1",), chrome=False),
}


class Universe:
    """One CA, one fixed set of logs and one log list shared by every
    preset, so that upstreams presenting different presets can sit behind
    one stubborn with one `ct-log-list`."""

    OPERATORS = ("Alpha CT", "Beta CT", "Gamma CT", "Delta CT")

    def __init__(self, now=None, host=HOSTNAME, sct_age=DEFAULT_SCT_AGE, check_delay=5):
        if sct_age < MIN_SCT_AGE:
            raise ValueError(f"sct_age must be at least {MIN_SCT_AGE}s")
        self.now = int(now) if now is not None else int(datetime.datetime.now(UTC).timestamp())
        self.host = host
        self.sct_age = sct_age
        # Tests pass this as `--at`: shortly after issuance, as a handshake is.
        self.check_time = self.now + check_delay
        self.ca = CA(self.now)
        sct_time = self.now - sct_age
        A, B, G, D = self.OPERATORS
        logs = [
            Log("Alpha 'Aurora' log", A, slug="alpha1"),
            Log("Alpha 'Borealis' log", A, slug="alpha2"),
            # Retired half-way between the SCTs and now: their SCTs still count.
            Log("Alpha 'Dusk' log", A, state="retired", state_time=self.now - sct_age // 2,
                slug="alpha_retired"),
            Log("Beta 'Cedar' log", B, slug="beta1"),
            Log("Beta 'Pine' log", B, state="retired", state_time=self.now - sct_age // 2,
                slug="beta_retired"),
            # Retired before its SCTs were issued: those SCTs do not count.
            Log("Beta 'Ash' log", B, state="retired", state_time=sct_time - 3600,
                slug="beta_early"),
            # Alpha ran it until after the SCTs were issued.
            Log("Beta 'Drift' log", B, previous_operators=[(A, self.now - sct_age // 2)],
                slug="moved"),
            Log("Gamma 'Tessera' log", G, state="qualified", tiled=True, slug="gamma_tiled"),
            Log("Gamma 'Kestrel' log", G, kind="rsa", slug="gamma_rsa"),
            # NCONF would expand the $ and cut at the #: a loader that goes
            # through OpenSSL's conf format must sanitise.
            Log("Gamma 'Owl' #2 $HOME log", G, state="qualified", slug="gamma_odd"),
            Log("Delta 'Heron' log", D, state="readonly", slug="delta_readonly"),
            Log("Delta 'Larch' log", D, state="pending", state_time=self.now - DAY,
                slug="delta_pending"),
            Log("Delta 'Gone' log", D, state="rejected", state_time=self.now - 30 * DAY,
                slug="delta_rejected"),
            Log("Rogue 'Shadow' log", "Rogue CT", listed=False, slug="rogue"),
        ]
        self.logs = {lg.slug: lg for lg in logs}
        self._leaves = {}
        self.directory = None

    # Log lists -------------------------------------------------------------

    def log_list(self, timestamp=None, omit=(), edit=None):
        """The universe's list; `omit` drops logs by slug, `edit(dict)` may
        change the result further before it is returned."""
        logs = [lg for slug, lg in self.logs.items() if slug not in omit]
        # A stale copy must describe the same logs, so state times stay
        # relative to issuance whatever the list's own timestamp.
        ll = log_list(logs, self.now if timestamp is None else timestamp, reference=self.now)
        if edit is not None:
            edit(ll)
        return ll

    def write_log_list(self, path, **kw):
        _write(path, json.dumps(self.log_list(**kw), indent=2) + "\n")
        return Path(path)

    # Leaves ----------------------------------------------------------------

    def leaf(self, name, slugs, lifetime, corrupt=(), future=(),
             compliant=None, description="", tls=()):
        """Issue a leaf whose SCTs come from the given logs (by slug)."""
        base_ms = (self.now - self.sct_age) * 1000
        specs = []
        for i, slug in enumerate(slugs):
            lg = self.logs[slug]
            # Distinct per SCT, and with a millisecond part, so a verifier that
            # mixes up seconds and milliseconds gets caught.
            ts = base_ms - i * 1000 + 123
            if slug in future:
                ts = (self.check_time + 3600) * 1000 + 123
            accept = ()
            if lg.state in ("pending", "rejected"):
                # A loader may keep such a log (and not count it) or drop it.
                accept = (VALID, UNKNOWN_LOG)
            specs.append(SctSpec(lg, ts, corrupt=slug in corrupt, accept=accept,
                                 extensions=leaf_index_extension(1000 + i) if lg.tiled else b"",
                                 note="dated after the check time" if slug in future else ""))
        tls_specs = [SctSpec(self.logs[s], base_ms - 10_000 - i * 1000 + 7, source="tls")
                     for i, s in enumerate(tls)]
        # notBefore a little before the first SCT, as when a CA logs a precert.
        not_before = self.now - self.sct_age - 120
        cert, precert, key, tls_list = issue(self.ca, self.host, not_before, lifetime,
                                             specs, tls_specs)
        leaf = Leaf(name, self.host, cert, precert, key, self.ca, specs, tls_specs, tls_list,
                    not_before, not_before + lifetime, self.now, self.check_time,
                    compliant or {}, description)
        self._leaves[name] = leaf
        if self.directory is not None:
            leaf.write(self.directory / name)
        return leaf

    def preset(self, name):
        """The leaf of a named preset, issued once per universe."""
        if name in self._leaves:
            return self._leaves[name]
        p = PRESETS[name] if name in PRESETS else TLS_PRESETS[name]
        lifetime = p.lifetime if p.lifetime is not None else int(p.days * DAY)
        return self.leaf(name, p.scts, lifetime, corrupt=p.corrupt, future=p.future,
                         compliant={"chrome": p.chrome, "apple": p.apple},
                         description=p.description, tls=p.tls)

    # Files -------------------------------------------------------------------

    def write(self, directory, presets=()):
        """Write the CA, the logs' keys, the list, and the named presets
        (each in a subdirectory); later preset() calls write there too."""
        d = self.directory = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.ca.write(d)
        self.write_log_list(d / "log_list.json")
        _write(d / "ct_log_list.cnf", openssl_cnf(self.logs.values()))
        for slug, lg in self.logs.items():
            _write(d / "logs" / f"{slug}.key", key_pem(lg.key), 0o600)
        for leaf in self._leaves.values():
            leaf.write(d / leaf.name)
        for name in presets:
            self.preset(name)
        return self

    @property
    def root_pem(self):
        return self.directory / "root.pem"

    @property
    def log_list_path(self):
        return self.directory / "log_list.json"


# --- command line -----------------------------------------------------------

def _indexes(text):
    return [int(x) for x in text.split(",") if x.strip() != ""]


def _by_index(specs, what):
    """'I=VALUE' arguments -> {I: VALUE}."""
    out = {}
    for spec in specs:
        idx, sep, value = spec.partition("=")
        if not sep or not idx.strip().isdigit():
            raise SystemExit(f"--{what}: expected INDEX=VALUE, got {spec!r}")
        out[int(idx)] = value
    return out


def _custom(a):
    now = parse_time(a.now) if a.now else int(datetime.datetime.now(UTC).timestamp())
    if a.sct_age < MIN_SCT_AGE:
        raise SystemExit(f"--sct-age must be at least {MIN_SCT_AGE}")
    ops = [o.strip() for o in a.operators.split(",") if o.strip()]
    states = _by_index(a.state, "state")
    prev = _by_index(a.previous_operator, "previous-operator")
    future = {}
    for spec in a.future:
        idx, _, secs = spec.partition("=")
        future[int(idx)] = int(secs) if secs else 3600
    tiled, unlisted = set(_indexes(a.tiled)), set(_indexes(a.unlisted))
    rsa_logs = set(_indexes(a.rsa))
    logs = []
    for i, op in enumerate(ops):
        st, _, when = states.get(i, "usable").partition("@")
        po = []
        if i in prev:
            name, _, end = prev[i].partition("@")
            po = [(name, parse_time(end))]
        logs.append(Log(f"{op} test log {i}", op, kind="rsa" if i in rsa_logs else "ec",
                        state=st, state_time=parse_time(when) if when else None,
                        tiled=i in tiled, listed=i not in unlisted, previous_operators=po,
                        slug=f"log{i}"))
    embed = list(range(len(logs))) if a.embed is None else _indexes(a.embed)
    tls = _indexes(a.tls)
    check = now + a.check_delay
    base_ms = (now - a.sct_age) * 1000
    corrupt = set(_indexes(a.corrupt))
    specs = []
    for n, i in enumerate(embed):
        ts = base_ms - n * 1000 + 123
        if i in future:
            ts = (check + future[i]) * 1000 + 123
        specs.append(SctSpec(logs[i], ts, corrupt=i in corrupt,
                             extensions=leaf_index_extension(1000 + n) if i in tiled else b""))
    tls_specs = [SctSpec(logs[i], base_ms - 10_000 - n * 1000 + 7, source="tls")
                 for n, i in enumerate(tls)]
    ca = CA(now)
    lifetime = a.lifetime if a.lifetime is not None else int(a.days * DAY)
    not_before = now - a.sct_age - 120
    cert, precert, key, tls_list = issue(ca, a.host, not_before, lifetime, specs, tls_specs)
    out = Path(a.out)
    ca.write(out)
    list_ts = parse_time(a.list_timestamp) if a.list_timestamp else now - int(a.list_age * DAY)
    ll = log_list(logs, list_ts, reference=now)
    _write(out / "log_list.json", json.dumps(ll, indent=2) + "\n")
    _write(out / "ct_log_list.cnf", openssl_cnf(logs))
    for lg in logs:
        _write(out / "logs" / f"{lg.slug}.key", key_pem(lg.key), 0o600)
    leaf = Leaf("custom", a.host, cert, precert, key, ca, specs, tls_specs, tls_list,
                not_before, not_before + lifetime, now, check)
    # The presets' layout: the leaf in a subdirectory, the CA and list beside it.
    leaf.write(out / "leaf")
    print(f"wrote {out}: {len(specs)} embedded SCT(s), {len(tls_specs)} TLS SCT(s), "
          f"{len(logs)} log(s); check time {rfc3339(check)} ({check})")


def _presets(a):
    names = a.names or list(PRESETS) + list(TLS_PRESETS)
    for n in names:
        if n not in PRESETS and n not in TLS_PRESETS:
            raise SystemExit(f"unknown preset {n!r}; `{sys.argv[0]} list` names them")
    u = Universe(parse_time(a.now) if a.now else None, a.host, a.sct_age)
    u.write(a.out, names)
    if a.stale_days:
        u.write_log_list(Path(a.out) / "log_list_stale.json",
                         timestamp=u.now - int(a.stale_days * DAY))
    print(f"wrote {a.out}: {len(names)} preset(s) under one CA and one log list; "
          f"check time {rfc3339(u.check_time)} ({u.check_time})")


def _list(_a):
    for name, p in list(PRESETS.items()) + list(TLS_PRESETS.items()):
        verdict = ", ".join(f"{pol}={'compliant' if v else 'not compliant'}"
                            for pol, v in (("chrome", p.chrome), ("apple", p.apple))
                            if v is not None)
        print(f"{name:28} {p.description} [{verdict}]")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--now", help="issuance time, Unix seconds or RFC 3339 (default: now)")
    common.add_argument("--host", default=HOSTNAME, help="leaf DNS name (default %(default)s)")
    common.add_argument("--sct-age", type=int, default=DEFAULT_SCT_AGE,
                        help="SCTs are dated this many seconds before --now "
                             f"(default %(default)s, at least {MIN_SCT_AGE})")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", parents=[common],
                       help="write the named presets (default: all) under one CA and list")
    p.add_argument("--out", required=True)
    p.add_argument("--stale-days", type=float, default=0,
                   help="also write log_list_stale.json, timestamped this many days ago")
    p.add_argument("names", nargs="*")
    p.set_defaults(func=_presets)

    c = sub.add_parser("custom", parents=[common],
                       help="one leaf from logs described by index-based knobs")
    c.add_argument("--out", required=True)
    c.add_argument("--operators", default="Alpha,Beta",
                   help="comma list: one log per entry, run by that operator")
    c.add_argument("--days", type=float, default=90, help="leaf lifetime in days")
    c.add_argument("--lifetime", type=int, help="leaf lifetime in seconds (overrides --days)")
    c.add_argument("--embed", help="log indexes with an embedded SCT (default: all)")
    c.add_argument("--tls", default="", help="log indexes with a TLS-extension SCT")
    c.add_argument("--rsa", default="", help="log indexes with an RSA-2048 key")
    c.add_argument("--corrupt", default="", help="log indexes whose SCT signature is corrupted")
    c.add_argument("--future", action="append", default=[],
                   help="I[=SECONDS]: date log I's SCT SECONDS (default 3600) after the check time")
    c.add_argument("--state", action="append", default=[],
                   help="I=STATE[@TIME]: STATE one of " + "|".join(STATES)
                        + " (default usable, a year before --now)")
    c.add_argument("--tiled", default="", help="log indexes listed under tiled_logs")
    c.add_argument("--unlisted", default="", help="log indexes left out of the list")
    c.add_argument("--previous-operator", action="append", default=[],
                   help="I=NAME@TIME: log I was run by NAME until TIME")
    c.add_argument("--list-timestamp", help="log_list_timestamp (default: --now)")
    c.add_argument("--list-age", type=float, default=0,
                   help="date the list this many days before --now (a stale list)")
    c.add_argument("--check-delay", type=int, default=5,
                   help="suggested check time = --now + this (written to the sidecar)")
    c.set_defaults(func=_custom)

    ls = sub.add_parser("list", help="name the presets and what each should yield")
    ls.set_defaults(func=_list)

    a = ap.parse_args(argv)
    try:
        a.func(a)
    except ValueError as e:     # a bad time, state or index: a usage error
        raise SystemExit(f"{ap.prog}: {e}")


if __name__ == "__main__":
    main()
