"""The running daemon's sandbox (chroot, user, no capabilities, seccomp),
its launcher, `log-level`, and a graceful SIGTERM."""

import ctypes
import json
import os
import pwd
import re
import shutil
import tempfile
import signal
import socket
import subprocess
import time
from pathlib import Path

import dns.message
import dns.rcode
import pytest

import clients
import servers
import slow

PIDFD_GETFD = 438          # the system call's number on x86-64 and arm64
LAUNCHER_SETTLE = 1.5      # long enough for a launched command to have run

root_only = pytest.mark.skipif(os.geteuid() != 0,
                               reason="the sandbox's drop needs root; run the suite as root")


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _nobody():
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this system has no user 'nobody'")


def _answers(port, i, tcp=False):
    q, r = clients.ask(port, servers.zone_name(i), "A", tcp=tcp)
    assert r.id == q.id
    assert clients.answer_strings(r, "A") == [servers.zone_a(i)]


@root_only
def test_the_daemon_keeps_nothing_it_does_not_need(upstream, stubborn, certs):
    nobody = _nobody()
    up = upstream("first")
    s = stubborn([up.spec(pins=[certs["good"].pin])], server_extra=["user = nobody"])
    _answers(s.port, 70)
    _answers(s.port, 71, tcp=True)

    st = servers.proc_status(s.proc.pid)
    assert st["Uid"] == [str(nobody.pw_uid)] * 4, st["Uid"]
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(st[caps][0], 16) == 0, (caps, st[caps])
    assert st["NoNewPrivs"] == ["1"]
    assert st["Seccomp"] == ["2"], "no seccomp filter on the daemon"
    assert "seccomp filter on" in s.log_text()

    # The launcher: outside the filter (it starts programs), but no more
    # privileged than the daemon.
    kids = _children(s.proc.pid)
    assert len(kids) == 1, kids
    with open(f"/proc/{kids[0]}/comm") as f:
        assert f.read().strip() == "stubborn-launch"
    lst = servers.proc_status(kids[0])
    assert lst["Uid"] == [str(nobody.pw_uid)] * 4, lst["Uid"]
    assert int(lst["CapEff"][0], 16) == 0
    assert lst["Seccomp"] == ["0"]
    # Reloads under the filter: test_reload.py runs with it on (the default).


def test_seccomp_can_be_turned_off(upstream, stubborn, certs):
    up = upstream("first")
    s = stubborn([up.spec(pins=[certs["good"].pin])], server_extra=["seccomp = no"])
    _answers(s.port, 73)
    assert servers.proc_status(s.proc.pid)["Seccomp"] == ["0"]
    assert "seccomp filter on" not in s.log_text()


def _no_seccomp():
    """In the child: a filter that allows everything but installing another,
    as a kernel without seccomp or a tracer such as valgrind would."""
    import errno
    import seccomp
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    f.add_rule(seccomp.ERRNO(errno.EINVAL), "seccomp")
    f.add_rule(seccomp.ERRNO(errno.EINVAL), "prctl", seccomp.Arg(0, seccomp.EQ, 22))
    f.load()


