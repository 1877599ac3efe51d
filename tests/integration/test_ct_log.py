"""The CT log fixture (ct_log.py) and the real certspotter watching it.

The first half checks the log against things it did not compute itself:
the RFC 6962 reference vectors, proof verifiers written here from RFC 9162
2.1.3.2 and 2.1.4.2, STH and SCT signatures checked with the key as the log
list publishes it, entries parsed byte by byte.  The second half runs
certspotter against the log and checks what its hook script receives
(certspotter-script(8)): that is the interface `stubborn ct-hook` is
written against.

certspotter polls a log when it starts and then every 5 minutes, with no
way to shorten that (see ct_log.py).  "Within one poll" is therefore tested
by starting, or restarting, certspotter after the log changed: its state
directory makes a restart resume where the last run stopped, so the
restart's first poll is exactly the poll that a running certspotter would
make next.  The live wait (certspotter left running across the 5-minute
tick) is test_live_poll_notices_a_new_entry, run only with CT_LIVE_POLL=1.
"""

import base64
import datetime
import hashlib
import json
import os
import ssl
import struct
import time
import urllib.error
import urllib.request

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

import ct_fixture
import ct_log
import slow

DER = serialization.Encoding.DER
H = lambda b: hashlib.sha256(b).digest()  # noqa: E731

# How long a test waits for certspotter's first poll to reach the hook.
# It takes well under a second here; the bound is for a loaded CI machine.
POLL_BOUND = 30.0
# certspotter's poll interval (monitorLogInterval in its source: fixed).
POLL_INTERVAL = 300.0


# --- an independent RFC 6962 / RFC 9162 implementation ----------------------

