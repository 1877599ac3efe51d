"""The trust gate: an upstream whose certificate fails chain, hostname or pin
checks never sees a query, is reported in one JSON incident line, is
quarantined, and its queries are answered by the next upstream."""

import pytest
from cryptography.x509.oid import NameOID

import clients
import pki
import servers


def _who(port, tag, tcp=False):
    q, r = clients.ask(port, servers.who_name(tag), "TXT", tcp=tcp)
    assert r.id == q.id
    assert r.rcode() == 0, clients.rcode_text(r)
    return clients.answer_strings(r, "TXT")


def _check_incident(inc, bad, cert, reason, quarantine):
    assert inc["event"] == "trust-incident"
    assert inc["upstream"] == bad.name
    assert inc["host"] == pki.HOSTNAME
    assert inc["address"] == f"{bad.address}:{bad.port}"
    assert inc["reason"] == reason
    assert isinstance(inc["detail"], str) and inc["detail"].strip()
    assert inc["spki_pin"] == cert.pin
    assert inc["leaf_sha256"].lower() == cert.leaf_sha256
    # DN layout differs between printers (RFC 4514, OpenSSL oneline, ...);
    # the CN values are what identify the certificates.
    assert _cn(cert.leaf.issuer) in inc["issuer"], inc["issuer"]
    assert _cn(cert.leaf.subject) in inc["subject"], inc["subject"]
    assert isinstance(inc["sans"], list) and inc["sans"]
    assert any(cert.hostname in s for s in inc["sans"]), inc["sans"]
    assert inc["quarantine_seconds"] == quarantine


def _cn(name):
    return name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


# (certificate the first upstream presents, pins configured, expected reason)
BAD_FIRST = [
    pytest.param("rogue", True, "pin", id="rogue-key-pin"),
    pytest.param("wrongname", True, "hostname", id="wrongname-pinned"),
    pytest.param("wrongname", False, "hostname", id="wrongname-unpinned"),
    pytest.param("untrusted", True, "chain", id="untrusted-ca-pinned"),
    pytest.param("untrusted", False, "chain", id="untrusted-ca-unpinned"),
]


@pytest.mark.parametrize("bad_cert,pinned,reason", BAD_FIRST)
def test_bad_first_upstream_is_skipped(upstream, stubborn, certs, bad_cert, pinned, reason):
    bad = upstream("first", bad_cert)
    good = upstream("second", "good")
    pins = [certs["good"].pin] if pinned else []
    s = stubborn([bad.spec(pins=pins), good.spec(pins=pins)], quarantine=3600)

    assert _who(s.port, "t1") == ["second"]
    q, r = clients.ask(s.port, servers.zone_name(5), "A", tcp=True)
    assert clients.answer_strings(r, "A") == [servers.zone_a(5)]

    assert bad.queries_seen() == 0, bad.queries()
    assert good.queries_seen() >= 2

    incidents = s.incidents()
    assert incidents, "no trust-incident JSON line in stubborn's log"
    mine = [i for i in incidents if i.get("upstream") == "first"]
    assert mine, incidents
    assert all(i.get("upstream") == "first" for i in incidents), incidents
    _check_incident(mine[0], bad, certs[bad_cert], reason, 3600)

    # Quarantined: later queries go straight to the good upstream, and no
    # new handshake with the bad one means no new incident either.
    seen = len(incidents)
    for i in range(5):
        assert _who(s.port, f"after{i}", tcp=bool(i % 2)) == ["second"]
    assert bad.queries_seen() == 0, bad.queries()
    assert len(s.incidents()) == seen


def test_pin_of_intermediate_accepts_leaf_under_it(upstream, stubborn, certs):
    # Pinning the intermediate's key lets a leaf rotate under it.
    first = upstream("first", "good")
    s = stubborn([first.spec(pins=[pki.spki_pin(certs.intermediate)])])
    assert _who(s.port, "inter") == ["first"]
    assert s.incidents() == []


def test_any_of_repeated_pins_accepts(upstream, stubborn, certs):
    first = upstream("first", "good")
    s = stubborn([first.spec(pins=[certs["rogue"].pin, certs["good"].pin])])
    assert _who(s.port, "repeat") == ["first"]
    assert s.incidents() == []


def test_per_upstream_ca_file_is_a_trust_tier(upstream, stubborn, certs):
    # The upstream's own ca-file vouches for it instead of [trust] ca-file:
    # a server under the otherwise untrusted root is accepted there...
    first = upstream("first", "untrusted")
    s = stubborn([first.spec(ca_file=certs.untrusted_root_pem)])
    assert _who(s.port, "tier") == ["first"]
    assert s.incidents() == []


def test_per_upstream_ca_file_excludes_the_global_ca(upstream, stubborn, certs):
    # ...and only the CAs it names: a certificate from the global CA fails
    # the chain check for that upstream.
    first = upstream("first", "good")
    second = upstream("second", "good")
    s = stubborn([first.spec(ca_file=certs.untrusted_root_pem), second.spec()])
    assert _who(s.port, "tier") == ["second"]
    assert first.queries_seen() == 0
    inc = [i for i in s.incidents() if i.get("upstream") == "first"]
    assert inc and inc[0]["reason"] == "chain", s.incidents()