def test_no_start_without_the_seccomp_filter(stubborn_bin, tmp_path):
    # seccomp = yes is a promise: a daemon that cannot set the filter up
    # says why and how to run without it, and does not start.
    pytest.importorskip("seccomp")
    port = servers.free_port(["127.0.0.1"])
    conf = tmp_path / "seccomp.conf"
    conf.write_text(f"[server]\nlisten = 127.0.0.1:{port}\nlog-level = error\n"
                    "state-dir =\n[trust]\nct = off\n"
                    "[upstream a]\nurl = tls://dns.test\naddress = 127.0.0.2\n")
    p = subprocess.run([stubborn_bin, "run", "-f", "-c", str(conf)], capture_output=True,
                       text=True, timeout=20, stdin=subprocess.DEVNULL,
                       preexec_fn=_no_seccomp)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "error: not starting without the seccomp filter that seccomp = yes asks for " \
        "(seccomp = no runs without it)" in p.stderr, p.stderr
    # With seccomp = no the same process starts: the filter was all that failed.
    conf.write_text(conf.read_text().replace("state-dir =", "state-dir =\nseccomp = no"))
    proc = subprocess.Popen([stubborn_bin, "run", "-f", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, preexec_fn=_no_seccomp)
    try:
        servers.wait_listening("127.0.0.1", port, time.monotonic() + 10, proc, "stubborn",
                               lambda: "", tls=False)
        # Its sockets listen before its signal handlers are set: an answer
        # (whatever it says) shows the loop running, so SIGTERM is handled.
        clients.ask(port, "ready.test", "A", timeout=10.0)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


def test_seccomp_on_by_default(upstream, stubborn, certs):
    up = upstream("first")
    s = stubborn([up.spec(pins=[certs["good"].pin])])
    _answers(s.port, 74)
    assert servers.proc_status(s.proc.pid)["Seccomp"] == ["2"]


@pytest.fixture
def shared_dir():
    """A directory another user can reach (pytest's own are root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="stubborn-test-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@root_only
def test_hook_runs_as_the_configured_user(upstream, stubborn, certs, shared_dir):
    nobody = _nobody()
    bad, good = upstream("first", "rogue"), upstream("second", "good")
    out = shared_dir
    hook = shared_dir / "hook.sh"
    hook.write_text(f"id -u > {out}/uid.tmp\nmv {out}/uid.tmp {out}/uid\n")
    hook.chmod(0o755)
    s = stubborn([bad.spec(pins=[certs["good"].pin]), good.spec(pins=[certs["good"].pin])],
                 server_extra=["user = nobody"], trust_extra=[f"on-incident = sh {hook}"])
    q, r = clients.ask(s.port, servers.who_name("hookuser"), "TXT")
    assert clients.answer_strings(r, "TXT") == ["second"]
    uid = out / "uid"
    assert slow.wait_until(uid.exists), "the hook did not run under the filter"
    assert uid.read_text().strip() == str(nobody.pw_uid)


def _launcher_socket(pid):
    """The daemon's end of its socket to the launcher, taken out of the
    running process with pidfd_getfd, as code that took the daemon over
    could use it."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
            fd = libc.syscall(PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue
            sock = socket.socket(fileno=fd)
            if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_SEQPACKET:
                return sock
            sock.close()
    finally:
        os.close(pidfd)
    pytest.fail("no launcher socket in the daemon")


@root_only
def test_launcher_runs_no_command_the_daemon_names(upstream, stubborn, tmp_path):
    # The launcher runs outside the chroot and the filter: what it runs
    # comes from the conf file, never from the daemon's messages.
    s = stubborn([upstream("first").spec()])
    marker = tmp_path / "ran"
    sock = _launcher_socket(s.proc.pid)
    with sock:
        sock.send(b"H" + f"touch {marker}".encode() + b"\0" + b'{"event":"x"}')
        sock.send(b"L/bin/sh\0-c\0" + f"touch {marker}".encode() + b"\0")
        time.sleep(LAUNCHER_SETTLE)
    assert not marker.exists(), "the launcher ran a command the daemon named"
    assert s.alive()
    _answers(s.port, 3)


@pytest.fixture
def no_leak_check(monkeypatch):
    """LeakSanitizer reads /proc at exit, which a chroot does not have: the
    sanitizer build checks leaks everywhere but here."""
    opts = os.environ.get("ASAN_OPTIONS", "")
    monkeypatch.setenv("ASAN_OPTIONS", f"{opts}:detect_leaks=0" if opts else "detect_leaks=0")


@root_only
@pytest.mark.parametrize("where", ["{jail}", "jail", "./jail/../jail/"],
                         ids=["absolute", "relative", "dotted"])
def test_chroot(stubborn_bin, upstream, certs, tmp_path, ipv6, request, no_leak_check, where):
    # Relative paths, the conf's and -c's, start where stubborn started,
    # also for the reload that comes after the chroot's chdir.
    _nobody()
    jail = tmp_path / "jail"
    (jail / "state").mkdir(parents=True)
    shutil.copy(certs.root_pem, jail / "root.pem")
    up = upstream("first")
    listen = ["127.0.0.1"] + (["::1"] if ipv6 else [])
    port = servers.free_port(listen)
    where = where.format(jail=jail).rstrip("/")
    text = servers.stubborn_conf(
        port, [up.spec(pins=[certs["good"].pin])], f"{where}/root.pem", ipv6,
        server_extra=[f"chroot = {jail}", "user = nobody", f"state-dir = {where}/state"])
    s = servers.Stubborn(stubborn_bin, jail, port, text, cwd=tmp_path,
                         conf_arg=f"{where}/stubborn.conf")
    try:
        s.start()
        _answers(s.port, 75)
        assert os.readlink(f"/proc/{s.proc.pid}/root") == str(jail)
        assert "outside chroot" not in s.log_text(), s.log_text()
        assert "deny list /state/denylist" in s.log_text(), s.log_text()
        # The conf and the CA file are read again from inside the jail.
        s.conf.write_text(text + "\n[upstream second]\nurl = tls://dns.test:1\n"
                          "address = 127.0.0.1\n")
        s.proc.send_signal(signal.SIGHUP)
        assert slow.wait_until(lambda: "reloaded" in s.log_text()), s.log_text()
        assert f"reloaded {jail}/stubborn.conf: 2 upstreams" in s.log_text(), s.log_text()
        _answers(s.port, 76)
    finally:
        status, hung = s.stop()
        request.node.add_report_section("call", "stubborn log", s.log_text())
    assert not hung and status == 0, (status, s.log_text())


@root_only
def test_chroot_warns_about_files_it_cannot_reach(stubborn_bin, upstream, certs, tmp_path,
                                                   ipv6, no_leak_check):
    jail = tmp_path / "jail"
    jail.mkdir()
    up = upstream("first")
    port = servers.free_port(["127.0.0.1"] + (["::1"] if ipv6 else []))
    text = servers.stubborn_conf(port, [up.spec(pins=[certs["good"].pin])],
                                 certs.root_pem, ipv6, server_extra=[f"chroot = {jail}"])
    s = servers.Stubborn(stubborn_bin, tmp_path / "outside", port, text)
    try:
        s.start()
        _answers(s.port, 77)
        log = s.log_text()
        assert f"{s.conf} is outside chroot {jail}" in log, log
        assert f"{certs.root_pem} is outside chroot {jail}" in log, log
    finally:
        status, _ = s.stop()
    assert status == 0


def _send_udp(port, name):
    q = dns.message.make_query(name, "TXT")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(q.to_wire(), ("127.0.0.1", port))
    return q, sock


def _recv(sock, timeout):
    sock.settimeout(timeout)
    try:
        data, _ = sock.recvfrom(65535)
    except socket.timeout:
        return None
    finally:
        sock.close()
    return dns.message.from_wire(data)


def test_sigterm_answers_what_is_in_flight(hostile, stubborn):
    h = hostile(slow.Delayed(0.3, slow.answer_for("late")), name="late")
    s = stubborn([h.spec()])
    q, sock = _send_udp(s.port, servers.who_name("inflight"))
    assert slow.wait_until(lambda: len(h.queries()) >= 1), "the query never left"
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    # Once it has said so, it takes no new queries.
    assert slow.wait_until(lambda: "shutting down" in s.log_text(), timeout=1)
    q2, sock2 = _send_udp(s.port, servers.who_name("toolate"))
    r = _recv(sock, 2.0)
    assert r is not None and r.id == q.id
    assert r.rcode() == dns.rcode.NOERROR
    assert clients.answer_strings(r, "TXT") == ["late"]
    assert s.proc.wait(timeout=3) == 0
    assert time.monotonic() - t0 < 1.5
    assert _recv(sock2, 0.2) is None
    assert "1 queries in flight" in s.log_text()


def test_sigterm_fails_what_cannot_finish_within_a_second(hostile, stubborn):
    h = hostile(slow.Delayed(10, slow.answer_for("never")), name="never")
    s = stubborn([h.spec()])
    q, sock = _send_udp(s.port, servers.who_name("stuck"))
    assert slow.wait_until(lambda: len(h.queries()) >= 1), "the query never left"
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    r = _recv(sock, 3.0)
    took = time.monotonic() - t0
    assert r is not None and r.id == q.id
    assert r.rcode() == dns.rcode.SERVFAIL
    assert 0.5 < took < 1.5, took
    assert s.proc.wait(timeout=3) == 0


def test_log_level(upstream, stubborn, certs, closed_upstream):
    up = upstream("first")
    quiet = stubborn([up.spec(pins=[certs["good"].pin])], server_extra=["log-level = debug"])
    _answers(quiet.port, 78)
    assert "debug:" in quiet.log_text()

    # `ready` is an info line: wait for the port to answer instead.
    dead = closed_upstream("dead")
    port = servers.free_port(["127.0.0.1"])
    s = servers.Stubborn(quiet.binary, quiet.dir.parent / "warning", port,
                         servers.stubborn_conf(port, [dead, up.spec(pins=[certs["good"].pin])], certs.root_pem,
                                               False, server_extra=["log-level = warning"]))
    s.READY = re.compile("")   # `ready` is not logged at this level
    try:
        s.start()
        servers.wait_listening("127.0.0.1", port, time.monotonic() + 5, s.proc, "stubborn",
                               s.log_text, tls=False)
        _answers(port, 79)
        log = s.log_text()
        assert "warning: upstream dead: down" in log, log
        assert "info:" not in log, log
    finally:
        status, _ = s.stop()
    assert status == 0



@root_only
def test_hooks_run_when_stubborn_is_pid_1(stubborn_bin, upstream, certs, tmp_path, ipv6,
                                          request):
    # As a container's entry point stubborn is PID 1: its launcher's
    # parent is then 1 as well, and must not be taken for an orphan.
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) not installed")
    bad, good = upstream("first", "rogue"), upstream("second", "good")
    out = tmp_path / "hook.out"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"cat > {out}.tmp && mv {out}.tmp {out}\n")
    port = servers.free_port(["127.0.0.1"] + (["::1"] if ipv6 else []))
    text = servers.stubborn_conf(port, [bad.spec(pins=[certs["good"].pin]),
                                        good.spec(pins=[certs["good"].pin])],
                                 certs.root_pem, ipv6,
                                 trust_extra=[f"on-incident = sh {hook}"])
    wrapper = tmp_path / "pid1.sh"
    wrapper.write_text(f"#!/bin/sh\nexec unshare --pid --fork --mount-proc {stubborn_bin} \"$@\"\n")
    wrapper.chmod(0o755)
    s = servers.Stubborn(str(wrapper), tmp_path / "pid1", port, text)
    try:
        s.start()
        q, r = clients.ask(s.port, servers.who_name("pid1"), "TXT")
        assert clients.answer_strings(r, "TXT") == ["second"]
        assert slow.wait_until(out.exists), "the hook did not run:\n" + s.log_text()
        assert json.loads(out.read_text())["reason"] == "pin"
        assert "launcher exited" not in s.log_text()
        # SIGTERM to stubborn itself (PID 1 inside), not to unshare.
        (inner,) = [c for c in _children(s.proc.pid)]
        os.kill(inner, signal.SIGTERM)
        assert s.proc.wait(timeout=10) == 0, s.log_text()
    finally:
        s.stop()
        request.node.add_report_section("call", "stubborn log", s.log_text())
