"""The conf and CLI contract: bad files are rejected with FILE:LINE before
anything runs, check-config shows what would run, and `pin` prints pins
ready to paste."""

import base64
import os
import re
import socket
import subprocess

import pytest

import pki

BASE = """\
# a comment, so line numbers are not trivially 1
[server]
listen = 127.0.0.1:5353
allow = 127.0.0.0/8

[trust]
ca-file = {ca}
quarantine = 3600

[upstream first]
url = tls://dns.test:8853
address = 127.0.0.2
pin = {pin}

[upstream second]
url = tls://dns.test:8853
address = 127.0.0.3
"""

PIN31 = "sha256/" + base64.b64encode(b"\x01" * 31).decode()
PIN33 = "sha256/" + base64.b64encode(b"\x01" * 33).decode()


def _lines(certs):
    return BASE.format(ca=certs.root_pem, pin=certs["good"].pin).splitlines()


def _replace(lines, old, new):
    """Replace the line starting with `old`; return (lines, its 1-based number)."""
    for i, line in enumerate(lines):
        if line.startswith(old):
            out = list(lines)
            out[i] = new
            return out, i + 1
    raise AssertionError(f"no line starting with {old!r}")


def _insert_after(lines, anchor, new):
    for i, line in enumerate(lines):
        if line.startswith(anchor):
            out = list(lines)
            out.insert(i + 1, new)
            return out, i + 2
    raise AssertionError(f"no line starting with {anchor!r}")


# Each case: how to damage the good conf; returns (lines, line number blamed).
BAD = {
    "unknown-key-server": lambda l: _insert_after(l, "listen", "lisen = 127.0.0.1:53"),
    "unknown-key-trust": lambda l: _insert_after(l, "quarantine", "quarantaine = 60"),
    "unknown-key-upstream": lambda l: _insert_after(l, "address = 127.0.0.3", "pins = x"),
    "listen-bad-ip": lambda l: _replace(l, "listen", "listen = 999.0.0.1:5353"),
    "listen-bad-port": lambda l: _replace(l, "listen", "listen = 127.0.0.1:70000"),
    "listen-unclosed-bracket": lambda l: _replace(l, "listen", "listen = [::1:5353"),
    "listen-junk": lambda l: _replace(l, "listen", "listen = not an address"),
    "pin-not-base64": lambda l: _replace(l, "pin", "pin = sha256/not*base64!"),
    "pin-31-bytes": lambda l: _replace(l, "pin", f"pin = {PIN31}"),
    "pin-33-bytes": lambda l: _replace(l, "pin", f"pin = {PIN33}"),
    "pin-wrong-hash": lambda l: _replace(
        l, "pin", "pin = sha1/" + base64.b64encode(b"\x01" * 20).decode()),
    "pin-no-prefix": lambda l: _replace(
        l, "pin", "pin = " + base64.b64encode(b"\x01" * 32).decode()),
    "url-empty-host": lambda l: _replace(l, "url = tls://dns.test:8853", "url = tls://:853"),
    "url-ipv4-literal": lambda l: _replace(l, "url = tls://dns.test:8853", "url = tls://192.0.2.1"),
    "url-ipv4-literal-port": lambda l: _replace(l, "url = tls://dns.test:8853",
                                                "url = tls://192.0.2.1:853"),
    "url-ipv6-literal": lambda l: _replace(l, "url = tls://dns.test:8853",
                                           "url = tls://[2001:db8::1]:853"),
    # A NUL would hide the rest of its line: an allow or pin line lost.
    "nul-line-start": lambda l: _insert_after(l, "listen", "\0allow = 192.0.2.0/24"),
    "nul-in-value": lambda l: _replace(l, "url = tls://dns.test:8853",
                                       "url = tls://dns.test:8853\0.example"),
    # update-log-list would refuse these at the first refresh.
    "log-list-url-ip": lambda l: _insert_after(
        l, "quarantine", "ct-log-list-url = https://192.0.2.1/log_list.json"),
    "log-list-url-port": lambda l: _insert_after(
        l, "quarantine", "ct-log-list-url = https://lists.test:0/log_list.json"),
    "log-list-url-no-host": lambda l: _insert_after(l, "quarantine",
                                                    "ct-log-list-url = https:///x.json"),
    "unknown-section": lambda l: _insert_after(l, "quarantine", "[bogus]"),
    "unknown-section-with-key": lambda l: (l + ["[resolver]", "threads = 2"], len(l) + 1),
}