def ref_root(leaves):
    """MTH over raw leaf data, straight from RFC 6962 2.1 (slices, no
    cache), to hold ct_log.MerkleTree to."""
    n = len(leaves)
    if n == 0:
        return H(b"")
    if n == 1:
        return H(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return H(b"\x01" + ref_root(leaves[:k]) + ref_root(leaves[k:]))


def verify_inclusion(index, size, leaf_hash, proof, root):
    """RFC 9162 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if len(p) != 32 or sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = H(b"\x01" + p + r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = H(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, second, first_root, second_root, proof):
    """RFC 9162 2.1.4.2, with the trivial cases RFC 6962 allows: from the
    empty tree anything follows, and a tree is consistent with itself."""
    if first > second:
        return False
    if first == second:
        return proof == [] and first_root == second_root
    if first == 0:
        return proof == []
    if not proof or any(len(c) != 32 for c in proof):
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path = [first_root] + path
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = H(b"\x01" + c + fr)
            sr = H(b"\x01" + c + sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = H(b"\x01" + sr + c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


# The RFC 6962 reference tree (certificate-transparency's merkle tree tests,
# kept in transparency-dev/merkle): eight leaves, the root of each prefix,
# and proofs.  Inclusion vectors are (0-based index, size, path).
REF_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
REF_ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]
_h = bytes.fromhex
REF_INCLUSION = [
    (0, 8, [_h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            _h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            _h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (5, 8, [_h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            _h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            _h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 3, [_h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (1, 5, [_h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            _h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            _h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
]
REF_CONSISTENCY = [
    (1, 8, [_h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            _h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            _h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (6, 8, [_h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            _h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            _h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 5, [_h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            _h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
    (6, 7, [_h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            _h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            _h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
]


def _tree(leaves):
    t = ct_log.MerkleTree()
    for d in leaves:
        t.append(ct_log.leaf_hash(d))
    return t


def _flip(b):
    return bytes([b[0] ^ 0x10]) + b[1:]


# --- Merkle maths -----------------------------------------------------------

def test_roots_match_the_rfc6962_reference_tree():
    t = _tree(REF_LEAVES)
    for n in range(len(REF_LEAVES) + 1):
        assert t.root(n) == REF_ROOTS[n], f"size {n}"
        assert ref_root(REF_LEAVES[:n]) == REF_ROOTS[n], f"size {n} (reference code)"
    # The empty tree and the split rule: size 5 splits 4+1, not 3+2.
    assert ct_log.split_point(5) == 4 and ct_log.split_point(8) == 4
    assert ct_log.split_point(9) == 8 and ct_log.split_point(2) == 1


def test_audit_paths_match_the_reference_vectors():
    t = _tree(REF_LEAVES)
    for index, size, path in REF_INCLUSION:
        assert t.inclusion_path(index, size) == path, (index, size)
        assert verify_inclusion(index, size, t.leaves[index], path, REF_ROOTS[size])


def test_consistency_proofs_match_the_reference_vectors():
    t = _tree(REF_LEAVES)
    for first, second, proof in REF_CONSISTENCY:
        assert t.consistency_proof(first, second) == proof, (first, second)
        assert verify_consistency(first, second, REF_ROOTS[first], REF_ROOTS[second], proof)


def test_every_proof_in_trees_up_to_40_verifies_and_tampering_fails():
    data = [bytes([i, i * 7 % 256]) for i in range(40)]
    t = _tree(data)
    for n in range(1, len(data) + 1):
        root = t.root(n)
        assert root == ref_root(data[:n])
        for i in range(n):
            path = t.inclusion_path(i, n)
            assert verify_inclusion(i, n, t.leaves[i], path, root), (i, n)
            assert not verify_inclusion(i, n, _flip(t.leaves[i]), path, root)
            if path:
                assert not verify_inclusion(i, n, t.leaves[i], path[:-1], root)
                assert not verify_inclusion(i, n, t.leaves[i], [_flip(path[0])] + path[1:],
                                            root)
            if n > 1:
                assert not verify_inclusion((i + 1) % n, n, t.leaves[i], path, root)
        for m in range(0, n + 1):
            proof = t.consistency_proof(m, n)
            assert verify_consistency(m, n, t.root(m), root, proof), (m, n)
            if 0 < m < n:
                assert proof, (m, n)
                assert not verify_consistency(m, n, _flip(t.root(m)), root, proof)
                assert not verify_consistency(m, n, t.root(m), _flip(root), proof)
                assert not verify_consistency(m, n, t.root(m), root, proof[:-1])
                assert not verify_consistency(m, n, t.root(m), root,
                                              proof[:-1] + [_flip(proof[-1])])


def test_the_poison_comes_out_byte_for_byte():
    """The TBS in a precert entry is the precertificate's without the
    poison; ct_fixture builds the same certificate without it, so the two
    must agree to the byte."""
    now = int(time.time())
    ca = ct_fixture.CA(now)
    cert, precert, _key, _ = ct_fixture.issue(ca, "dns.test", now - 60, 90 * 86400)
    assert ct_log.tbs_without_poison(precert.public_bytes(DER)) == cert.tbs_certificate_bytes
    with pytest.raises(ValueError):
        ct_log.tbs_without_poison(cert.public_bytes(DER))


# --- the log over HTTPS -------------------------------------------------------

def _get(log, endpoint, **query):
    """GET an endpoint the way any client would, verifying the log's TLS
    certificate (an IP SAN for 127.0.0.1) against the log's own CA."""
    ctx = ssl.create_default_context(cafile=str(log.ca_pem))
    url = log.url + "ct/v1/" + endpoint
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _u24(buf, off):
    n = int.from_bytes(buf[off:off + 3], "big")
    return buf[off + 3:off + 3 + n], off + 3 + n


def _chain(buf):
    """ASN.1Cert certificate_chain<0..2^24-1> -> [DER]."""
    body, end = _u24(buf, 0)
    assert end == len(buf)
    out, off = [], 0
    while off < len(body):
        c, off = _u24(body, off)
        out.append(c)
    return out


def _public_key(log_list_entry):
    spki = base64.b64decode(log_list_entry["key"])
    assert base64.b64decode(log_list_entry["log_id"]) == H(spki)
    return serialization.load_der_public_key(spki)


def _verify_ds(pub, ds, signed):
    """Check a TLS DigitallySigned over `signed`; raises if it is wrong."""
    hash_alg, sig_alg = ds[0], ds[1]
    n = struct.unpack(">H", ds[2:4])[0]
    assert hash_alg == 4 and len(ds) == 4 + n
    if isinstance(pub, rsa.RSAPublicKey):
        assert sig_alg == 1
        pub.verify(ds[4:], signed, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert sig_alg == 3
        pub.verify(ds[4:], signed, ec.ECDSA(hashes.SHA256()))


def _check_sth(pub, sth):
    signed = (struct.pack(">BBQQ", 0, 1, sth["timestamp"], sth["tree_size"])
              + base64.b64decode(sth["sha256_root_hash"]))
    _verify_ds(pub, base64.b64decode(sth["tree_head_signature"]), signed)


@pytest.mark.parametrize("key_kind", ["ec", "rsa"])
def test_log_api_against_an_independent_client(ct_logs, certs, tmp_path, key_kind):
    roots = [certs.root.public_bytes(DER)]
    log = ct_logs(key_kind=key_kind, roots=roots)
    listed = json.loads(log.write_log_list(tmp_path / "logs.json").read_text())
    (entry_json,) = listed["operators"][0]["logs"]
    assert entry_json["url"] == log.url and "state" in entry_json
    pub = _public_key(entry_json)
    chain = [certs.intermediate.public_bytes(DER), certs.root.public_bytes(DER)]

    status, sth0 = _get(log, "get-sth")
    assert status == 200 and sth0["tree_size"] == 0
    assert base64.b64decode(sth0["sha256_root_hash"]) == H(b"")
    _check_sth(pub, sth0)

    leaves = [certs[n].leaf.public_bytes(DER) for n in ("good", "wrongname", "rogue")]
    added = [log.add_cert(d, chain) for d in leaves]
    # Not published yet: not served.
    assert _get(log, "get-sth")[1]["tree_size"] == 0
    assert _get(log, "get-entries", start=0, end=0)[0] == 400
    log.publish()
    status, sth3 = _get(log, "get-sth")
    assert status == 200 and sth3["tree_size"] == 3
    assert sth3["timestamp"] > sth0["timestamp"]
    assert sth3["timestamp"] <= time.time() * 1000 + 1000
    _check_sth(pub, sth3)
    # A signature over anything else does not verify.
    with pytest.raises(InvalidSignature):
        _check_sth(pub, dict(sth3, tree_size=4))

    # get-entries: the end is clamped to the tree, and each leaf is the
    # MerkleTreeLeaf of an x509_entry holding exactly the certificate.
    status, got = _get(log, "get-entries", start=0, end=999)
    assert status == 200 and len(got["entries"]) == 3
    raw_leaves = []
    for i, (e, der) in enumerate(zip(got["entries"], leaves)):
        leaf = base64.b64decode(e["leaf_input"])
        raw_leaves.append(leaf)
        version, leaf_type, ts, entry_type = struct.unpack(">BBQH", leaf[:12])
        assert (version, leaf_type, entry_type) == (0, 0, 0)
        assert ts == added[i].timestamp_ms
        cert, off = _u24(leaf, 12)
        assert cert == der and leaf[off:] == b"\x00\x00"     # no CtExtensions
        assert _chain(base64.b64decode(e["extra_data"])) == chain
        # The SCT the log issued for it verifies, over the same entry.
        sct = added[i].sct
        assert sct[0] == 0 and sct[1:33] == base64.b64decode(entry_json["log_id"])
        assert struct.unpack(">Q", sct[33:41])[0] == ts and sct[41:43] == b"\x00\x00"
        _verify_ds(pub, sct[43:], struct.pack(">BBQH", 0, 0, ts, 0)
                   + len(der).to_bytes(3, "big") + der + b"\x00\x00")
    assert ref_root(raw_leaves) == base64.b64decode(sth3["sha256_root_hash"])
    assert _get(log, "get-entries", start=1, end=1)[1]["entries"][0]["leaf_input"] == \
        got["entries"][1]["leaf_input"]
    for bad in ({"start": 3, "end": 3}, {"start": 2, "end": 1}, {"start": -1, "end": 0},
                {"start": "x", "end": 1}):
        assert _get(log, "get-entries", **bad)[0] == 400, bad

    # get-proof-by-hash, for each leaf in each published size.
    root3 = base64.b64decode(sth3["sha256_root_hash"])
    for i, leaf in enumerate(raw_leaves):
        lh = H(b"\x00" + leaf)
        q = urllib.request.quote(base64.b64encode(lh).decode(), safe="")
        status, proof = _get(log, "get-proof-by-hash", hash=q, tree_size=3)
        assert status == 200 and proof["leaf_index"] == i
        assert verify_inclusion(i, 3, lh, [base64.b64decode(p) for p in proof["audit_path"]],
                                root3)
    unknown = urllib.request.quote(base64.b64encode(H(b"nothing")).decode(), safe="")
    assert _get(log, "get-proof-by-hash", hash=unknown, tree_size=3)[0] == 404
    assert _get(log, "get-proof-by-hash", hash=unknown, tree_size=4)[0] == 400

    # Grow the log and prove the new tree extends the old one.
    more = log.add_cert(certs["untrusted"].leaf.public_bytes(DER),
                        [certs.untrusted_root.public_bytes(DER)])
    log.publish()
    status, sth4 = _get(log, "get-sth")
    _check_sth(pub, sth4)
    root4 = base64.b64decode(sth4["sha256_root_hash"])
    assert more.index == 3 and sth4["tree_size"] == 4
    roots_by_size = {0: H(b""), 3: root3, 4: root4}
    for first, second in ((3, 4), (0, 4), (4, 4), (0, 3), (3, 3)):
        status, c = _get(log, "get-sth-consistency", first=first, second=second)
        assert status == 200
        proof = [base64.b64decode(p) for p in c["consistency"]]
        assert verify_consistency(first, second, roots_by_size[first],
                                  roots_by_size[second], proof), (first, second)
    assert _get(log, "get-sth-consistency", first=3, second=5)[0] == 400
    assert _get(log, "get-sth-consistency", first=4, second=3)[0] == 400

    status, r = _get(log, "get-roots")
    assert status == 200 and [base64.b64decode(c) for c in r["certificates"]] == roots
    # Anything but the read API is not there.
    assert _get(log, "add-chain")[0] == 404


def test_precert_entry_is_what_rfc6962_says(ct_logs, tmp_path):
    now = int(time.time())
    ca = ct_fixture.CA(now)
    cert, precert, _key, _ = ct_fixture.issue(ca, "dns.test", now - 60, 90 * 86400)
    chain = [ca.cert.public_bytes(DER), ca.root.public_bytes(DER)]
    log = ct_logs()
    e = log.add_precert(precert.public_bytes(DER), chain)
    log.publish()
    got = _get(log, "get-entries", start=0, end=0)[1]["entries"][0]
    leaf = base64.b64decode(got["leaf_input"])
    assert struct.unpack(">BBQH", leaf[:12]) == (0, 0, e.timestamp_ms, 1)
    assert leaf[12:44] == ca.issuer_key_hash
    tbs, off = _u24(leaf, 44)
    assert tbs == cert.tbs_certificate_bytes and leaf[off:] == b"\x00\x00"
    extra = base64.b64decode(got["extra_data"])
    pre, off = _u24(extra, 0)
    assert pre == precert.public_bytes(DER)
    assert _chain(extra[off:]) == chain


# --- certspotter --------------------------------------------------------------

def _spki_sha256(cert):
    return hashlib.sha256(cert.public_key().public_bytes(
        DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()



def _wait_poll_done(cs, log, timeout=POLL_BOUND):
    """Until certspotter has checked the whole published tree (its state
    file says so), or it died; returns whether it got there."""
    size = log.sth.tree_size
    return slow.wait_until(lambda: cs.verified_size(log) == size or not cs.alive(), timeout=timeout) \
        and cs.verified_size(log) == size


def _pem_certs(path):
    """Every certificate in a PEM file, in order (cryptography 38 has no
    load_pem_x509_certificates)."""
    text = open(path).read()
    out = []
    for block in text.split("-----END CERTIFICATE-----")[:-1]:
        out.append(x509.load_pem_x509_certificate(
            (block + "-----END CERTIFICATE-----\n").encode()))
    return out


def _assert_discovered(ev, cert, chain, log, index, watch_item, tbs):
    """One discovered_cert event, field by field as certspotter-script(8)
    documents them, against what the test logged."""
    der = cert.public_bytes(DER)
    assert ev["EVENT"] == "discovered_cert", ev
    # The hook is run with no arguments at all: `-script` names a program,
    # and whatever it needs (a conf path) must be in it or its environment.
    assert ev["HOOK_ARGC"] == "0"
    assert ev["WATCH_ITEM"] == watch_item
    assert ev["LOG_URI"] == log.url
    assert ev["ENTRY_INDEX"] == str(index)
    assert ev["CERT_SHA256"] == hashlib.sha256(der).hexdigest()
    assert ev["PUBKEY_SHA256"] == _spki_sha256(cert)
    assert ev["TBS_SHA256"] == hashlib.sha256(tbs).hexdigest()
    assert ev["SERIAL"] == format(cert.serial_number, "x")
    assert ev["NOT_BEFORE_UNIXTIME"] == str(int(cert.not_valid_before.replace(
        tzinfo=datetime.timezone.utc).timestamp()))
    assert ev["NOT_AFTER_UNIXTIME"] == str(int(cert.not_valid_after.replace(
        tzinfo=datetime.timezone.utc).timestamp()))
    assert "CN=" + cert.subject.get_attributes_for_oid(
        x509.oid.NameOID.COMMON_NAME)[0].value in ev["SUBJECT_DN"]
    assert watch_item in ev["SUMMARY"]
    # CERT_FILENAME: the PEM chain, the logged certificate first.
    saved = _pem_certs(ev["CERT_FILENAME"])
    assert [c.public_bytes(DER) for c in saved] == [der] + list(chain)
    meta = json.loads(open(ev["JSON_FILENAME"]).read())
    assert meta["pubkey_sha256"] == ev["PUBKEY_SHA256"]
    assert meta["tbs_sha256"] == ev["TBS_SHA256"]
    assert os.path.isfile(ev["TEXT_FILENAME"])


def _setup(tmp_path, log, others=()):
    logs = log.write_log_list(tmp_path / "logs.json", others)
    events = tmp_path / "events"
    script = ct_log.write_env_dump_script(tmp_path / "hook.sh", events)
    return logs, events, script


def test_certspotter_reports_watched_names_in_its_first_poll(
        ct_logs, certspotter, certs, tmp_path, record_property):
    """A log holding noise and then certificates for a watched name, an
    unwatched one and a watched subdomain: certspotter started once reports
    exactly the watched ones, with the environment the hook relies on."""
    log = ct_logs()
    chain = [certs.intermediate.public_bytes(DER), certs.root.public_bytes(DER)]
    now = int(time.time())
    ca = ct_fixture.CA(now)
    ca_chain = [ca.cert.public_bytes(DER), ca.root.public_bytes(DER)]
    for i in range(5):
        noise, *_ = ct_fixture.issue(ca, f"noise{i}.example", now - 60, 86400)
        log.add_cert(noise.public_bytes(DER), ca_chain)
    good = log.add_cert(certs["good"].leaf.public_bytes(DER), chain)
    log.add_cert(certs["wrongname"].leaf.public_bytes(DER), chain)       # other.test
    sub, *_ = ct_fixture.issue(ca, "deep.sub.test", now - 60, 86400)
    deep = log.add_cert(sub.public_bytes(DER), ca_chain)
    # Same name as watched but as a suffix only: "xdns.test" must not match.
    lookalike, *_ = ct_fixture.issue(ca, "xdns.test", now - 60, 86400)
    log.add_cert(lookalike.public_bytes(DER), ca_chain)
    # Logged again (a second log entry, same certificate): reported once.
    log.add_cert(certs["good"].leaf.public_bytes(DER), chain)
    log.publish()
    logs, events, script = _setup(tmp_path, log)

    cs = certspotter(logs, ["dns.test", ".sub.test"], script, trust=log.ca_pem)
    t0 = cs.started_at
    assert slow.wait_until(lambda: ct_log.read_events(events), POLL_BOUND), cs.log_text()
    first_event = time.monotonic() - t0
    assert _wait_poll_done(cs, log), cs.log_text()
    poll_done = time.monotonic() - t0
    record_property("certspotter_first_event_s", round(first_event, 3))
    record_property("certspotter_poll_done_s", round(poll_done, 3))
    print(f"certspotter: first event {first_event:.3f}s, poll done {poll_done:.3f}s "
          f"after start")

    evs = ct_log.read_events(events)
    assert len(evs) == 2, evs
    by_item = {e["WATCH_ITEM"]: e for e in evs}
    assert set(by_item) == {"dns.test", ".sub.test"}
    _assert_discovered(by_item["dns.test"], certs["good"].leaf, chain, log, good.index,
                       "dns.test", certs["good"].leaf.tbs_certificate_bytes)
    _assert_discovered(by_item[".sub.test"], sub, ca_chain, log, deep.index,
                       ".sub.test", sub.tbs_certificate_bytes)
    # The poll was a get-sth and get-entries from 0, clamped to the tree.
    assert [r[1] for r in log.requests()][:2] == ["get-sth", "get-entries"]
    assert log.requests("get-entries")[0][2] == {"start": "0", "end": "999"}
    assert not log.requests("get-sth-consistency") and not log.requests("get-roots")
    assert cs.alive(), cs.log_text()


def test_a_restart_resumes_and_its_first_poll_finds_only_new_entries(
        ct_logs, certspotter, certs, tmp_path, record_property):
    """-start_at_end skips what was logged before; after a restart (the
    state directory kept) the next poll reports what was logged while it
    was down, and only that: a poll sees each entry once."""
    log = ct_logs()
    chain = [certs.intermediate.public_bytes(DER), certs.root.public_bytes(DER)]
    for name in ("good", "wrongname", "good"):
        log.add_cert(certs[name].leaf.public_bytes(DER), chain)
    log.publish()
    logs, events, script = _setup(tmp_path, log)

    cs = certspotter(logs, ["dns.test"], script, start_at_end=True, trust=log.ca_pem)
    assert _wait_poll_done(cs, log), cs.log_text()
    # Starting at the end of a 3-entry log means rebuilding the tree from
    # the last entry and its audit path.
    assert log.requests("get-proof-by-hash"), log.log_text()
    assert cs.stop() == (0, False), cs.log_text()
    assert ct_log.read_events(events) == []

    rogue = log.add_cert(certs["rogue"].leaf.public_bytes(DER), chain)
    log.add_cert(certs["wrongname"].leaf.public_bytes(DER), chain)
    log.publish()
    cs.start()
    t0 = cs.started_at
    assert slow.wait_until(lambda: ct_log.read_events(events), POLL_BOUND), cs.log_text()
    took = time.monotonic() - t0
    assert _wait_poll_done(cs, log), cs.log_text()
    record_property("certspotter_restart_event_s", round(took, 3))
    print(f"certspotter: event {took:.3f}s after restart")
    (ev,) = ct_log.read_events(events)
    _assert_discovered(ev, certs["rogue"].leaf, chain, log, rogue.index, "dns.test",
                       certs["rogue"].leaf.tbs_certificate_bytes)
    # It resumed at 3: no entry before that was fetched again.
    assert log.requests("get-entries", since=t0)[0][2]["start"] == "3"


def test_precertificate_and_certificate_share_tbs_and_key(ct_logs, certspotter, tmp_path):
    """A CA logs the precertificate, then the certificate: two events, one
    per CERT_SHA256, with the same TBS_SHA256 and PUBKEY_SHA256 (what a
    hook should key on)."""
    now = int(time.time())
    ca = ct_fixture.CA(now)
    cert, precert, _key, _ = ct_fixture.issue(ca, "dns.test", now - 60, 90 * 86400)
    chain = [ca.cert.public_bytes(DER), ca.root.public_bytes(DER)]
    log = ct_logs()
    pe = log.add_precert(precert.public_bytes(DER), chain)
    ce = log.add_cert(cert.public_bytes(DER), chain)
    log.publish()
    logs, events, script = _setup(tmp_path, log)
    cs = certspotter(logs, ["dns.test"], script, trust=log.ca_pem)
    assert slow.wait_until(lambda: len(ct_log.read_events(events)) >= 2, POLL_BOUND), cs.log_text()
    assert _wait_poll_done(cs, log), cs.log_text()
    pre_ev, cert_ev = sorted(ct_log.read_events(events), key=lambda e: int(e["ENTRY_INDEX"]))
    _assert_discovered(pre_ev, precert, chain, log, pe.index, "dns.test",
                       cert.tbs_certificate_bytes)
    _assert_discovered(cert_ev, cert, chain, log, ce.index, "dns.test",
                       cert.tbs_certificate_bytes)
    assert pre_ev["CERT_SHA256"] != cert_ev["CERT_SHA256"]


def test_certspotter_checks_what_the_log_signs(ct_logs, certspotter, certs, tmp_path):
    """The positive tests mean something only if certspotter verifies the
    fixture: an STH signed by another key is refused (nothing reported),
    and so is a signed root the entries do not hash to."""
    chain = [certs.intermediate.public_bytes(DER)]
    other = ct_logs("other-key")              # only its key is used
    log = ct_logs("signed-by-another")
    log.add_cert(certs["good"].leaf.public_bytes(DER), chain)
    log.publish()
    lst = log.write_log_list(tmp_path / "wrong-key.json")
    doc = json.loads(lst.read_text())
    entry = doc["operators"][0]["logs"][0]
    entry["key"] = base64.b64encode(other.spki).decode()
    entry["log_id"] = base64.b64encode(other.log_id).decode()
    lst.write_text(json.dumps(doc))
    events = tmp_path / "events"
    script = ct_log.write_env_dump_script(tmp_path / "hook.sh", events)
    cs = certspotter(lst, ["dns.test"], script)
    assert slow.wait_until(lambda: "invalid signature" in cs.log_text(), POLL_BOUND), cs.log_text()
    assert not log.requests("get-entries")
    assert ct_log.read_events(events) == []

    # A log that signs a root its entries do not produce.  certspotter
    # 0.16 processes entries as they download and checks the root after,
    # so the hook may already have run: the signal is the error and that
    # certspotter does not advance its verified position.
    liar = ct_logs("liar")
    liar.add_cert(certs["good"].leaf.public_bytes(DER), chain)
    liar.publish(root_hash=H(b"a view no entries back"))
    cs2 = certspotter(liar.write_log_list(tmp_path / "liar.json"), ["dns.test"], script)
    assert slow.wait_until(lambda: "does not match the entries" in cs2.log_text(), POLL_BOUND), \
        cs2.log_text()
    assert not cs2.verified_size(liar)
    # ... after having run the hook for the entry all the same.
    (ev,) = ct_log.read_events(events)
    assert ev["EVENT"] == "discovered_cert" and ev["LOG_URI"] == liar.url


def test_certspotter_does_not_verify_the_logs_tls_certificate(ct_logs, certspotter, certs,
                                                               tmp_path):
    """certspotter 0.16 reads a log whose HTTPS certificate its trust store
    (here: a CA that did not issue it) cannot verify.  If a later version
    starts verifying, this fails: pass trust=log.ca_pem then."""
    log = ct_logs()
    log.add_cert(certs["good"].leaf.public_bytes(DER), [certs.intermediate.public_bytes(DER)])
    log.publish()
    logs, events, script = _setup(tmp_path, log)
    cs = certspotter(logs, ["dns.test"], script, trust=certs.root_pem)
    assert _wait_poll_done(cs, log), cs.log_text()
    assert len(ct_log.read_events(events)) == 1


def test_a_failing_hook_stops_certspotter(ct_logs, certspotter, certs, tmp_path):
    """certspotter treats a hook's non-zero exit as a local failure: it
    exits non-zero, and the entry is reported again next time (it is not
    marked notified).  `stubborn ct-hook` must therefore exit 0 on any
    event it has handled, and fail only when it really could not."""
    chain = [certs.intermediate.public_bytes(DER)]
    log = ct_logs()
    log.add_cert(certs["good"].leaf.public_bytes(DER), chain)
    log.publish()
    logs = log.write_log_list(tmp_path / "logs.json")
    events = tmp_path / "events"
    failing = ct_log.write_env_dump_script(tmp_path / "fail.sh", events, status=3)
    cs = certspotter(logs, ["dns.test"], failing)
    assert slow.wait_until(lambda: not cs.alive(), POLL_BOUND), cs.log_text()
    assert cs.proc.returncode != 0
    assert "exited with code 3" in cs.log_text()
    assert len(ct_log.read_events(events)) == 1

    # Fixed hook, same state: the certificate is reported again.
    cs.script = ct_log.write_env_dump_script(tmp_path / "ok.sh", events)
    cs.start()
    assert slow.wait_until(lambda: len(ct_log.read_events(events)) == 2, POLL_BOUND), cs.log_text()
    assert _wait_poll_done(cs, log), cs.log_text()
    assert len(ct_log.read_events(events)) == 2


def test_error_events_reach_the_hook(ct_logs, certspotter, certs, tmp_path):
    """EVENT=error comes from certspotter's health check (daily by
    default).  -healthcheck takes any Go duration, so a few seconds gives a
    test its error events: here the log list counts as stale at once (it is
    reloaded every 30-90 minutes) and the log itself signs with a key the
    list does not name."""
    log = ct_logs()
    other = ct_logs("other-key")
    log.add_cert(certs["good"].leaf.public_bytes(DER), [certs.intermediate.public_bytes(DER)])
    log.publish()
    lst = log.write_log_list(tmp_path / "logs.json")
    doc = json.loads(lst.read_text())
    doc["operators"][0]["logs"][0].update(key=base64.b64encode(other.spki).decode(),
                                          log_id=base64.b64encode(other.log_id).decode())
    lst.write_text(json.dumps(doc))
    events = tmp_path / "events"
    script = ct_log.write_env_dump_script(tmp_path / "hook.sh", events)
    cs = certspotter(lst, ["dns.test"], script, extra_args=("-healthcheck", "2s"))
    assert slow.wait_until(lambda: ct_log.read_events(events), POLL_BOUND), cs.log_text()
    ev = ct_log.read_events(events)[0]
    assert ev["EVENT"] == "error" and ev["SUMMARY"], ev
    assert ev["HOOK_ARGC"] == "0"
    assert "certspotter" in open(ev["TEXT_FILENAME"]).read()
    for absent in ("WATCH_ITEM", "CERT_SHA256", "PUBKEY_SHA256", "CERT_FILENAME"):
        assert absent not in ev


@pytest.mark.skipif(os.environ.get("CT_LIVE_POLL") != "1",
                    reason="waits for certspotter's fixed 5-minute poll; set CT_LIVE_POLL=1")
def test_live_poll_notices_a_new_entry(ct_logs, certspotter, certs, tmp_path,
                                       record_property):
    """certspotter left running: an entry logged after its first poll is
    reported at the next one, within one interval."""
    chain = [certs.intermediate.public_bytes(DER)]
    log = ct_logs()
    logs, events, script = _setup(tmp_path, log)
    cs = certspotter(logs, ["dns.test"], script, trust=log.ca_pem)
    assert _wait_poll_done(cs, log), cs.log_text()
    first_poll = log.requests("get-sth")[0][0]
    log.add_cert(certs["good"].leaf.public_bytes(DER), chain)
    log.publish()
    added = time.monotonic()
    assert slow.wait_until(lambda: ct_log.read_events(events), POLL_INTERVAL + POLL_BOUND, step=0.5), \
        cs.log_text()
    took = time.monotonic() - added
    polls = [r[0] - first_poll for r in log.requests("get-sth")]
    record_property("certspotter_live_event_s", round(took, 3))
    print(f"certspotter: live event {took:.1f}s after the entry; get-sth at {polls}")
    assert len(polls) >= 2 and polls[1] <= POLL_INTERVAL + POLL_BOUND
