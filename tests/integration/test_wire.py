"""What goes over the wire, both ways: answers too large for the client's
UDP size come back truncated (and whole over TCP), the DO bit reaches the
upstream, every upstream query is padded to a multiple of 128 bytes (RFC
7830, RFC 8467), no EDNS Client Subnet leaves or comes back (the client's
subnet is exactly what an encrypted upstream must not learn), and a client
that sent no OPT record gets none."""

import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

import clients
import hostile as hostile_mod
import servers
import slow

BIG_EXPECTED = sorted(servers.big_txt(i) for i in range(servers.BIG_COUNT))
ECS = dns.edns.ECSOption("192.0.2.0", 24)


@pytest.fixture
def via_unbound(upstream, stubborn):
    return stubborn([upstream("first").spec()])


def _big(port, tcp=False, **edns):
    q = slow.query(servers.BIG, "TXT", **edns)
    raw, r = slow.exchange(port, q, tcp=tcp)
    assert r.id == q.id
    assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
    return raw, r


def _assert_truncated(raw, r, limit):
    assert len(raw) <= limit, len(raw)
    assert r.flags & dns.flags.TC, dns.flags.to_text(r.flags)


def _assert_whole(r):
    assert not r.flags & dns.flags.TC, dns.flags.to_text(r.flags)
    assert sorted(clients.answer_strings(r, "TXT")) == BIG_EXPECTED


def test_large_answer_truncated_to_the_clients_udp_size(via_unbound):
    port = via_unbound.port
    # No EDNS: RFC 1035's 512 bytes.  The UDP answer comes first, so a
    # truncated copy must not be what the cache then hands the TCP client.
    _assert_truncated(*_big(port), 512)
    _assert_whole(_big(port, tcp=True)[1])
    # Now the whole answer is cached, and UDP still must not get it.
    _assert_truncated(*_big(port), 512)
    # The answer (~2.3 kB) is over 1232 bytes too.
    _assert_truncated(*_big(port, use_edns=0, payload=1232), 1232)
    _assert_whole(_big(port, tcp=True, use_edns=0, payload=1232)[1])


def test_truncated_answer_to_an_edns_client_keeps_edns(via_unbound):
    # RFC 6891 6.1.1: a query with an OPT record gets one back, TC or not;
    # without it the client cannot tell the server does EDNS at all.
    for _ in range(2):      # from the upstream, then from the cache
        raw, r = _big(via_unbound.port, use_edns=0, payload=1232)
        _assert_truncated(raw, r, 1232)
        assert r.edns >= 0, "the truncated answer to an EDNS client has no OPT record"


@pytest.mark.parametrize("cli", ["kdig", "dig"])
def test_cli_clients_retry_over_tcp_and_get_the_whole_answer(via_unbound, cli, request):
    binary = request.getfixturevalue(f"{cli}_bin")
    a = getattr(clients, cli)(binary, via_unbound.port, servers.BIG, "TXT")
    assert a.status == "NOERROR", a.output
    assert sorted(a.answers) == BIG_EXPECTED, a.output


def _upstream_query(h, index=-1):
    raws = h.raw_queries()
    assert raws, "the upstream received nothing"
    return raws[index], dns.message.from_wire(raws[index])


def test_do_bit_reaches_the_upstream(hostile, stubborn):
    h = hostile(slow.Answer(hostile_mod.correct))
    s = stubborn([h.spec()])
    for n, do in enumerate((True, False, True)):
        q = slow.query(f"do{n}.hostile.test", "A", want_dnssec=do)
        raw, r = slow.exchange(s.port, q)
        assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
        wire, up = _upstream_query(h)
        assert up.question[0].name.to_text() == f"do{n}.hostile.test."
        assert up.edns >= 0
        assert bool(up.ednsflags & dns.flags.DO) == do, up.to_text()


LONG = ".".join(["l" * 60] * 3) + ".long.hostile.test"


def _padding_cases():
    padded = dns.edns.GenericOption(slow.OPT_PADDING, b"\x00" * 37)
    return [
        pytest.param(dict(), False, id="no-edns"),
        pytest.param(dict(use_edns=0, payload=1232), False, id="edns"),
        pytest.param(dict(want_dnssec=True), False, id="do"),
        pytest.param(dict(), True, id="no-edns-tcp"),
        pytest.param(dict(long=True), False, id="long-name"),
        pytest.param(dict(long=True, use_edns=0), True, id="long-name-edns-tcp"),
        pytest.param(dict(use_edns=0, options=[ECS]), False, id="client-ecs"),
        # A client that pads its own query to an odd length: stubborn must
        # re-pad the query it sends, with one Padding option (RFC 7830 3).
        pytest.param(dict(use_edns=0, options=[padded]), False, id="client-padded"),
    ]