def _run(cmd, timeout=20):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{cmd} still running after {timeout}s: it accepted a bad conf? "
                    f"output: {e.stdout!r} {e.stderr!r}")


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_conf_is_rejected_with_file_and_line(stubborn_bin, certs, tmp_path, case, command):
    lines, lineno = BAD[case](_lines(certs))
    conf = tmp_path / f"{case}.conf"
    conf.write_text("\n".join(lines) + "\n")
    cmd = [stubborn_bin, command, "-c", str(conf)] + (["-f"] if command == "run" else [])
    p = _run(cmd)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    blamed = re.findall(re.escape(str(conf)) + r":(\d+): \S", p.stderr)
    assert blamed, f"no '{conf}:LINE: message' on stderr:\n{p.stderr}"
    assert str(lineno) in blamed, f"expected line {lineno}, got {blamed}:\n{p.stderr}"


def test_good_conf_is_accepted_and_printed(stubborn_bin, certs, tmp_path):
    conf = tmp_path / "good.conf"
    conf.write_text("\n".join(_lines(certs)) + "\n")
    p = _run([stubborn_bin, "check-config", "-c", str(conf)])
    assert p.returncode == 0, (p.stdout, p.stderr)
    out = p.stdout
    for needle in ("first", "second", "tls://dns.test:8853", "127.0.0.2", "127.0.0.3",
                   certs["good"].pin, "127.0.0.1:5353"):
        assert needle in out, f"{needle!r} missing from check-config output:\n{out}"
    # Written in the order given, since the order is the failover order.
    assert out.index("first") < out.index("second")


def test_conf_without_upstreams_warns_that_the_built_in_ones_serve(stubborn_bin, tmp_path):
    conf = tmp_path / "noup.conf"
    conf.write_text("[server]\nlisten = 127.0.0.1:5353\n")
    p = _run([stubborn_bin, "check-config", "-c", str(conf)])
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert f"{conf}: warning: no [upstream] section" in p.stderr, p.stderr
    assert "[upstream cloudflare]" in p.stdout, p.stdout


def test_missing_conf_file_is_an_input_error(stubborn_bin, tmp_path):
    p = _run([stubborn_bin, "check-config", "-c", str(tmp_path / "absent.conf")])
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "absent.conf" in p.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_directory_as_conf_file_is_an_input_error(stubborn_bin, tmp_path, command):
    # Not an empty conf, which would send queries to the built-in upstreams.
    cmd = [stubborn_bin, command, "-c", str(tmp_path)] + (["-f"] if command == "run" else [])
    p = _run(cmd)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"{tmp_path}: Is a directory" in p.stderr, p.stderr


def test_nul_byte_is_named(stubborn_bin, tmp_path):
    conf = tmp_path / "nul.conf"
    conf.write_bytes(b"[server]\nlisten = 127.0.0.1:5353\n\0allow = 192.0.2.0/24\n"
                     b"[upstream a]\nurl = tls://dns.test\naddress = 127.0.0.2\n")
    p = _run([stubborn_bin, "check-config", "-c", str(conf)])
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"{conf}:3: a NUL byte in the line" in p.stderr, p.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "dev-null"])
def test_conf_that_is_not_a_regular_file_is_an_input_error(stubborn_bin, tmp_path, kind):
    # A FIFO would block the open, /dev/zero the read, for ever; /dev/null
    # would be an empty conf, sending queries to the built-in upstreams.
    if kind == "fifo":
        path = tmp_path / "conf.fifo"
        os.mkfifo(path)
    else:
        path = "/dev/" + kind[4:]
    p = _run([stubborn_bin, "check-config", "-c", str(path)], timeout=5)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"{path}: not a regular file" in p.stderr, p.stderr


def test_crlf_and_byte_order_mark_are_no_characters_of_a_line(stubborn_bin, tmp_path):
    # The longest line allowed (198 characters) stays allowed in a file
    # written on Windows: CRLF line ends and a UTF-8 byte order mark.
    hook = "/bin/true " + "x" * (198 - len("on-incident = /bin/true "))
    lines = ["; " + "c" * 196, "[trust]", "ct = off", f"on-incident = {hook}",
             "[upstream a]", "url = tls://dns.test", "address = 127.0.0.2"]
    assert max(len(l) for l in lines) == 198
    conf = tmp_path / "windows.conf"
    conf.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    p = _run([stubborn_bin, "check-config", "-c", str(conf)])
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert f"on-incident = {hook}\n" in p.stdout, p.stdout
    # One more character is one too many, CR or not.
    conf.write_bytes("\r\n".join(lines).replace(hook, hook + "x").encode() + b"\r\n")
    p = _run([stubborn_bin, "check-config", "-c", str(conf)])
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"{conf}:4: line longer than 198 characters" in p.stderr, p.stderr


