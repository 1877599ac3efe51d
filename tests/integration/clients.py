"""DNS clients pointed at stubborn: dnspython for precise assertions, kdig
and dig because they are what people actually type."""

import random
import re
import subprocess
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

CLIENT_TIMEOUT = 5.0


def make_query(name, rdtype="A"):
    q = dns.message.make_query(name, rdtype)
    q.id = random.randint(1, 0xFFFF)
    return q


def ask(port, name, rdtype="A", tcp=False, host="127.0.0.1", source=None,
        timeout=CLIENT_TIMEOUT):
    """Send one query; return (query, response).  dnspython itself rejects a
    reply whose ID or question does not match."""
    q = make_query(name, rdtype)
    if tcp:
        r = dns.query.tcp(q, host, port=port, timeout=timeout, source=source)
    else:
        r = dns.query.udp(q, host, port=port, timeout=timeout, source=source)
    return q, r


def answer_strings(response, rdtype):
    """Presentation form of every answer rdata of the asked type (TXT without
    its quotes)."""
    rdtype = dns.rdatatype.from_text(rdtype) if isinstance(rdtype, str) else rdtype
    out = []
    for rrset in response.answer:
        if rrset.rdtype != rdtype:
            continue
        for rd in rrset:
            if rdtype == dns.rdatatype.TXT:
                out.append(b"".join(rd.strings).decode())
            else:
                out.append(rd.to_text())
    return out


def rcode_text(response):
    return dns.rcode.to_text(response.rcode())


@dataclass
class CliAnswer:
    status: str
    msg_id: int
    answers: list
    output: str


# kdig separates header fields with ";", dig with ",".
_HEADER = re.compile(r"status: (\w+)[;,] id: (\d+)")


def _parse_cli(output, rdtype):
    """Read the header status and the ANSWER section of kdig/dig output."""
    m = _HEADER.search(output)
    status = m.group(1) if m else None
    msg_id = int(m.group(2)) if m else None
    answers = []
    in_answer = False
    for line in output.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            in_answer = True
            continue
        if in_answer:
            if not line.strip() or line.startswith(";;"):
                in_answer = False
                continue
            fields = line.split(None, 4)
            if len(fields) == 5 and fields[3] == rdtype:
                answers.append(fields[4].strip().strip('"'))
    return CliAnswer(status, msg_id, answers, output)


def kdig(binary, port, name, rdtype="A", tcp=False, host="127.0.0.1"):
    cmd = [binary, f"@{host}", "-p", str(port), "+timeout=3", "+retry=0"]
    if tcp:
        cmd.append("+tcp")
    cmd += [name, rdtype]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return _parse_cli(p.stdout + p.stderr, rdtype)


def dig(binary, port, name, rdtype="A", tcp=False, host="127.0.0.1"):
    cmd = [binary, f"@{host}", "-p", str(port), "+time=3", "+tries=1"]
    if tcp:
        cmd.append("+tcp")
    cmd += [name, rdtype]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return _parse_cli(p.stdout + p.stderr, rdtype)