@pytest.mark.parametrize("kw, tcp", _padding_cases())
def test_upstream_queries_are_padded_to_128(hostile, stubborn, kw, tcp):
    h = hostile(slow.Answer(hostile_mod.correct))
    s = stubborn([h.spec()])
    kw = dict(kw)
    name = LONG if kw.pop("long", False) else "pad.hostile.test"
    for rdtype in ("A", "AAAA", "TXT"):
        q = slow.query(name, rdtype, **kw)
        raw, r = slow.exchange(s.port, q, tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
        wire, up = _upstream_query(h)
        assert dns.rdatatype.to_text(up.question[0].rdtype) == rdtype
        codes = slow.option_codes(up)
        assert codes.count(slow.OPT_PADDING) == 1, (len(wire), up.to_text())
        assert len(wire) % slow.PAD_BLOCK == 0, (len(wire), up.to_text())
    # Every query, not just the last of each type.
    for wire in h.raw_queries():
        assert len(wire) % slow.PAD_BLOCK == 0, len(wire)


def _answer_with_ecs(query):
    """The right answer, carrying an ECS option as a subnet-aware upstream
    would send (scope /24)."""
    r = dns.message.make_response(query)
    q = query.question[0]
    r.answer.append(dns.rrset.from_text(q.name, 300, "IN", "A", hostile_mod.DEFAULT_DATA["A"]))
    r.use_edns(0, 0, 1232, options=[dns.edns.ECSOption("192.0.2.0", 24, 24)])
    return r.to_wire()


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_client_subnet_is_stripped_both_ways(hostile, stubborn, tcp):
    h = hostile(slow.Answer(_answer_with_ecs))
    s = stubborn([h.spec()])
    for n, kw in enumerate([dict(use_edns=0, options=[ECS]),
                            dict(want_dnssec=True, options=[ECS]),
                            dict(use_edns=0)]):
        q = slow.query(f"ecs{n}.hostile.test", "A", **kw)
        raw, r = slow.exchange(s.port, q, tcp=tcp)
        assert r.id == q.id
        assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
        assert clients.answer_strings(r, "A") == [hostile_mod.DEFAULT_DATA["A"]]
        wire, up = _upstream_query(h)
        assert slow.OPT_ECS not in slow.option_codes(up), up.to_text()
        assert slow.OPT_ECS not in slow.option_codes(r), r.to_text()


def _no_opt_answers(port, names, tcp):
    for name in names:
        q = slow.query(name, "A")
        assert q.edns < 0
        raw, r = slow.exchange(port, q, tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
        assert r.edns < 0, f"{name}: OPT record in the answer to a client without EDNS"
        assert r.additional == [], r.to_text()


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_client_without_edns_gets_no_opt(upstream, hostile, stubborn, tcp):
    # unbound answers stubborn's EDNS query with its own OPT; the hostile
    # server adds an ECS option to it as well.  Twice each: the second
    # answer comes from the cache.
    u = stubborn([upstream("first").spec()])
    names = [servers.zone_name(50), servers.zone_name(50)]
    _no_opt_answers(u.port, names, tcp)
    h = hostile(slow.Answer(_answer_with_ecs))
    s = stubborn([h.spec()])
    _no_opt_answers(s.port, ["noopt.hostile.test", "noopt.hostile.test"], tcp)

    # An EDNS client, by contrast, is answered with EDNS (RFC 6891 7).
    q = slow.query(servers.zone_name(51), "A", use_edns=0, payload=1232)
    raw, r = slow.exchange(u.port, q, tcp=tcp)
    assert r.edns >= 0, r.to_text()


GLUE_NAME = "ns.hostile.test."


def _opt_before_glue(query):
    """A right answer whose additional section holds the OPT record first
    and a glue A record after it: RFC 6891 lets OPT sit anywhere there."""
    r = dns.message.make_response(query)
    q = query.question[0]
    r.answer.append(dns.rrset.from_text(q.name, 300, "IN", "A", hostile_mod.DEFAULT_DATA["A"]))
    r.use_edns(False)
    wire = bytearray(r.to_wire())
    struct.pack_into("!H", wire, 10, 2)     # ARCOUNT: the OPT and the glue
    opt = b"\x00" + struct.pack("!HHIH", dns.rdatatype.OPT, 1232, 0, 0)
    # Uncompressed, so moving it past the OPT breaks no pointer.
    glue = (dns.name.from_text(GLUE_NAME).to_wire()
            + struct.pack("!HHIH", dns.rdatatype.A, dns.rdataclass.IN, 300, 4)
            + bytes([192, 0, 2, 53]))
    return bytes(wire) + opt + glue



@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_client_without_edns_gets_no_opt_wherever_upstream_put_it(hostile, stubborn, tcp):
    h = hostile(slow.Answer(_opt_before_glue))
    s = stubborn([h.spec()])
    q = slow.query("optfirst.hostile.test", "A")
    raw, r = slow.exchange(s.port, q, tcp=tcp)
    assert r.id == q.id
    assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
    assert clients.answer_strings(r, "A") == [hostile_mod.DEFAULT_DATA["A"]]
    assert r.edns < 0, r.to_text()
