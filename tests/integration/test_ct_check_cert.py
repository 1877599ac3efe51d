"""`stubborn check-cert`: the trust gate run offline on a PEM chain, with the
time pinned by --at.  Generated presets cover each CT policy rule, real
certificates and the real log lists of 2025-08-21 cover interoperability,
and bad input must exit 2 rather than be judged."""

import datetime
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import ct_fixture as ctf

REALWORLD = Path(__file__).resolve().parents[1] / "data" / "realworld"
# The real leaves have expired; this is when the lists were fetched and
# every chain and SCT was still valid.
REALWORLD_AT = "2025-08-21T12:40:00Z"
REALWORLD_AT_UNIX = 1755780000

RUN_TIMEOUT = 30


@pytest.fixture(scope="module")
def universe(tmp_path_factory):
    u = ctf.Universe()
    u.write(tmp_path_factory.mktemp("ct"), presets=list(ctf.PRESETS))
    return u


def check_cert(stubborn_bin, chain, host=ctf.HOSTNAME, ca_file=None, log_list=None,
               at=None, policy=None, pins=(), extra=()):
    cmd = [stubborn_bin, "check-cert", "--chain", str(chain), "--host", host]
    for p in pins:
        cmd += ["--pin", p]
    if ca_file is not None:
        cmd += ["--ca-file", str(ca_file)]
    if log_list is not None:
        cmd += ["--log-list", str(log_list)]
    if at is not None:
        cmd += ["--at", str(at)]
    if policy is not None:
        cmd += ["--policy", policy]
    cmd += list(extra)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{cmd} still running after {RUN_TIMEOUT}s: {e.stdout!r} {e.stderr!r}")
    return ctf.parse_check_cert(p.returncode, p.stdout, p.stderr)


def check_preset(stubborn_bin, universe, name, policy=None, at=None, **kw):
    leaf = universe.preset(name)
    return check_cert(stubborn_bin, leaf.chain_pem, ca_file=universe.root_pem,
                      log_list=kw.pop("log_list", universe.log_list_path),
                      at=at if at is not None else ctf.rfc3339(universe.check_time),
                      policy=policy, **kw)


def assert_verdict(r, compliant, policy):
    assert r.duplicates == [], f"check lines repeated: {r.duplicates}\n{r}"
    assert r.checks.get("chain", "").startswith("ok"), r
    assert r.checks.get("hostname", "").startswith("ok"), r
    if compliant:
        assert r.status == 0, r
        assert r.checks.get("ct", "").startswith("ok"), r
        assert r.checks.get("verdict") == "trusted", r
    else:
        assert r.status == 1, r
        assert r.checks.get("ct", "").startswith("FAIL"), r
        assert r.checks.get("verdict") == "rejected (ct)", r
    if policy is not None:
        # The ct line says which policy judged, e.g. "ok (chrome ...)".
        assert f"({policy}" in r.checks["ct"], r


PRESET_CASES = [pytest.param(name, policy, id=f"{name}-{policy}")
                for name, p in ctf.PRESETS.items()
                for policy in ("chrome", "apple")
                if getattr(p, policy) is not None]


@pytest.mark.parametrize("name,policy", PRESET_CASES)
def test_preset(stubborn_bin, universe, name, policy):
    leaf = universe.preset(name)
    r = check_preset(stubborn_bin, universe, name, policy)
    assert r.checks.get("pin", "").startswith("skipped"), r
    problems = ctf.sct_mismatches(r.scts, leaf.expected_scts())
    assert not problems, "\n".join(problems) + f"\n{r}"
    assert_verdict(r, leaf.compliant[policy], policy)


def test_default_policy_is_chrome(stubborn_bin, universe):
    # The one preset the two policies judge differently.
    p = ctf.PRESETS["exact_180"]
    assert p.chrome and not p.apple
    r = check_preset(stubborn_bin, universe, "exact_180")
    assert_verdict(r, True, "chrome")


def test_at_accepts_unix_seconds(stubborn_bin, universe):
    r = check_preset(stubborn_bin, universe, "ok2", "chrome", at=str(universe.check_time))
    assert_verdict(r, True, "chrome")


def test_at_moves_the_ct_clock(stubborn_bin, universe):
    # The same certificate is compliant once --at has passed the SCT that
    # was "from the future": the check time is --at, not the wall clock.
    leaf = universe.preset("future")
    later = max(s.timestamp_ms for s in leaf.scts) // 1000 + 60
    r = check_preset(stubborn_bin, universe, "future", "chrome", at=ctf.rfc3339(later))
    assert [s.get("status") for s in r.scts] == [ctf.VALID, ctf.VALID], r
    assert_verdict(r, True, "chrome")