def test_check_config_loads_the_trust_stores_as_run_does(stubborn_bin, tmp_path):
    # A ca-file with no certificate in it: run refuses to start, so
    # check-config must not say the conf is good.
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    other = tmp_path / "other.pem"
    other.write_text("not a certificate\n")
    # A FIFO would block OpenSSL's read for ever.
    fifo = tmp_path / "ca.fifo"
    os.mkfifo(fifo)
    conf = tmp_path / "ca.conf"
    # Two upstreams share [trust]'s, a third names its own.
    conf.write_text(f"[trust]\nca-file = {empty}\nct = off\n"
                    "[upstream a]\nurl = tls://dns.test\naddress = 127.0.0.2\n"
                    "[upstream b]\nurl = tls://dns.test\naddress = 127.0.0.3\n"
                    "[upstream c]\nurl = tls://dns.test\naddress = 127.0.0.4\n"
                    f"ca-file = {other}\n"
                    "[upstream d]\nurl = tls://dns.test\naddress = 127.0.0.5\n"
                    f"ca-file = {fifo}\n")
    for cmd in (["check-config"], ["run", "-f"]):
        p = _run([stubborn_bin] + cmd + ["-c", str(conf)])
        assert p.returncode == 2, (cmd, p.returncode, p.stdout, p.stderr)
        # Each blamed on the line that named it, once.
        assert p.stderr.count(f"{conf}:2: ca-file {empty}: no certificate loads "
                              "from it") == 1, (cmd, p.stderr)
        assert p.stderr.count(f"{conf}:13: ca-file {other}: no certificate loads "
                              "from it") == 1, (cmd, p.stderr)
        assert p.stderr.count(f"{conf}:17: ca-file {fifo}: no certificate loads "
                              "from it") == 1, (cmd, p.stderr)
        assert "not a regular file" in p.stderr, p.stderr


@pytest.mark.parametrize("flag,word", [("--help", "usage: stubborn"),
                                       ("--version", "stubborn ")])
def test_help_and_version_as_options(stubborn_bin, flag, word):
    p = _run([stubborn_bin, flag])
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert p.stdout.startswith(word), p.stdout


@pytest.mark.parametrize("command", ["run", "check-config", "check-cert", "pin",
                                     "update-log-list", "version", "help"])
def test_every_command_takes_help(stubborn_bin, command):
    p = _run([stubborn_bin, command, "--help"])
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert p.stdout.startswith("usage: stubborn"), p.stdout


@pytest.mark.parametrize("args", [["version", "--bogus"], ["version", "extra"],
                                  ["help", "extra"], ["check-config", "--bogus"],
                                  ["pin", "tls://dns.test", "extra"],
                                  ["check-cert", "--chain", "c.pem", "--host", "dns.test",
                                   "extra"]])
def test_stray_arguments_are_usage_errors(stubborn_bin, args):
    p = _run([stubborn_bin] + args)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert args[-1] in p.stderr and "invalid option -- '-'" not in p.stderr, p.stderr


def test_pin_without_a_url_says_so(stubborn_bin):
    p = _run([stubborn_bin, "pin"])
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "pin needs a URL" in p.stderr, p.stderr


def _pins_printed(stdout):
    return re.findall(r"^\s*pin = (sha256/[A-Za-z0-9+/=]+)\s*$", stdout, re.M)


def test_pin_command_prints_chain_pins(stubborn_bin, upstream, certs):
    u = upstream("first", "good")
    p = _run([stubborn_bin, "pin", f"tls://{pki.HOSTNAME}:{u.port}",
              "--address", u.address, "--ca-file", str(certs.root_pem)])
    assert p.returncode == 0, (p.stdout, p.stderr)
    pins = _pins_printed(p.stdout)
    assert certs["good"].pin in pins, p.stdout
    assert pki.spki_pin(certs.intermediate) in pins, p.stdout
    # One line per certificate of the verified chain, leaf first, ending
    # with the trust anchor that ca-file supplied.
    assert pins == [certs["good"].pin, pki.spki_pin(certs.intermediate),
                    pki.spki_pin(certs.root)], p.stdout


def test_pin_command_with_an_unusable_ca_file_is_an_input_error(stubborn_bin, tmp_path):
    notpem = tmp_path / "notpem.txt"
    notpem.write_text("not a certificate\n")
    for ca in (tmp_path / "absent.pem", notpem):
        # Nothing listens there, and without --address nothing is looked
        # up: the CA file is refused first.
        for where in (["--address", "127.0.0.1:1"], []):
            p = _run([stubborn_bin, "pin", f"tls://{pki.HOSTNAME}:853", "--ca-file",
                      str(ca)] + where)
            assert p.returncode == 2, (ca, where, p.returncode, p.stdout, p.stderr)
            assert f"cannot load the CA file '{ca}'" in p.stderr, p.stderr


def test_pin_command_says_when_the_server_never_answers(stubborn_bin, tmp_path):
    # A server that takes the connection and says nothing: a timeout,
    # not a close.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        p = _run([stubborn_bin, "pin", f"tls://{pki.HOSTNAME}:{port}",
                  "--address", "127.0.0.1"], timeout=30)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "TLS handshake failed: no answer in time" in p.stderr, p.stderr


@pytest.mark.parametrize("cert", ["wrongname", "untrusted"])
def test_pin_command_refuses_unverified_server(stubborn_bin, upstream, certs, cert):
    u = upstream("first", cert)
    p = _run([stubborn_bin, "pin", f"tls://{pki.HOSTNAME}:{u.port}",
              "--address", u.address, "--ca-file", str(certs.root_pem)])
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert _pins_printed(p.stdout) == [], p.stdout


@pytest.mark.parametrize("at", ["2027-02-29T00:00:00Z", "2026-11-31T12:00:00Z",
                                "2026-12-02T10:00:61Z", "2026-12-02T10:00:00+25:00",
                                "2026-12-02T10:00:00+01:99", " 1700000000", "+1700000000"])
def test_check_cert_refuses_an_impossible_time(stubborn_bin, tmp_path, at):
    # Not normalised into another date, which could change the verdict.
    p = _run([stubborn_bin, "check-cert", "--chain", str(tmp_path / "none.pem"),
              "--host", "dns.test", "--at", at])
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"bad time '{at}'" in p.stderr, p.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_user_that_does_not_exist_is_an_input_error(stubborn_bin, tmp_path, command):
    conf = tmp_path / "user.conf"
    conf.write_text("[server]\nlisten = 127.0.0.1:5353\nuser = no-such-user-here\n"
                    "[trust]\nct = off\n[upstream a]\nurl = tls://dns.test\n"
                    "address = 127.0.0.2\n")
    cmd = [stubborn_bin, command, "-c", str(conf)] + (["-f"] if command == "run" else [])
    p = _run(cmd)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.count(f"{conf}:3: user no-such-user-here does not exist") == 1, p.stderr


def test_empty_state_dir_is_said_at_start(upstream, stubborn):
    u = upstream("first")
    s = stubborn([u.spec()], server_extra=["state-dir ="])
    assert ("state-dir is empty: quarantines will not outlast a restart, "
            "and no deny list is read") in s.log_text(), s.log_text()


def test_check_config_prints_the_effective_url(stubborn_bin, tmp_path):
    conf = tmp_path / "urls.conf"
    conf.write_text("[trust]\nct = off\n"
                    "[upstream a]\nurl = https://DNS.test\naddress = 127.0.0.2\n"
                    "[upstream b]\nurl = tls://dns.test.:853/\naddress = 127.0.0.2\n"
                    "[upstream c]\nurl = https://dns.test:8443/q\naddress = 127.0.0.2\n")
    p = _run([stubborn_bin, "check-config", "-c", str(conf)])
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    urls = [l for l in p.stdout.splitlines() if l.startswith("url = ")]
    assert urls == ["url = https://dns.test/dns-query", "url = tls://dns.test",
                    "url = https://dns.test:8443/q"], p.stdout


def test_why_run_stops_is_said_at_any_log_level(stubborn_bin, tmp_path):
    # log-level = error hides warnings: not the reason stubborn exits.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        conf = tmp_path / "busy.conf"
        conf.write_text(f"[server]\nlisten = 127.0.0.1:{port}\nlog-level = error\n"
                        "state-dir =\n[trust]\nct = off\n"
                        "[upstream a]\nurl = tls://dns.test\naddress = 127.0.0.2\n")
        p = _run([stubborn_bin, "run", "-f", "-c", str(conf)])
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" \
        in p.stderr, p.stderr
    # Warnings stay below that level.
    assert "warning:" not in p.stderr, p.stderr