def test_without_log_list_ct_is_skipped(stubborn_bin, universe):
    leaf = universe.preset("no_scts")
    r = check_cert(stubborn_bin, leaf.chain_pem, ca_file=universe.root_pem,
                   at=universe.check_time)
    assert r.status == 0, r
    assert r.checks.get("ct", "").startswith("skipped"), r
    assert r.checks.get("verdict") == "trusted", r


def test_hostname_mismatch_is_rejected(stubborn_bin, universe):
    r = check_preset(stubborn_bin, universe, "ok2", host="other.test")
    assert r.status == 1, r
    assert r.checks.get("hostname", "").startswith("FAIL"), r
    assert r.checks.get("verdict") == "rejected (hostname)", r


def test_matching_pin_is_ok(stubborn_bin, universe):
    leaf = universe.preset("ok2")
    r = check_preset(stubborn_bin, universe, "ok2", pins=[universe.preset("one_sct").pin, leaf.pin])
    assert r.checks.get("pin", "").startswith("ok"), r
    assert_verdict(r, True, None)


def test_wrong_pin_is_rejected(stubborn_bin, universe):
    r = check_preset(stubborn_bin, universe, "ok2", pins=[universe.preset("one_sct").pin])
    assert r.status == 1, r
    assert r.checks.get("pin", "").startswith("FAIL"), r
    assert r.checks.get("verdict") == "rejected (pin)", r


def test_untrusted_chain_is_rejected(stubborn_bin, universe, tmp_path):
    other = ctf.CA(universe.now, cn="unrelated")
    other.write(tmp_path)
    leaf = universe.preset("ok2")
    r = check_cert(stubborn_bin, leaf.chain_pem, ca_file=tmp_path / "root.pem",
                   log_list=universe.log_list_path, at=universe.check_time)
    assert r.status == 1, r
    assert r.checks.get("chain", "").startswith("FAIL"), r
    assert r.checks.get("verdict") == "rejected (chain)", r


def _leaf_under(ca, key, directory, name, digest=None):
    """A serverAuth leaf for HOSTNAME with `key`, issued by ca's
    intermediate (signed with `digest`, SHA-256 by default); returns its
    chain file (leaf, intermediate)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(ctf.HOSTNAME)]),
                           critical=False)
            .sign(ca.key, digest or hashes.SHA256()))
    chain = Path(directory) / f"{name}.pem"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM) +
                      ca.cert.public_bytes(serialization.Encoding.PEM))
    return chain


@pytest.mark.filterwarnings("ignore:SHA1 signatures are deprecated")
def test_weak_key_is_rejected_as_in_a_handshake(stubborn_bin, universe, tmp_path):
    # The TLS security level applies offline too: an RSA-1024 leaf signed
    # with SHA-1 is refused by a handshake (at security level 1 already,
    # for the SHA-1), so "trusted" here would be a false pass.
    ca = ctf.CA(universe.now, cn="weak key")
    ca.write(tmp_path)
    strong = _leaf_under(ca, ec.generate_private_key(ec.SECP256R1()), tmp_path, "strong")
    weak = _leaf_under(ca, rsa.generate_private_key(public_exponent=65537, key_size=1024),
                       tmp_path, "weak", hashes.SHA1())
    r = check_cert(stubborn_bin, strong, ca_file=tmp_path / "root.pem")
    assert r.status == 0 and r.checks.get("verdict") == "trusted", r
    r = check_cert(stubborn_bin, weak, ca_file=tmp_path / "root.pem")
    assert r.status == 1, r
    assert "too weak" in r.checks.get("chain", ""), r
    assert r.checks.get("verdict") == "rejected (chain)", r


def test_host_with_a_trailing_dot_is_the_same_host(stubborn_bin, universe):
    leaf = universe.preset("ok2")
    r = check_cert(stubborn_bin, leaf.chain_pem, host=ctf.HOSTNAME + ".",
                   ca_file=universe.root_pem, at=universe.check_time)
    assert r.checks.get("hostname", "").startswith("ok"), r
    assert r.status == 0 and r.checks.get("verdict") == "trusted", r


# --- bad input: exit 2 -------------------------------------------------------

def _bad_inputs(universe, tmp):
    garbage = tmp / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    empty = tmp / "empty.pem"
    empty.write_text("")
    broken = tmp / "broken.pem"
    pem = universe.preset("ok2").chain_pem.read_text().splitlines()
    # A PEM block whose base64 is cut short: the armour parses, the DER not.
    broken.write_text("\n".join(pem[:4] + [pem[-1]]) + "\n")
    chain = universe.preset("ok2").chain_pem
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    return {
        "chain-missing": dict(chain=tmp / "absent.pem"),
        "chain-not-pem": dict(chain=garbage),
        "chain-empty": dict(chain=empty),
        "chain-truncated-der": dict(chain=broken),
        "at-words": dict(chain=chain, at="yesterday"),
        "at-bad-date": dict(chain=chain, at="2025-13-45T00:00:00Z"),
        "at-empty": dict(chain=chain, at=""),
        "at-past-year-9999": dict(chain=chain, at="99999999999999"),
        "host-empty": dict(chain=chain, host=""),
        "host-two-dots": dict(chain=chain, host="dns.test.."),
        "pin-not-base64": dict(chain=chain, pins=["sha256/not*base64!"]),
        "pin-wrong-algorithm": dict(chain=chain, pins=["md5/AAAAAAAAAAAAAAAAAAAAAA=="]),
        "log-list-missing": dict(chain=chain, log_list=tmp / "absent.json"),
        "policy-unknown": dict(chain=chain, policy="firefox"),
        "ca-file-missing": dict(chain=chain, ca_file=tmp / "absent.pem"),
        "ca-file-not-pem": dict(chain=chain, ca_file=garbage),
        # A plain open of a FIFO would wait for a writer for ever.
        "chain-fifo": dict(chain=fifo),
        "log-list-fifo": dict(chain=chain, log_list=fifo),
        "ca-file-fifo": dict(chain=chain, ca_file=fifo),
    }


BAD_INPUT = ["chain-missing", "chain-not-pem", "chain-empty", "chain-truncated-der",
             "at-words", "at-bad-date", "at-empty", "at-past-year-9999", "host-empty", "host-two-dots",
             "pin-not-base64", "pin-wrong-algorithm",
             "log-list-missing", "policy-unknown", "ca-file-missing", "ca-file-not-pem",
             "chain-fifo", "log-list-fifo", "ca-file-fifo"]


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_exits_2(stubborn_bin, universe, tmp_path, case):
    kw = _bad_inputs(universe, tmp_path)[case]
    kw.setdefault("at", universe.check_time)
    kw.setdefault("log_list", universe.log_list_path)
    kw.setdefault("ca_file", universe.root_pem)
    r = check_cert(stubborn_bin, **kw)
    assert r.status == 2, r
    assert r.stderr.strip(), f"no message on stderr\n{r}"
    # What ends the command is an error, not a warning to read past.
    assert "warning" not in r.stderr, r
    assert "verdict" not in r.checks, f"bad input was judged\n{r}"


@pytest.mark.parametrize("missing", ["--chain", "--host"])
def test_missing_required_option_exits_2(stubborn_bin, universe, missing):
    args = {"--chain": str(universe.preset("ok2").chain_pem), "--host": ctf.HOSTNAME}
    del args[missing]
    cmd = [stubborn_bin, "check-cert"] + [x for kv in args.items() for x in kv]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.strip()


# --- real certificates and real log lists ------------------------------------

# (chain file stem, a name the leaf covers, SCTs embedded in the leaf)
REAL = [
    pytest.param("google-com", "www.google.com", 2, id="google.com"),
    pytest.param("ethereum-org", "ethereum.org", 2, id="ethereum.org"),
    pytest.param("www-apple-com", "www.apple.com", 4, id="www.apple.com"),
]


def _real_chain(stem):
    return REALWORLD / f"{stem}-certs-chain.pem"


def _list_logs(ll):
    """log_id -> (description, operator name) for every log of a v3 list."""
    out = {}
    for op in ll["operators"]:
        for kind in ("logs", "tiled_logs"):
            for lg in op.get(kind, []):
                out[lg["log_id"]] = (lg["description"], op["name"])
    return out


def _assert_real_scts(r, ll, count):
    logs = _list_logs(ll)
    assert len(r.scts) == count, r
    for s in r.scts:
        assert s.get("source") == "embedded", r
        assert s.get("status") == ctf.VALID, r
        assert s.get("log_id") in logs, r
        assert (s.get("log"), s.get("operator")) == logs[s["log_id"]], r


@pytest.mark.parametrize("stem,host,count", REAL)
def test_realworld_chrome(stubborn_bin, stem, host, count):
    ll_path = REALWORLD / "google-log-list.json"
    r = check_cert(stubborn_bin, _real_chain(stem), host=host, log_list=ll_path,
                   at=REALWORLD_AT, policy="chrome")
    _assert_real_scts(r, json.loads(ll_path.read_text()), count)
    assert_verdict(r, True, "chrome")


@pytest.mark.parametrize("stem,host,count", REAL)
def test_realworld_apple(stubborn_bin, stem, host, count):
    # Apple's list is the v3 layout plus $schema, assetVersion and a version
    # inside each state, and it has no log_list_timestamp at all.
    ll_path = REALWORLD / "apple-log-list.json"
    r = check_cert(stubborn_bin, _real_chain(stem), host=host, log_list=ll_path,
                   at=str(REALWORLD_AT_UNIX), policy="apple")
    _assert_real_scts(r, json.loads(ll_path.read_text()), count)
    assert_verdict(r, True, "apple")


def _edited(tmp_path, edit):
    ll = json.loads((REALWORLD / "google-log-list.json").read_text())
    edit(ll)
    path = tmp_path / "edited-log-list.json"
    path.write_text(json.dumps(ll))
    return path


def _find(ll, needle):
    for op in ll["operators"]:
        for lg in op["logs"]:
            if needle in lg["description"]:
                return op, lg
    raise KeyError(needle)


def _retire_yeti_early(ll):
    # google.com's Yeti2025 SCT is from 2025-07-07T09:34:09Z.
    _find(ll, "Yeti2025")[1]["state"] = {"retired": {"timestamp": "2025-07-01T00:00:00Z"}}


def _drop(*needles):
    def edit(ll):
        for n in needles:
            op, lg = _find(ll, n)
            op["logs"].remove(lg)
    return edit


REAL_EDITS = [
    pytest.param("google-com", "www.google.com", _retire_yeti_early, 2,
                 id="google.com-yeti-retired-before-sct"),
    pytest.param("google-com", "www.google.com", _drop("Xenon2025h2"), 1,
                 id="google.com-no-xenon"),
    pytest.param("www-apple-com", "www.apple.com", _drop("Yeti2025", "Nessie2025"), 2,
                 id="www.apple.com-no-digicert"),
]


@pytest.mark.parametrize("stem,host,edit,valid", REAL_EDITS)
def test_realworld_edited_list_is_rejected(stubborn_bin, tmp_path, stem, host, edit, valid):
    r = check_cert(stubborn_bin, _real_chain(stem), host=host, log_list=_edited(tmp_path, edit),
                   at=REALWORLD_AT, policy="chrome")
    assert r.status == 1, r
    assert r.checks.get("chain", "").startswith("ok"), r
    assert r.checks.get("ct", "").startswith("FAIL"), r
    assert r.checks.get("verdict") == "rejected (ct)", r
    # A dropped log leaves its SCT unknown; a retired one leaves it valid
    # but not counted.
    assert sum(s.get("status") == ctf.VALID for s in r.scts) == valid, r


def test_realworld_expired_leaf_fails_the_chain(stubborn_bin):
    # ethereum.org's leaf expired on 2025-10-30.
    r = check_cert(stubborn_bin, _real_chain("ethereum-org"), host="ethereum.org",
                   log_list=REALWORLD / "google-log-list.json", at="2025-11-15T00:00:00Z")
    assert r.status == 1, r
    assert r.checks.get("chain", "").startswith("FAIL"), r
    assert r.checks.get("verdict") == "rejected (chain)", r


# --- the fixture itself ------------------------------------------------------

def test_fixture_scts_verify_independently(universe):
    """Guards the fixture rather than stubborn: cryptography's own SCT parser
    finds the SCTs the sidecar describes, and their signatures verify
    except where corruption was intended, so a failure above is not a
    broken fixture."""
    logs = {lg.log_id: lg for lg in universe.logs.values()}
    for name in ctf.PRESETS:
        leaf = universe.preset(name)
        got = ctf.verify_embedded(leaf.cert, universe.ca.cert, logs)
        want = leaf.expected_scts()
        assert [(g[0], g[1]) for g in got] == [(w["log_id"], w["timestamp_ms"]) for w in want], name
        assert [g[2] for g in got] == [not w["corrupt"] for w in want], name
        for w in want:
            assert leaf.not_before * 1000 <= w["timestamp_ms"], name
            if w["status"] != ctf.FUTURE:
                assert w["timestamp_ms"] <= (leaf.check_time - ctf.MIN_SCT_AGE) * 1000, name
        side = json.loads(leaf.sidecar.read_text())
        assert side["scts"] == json.loads(json.dumps(want)), name
