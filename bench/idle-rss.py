#!/usr/bin/env python3
"""What an idle connection costs an SMTP server in memory, plain and TLS.

    bench/idle-rss.py 127.0.0.1:2525 "$(pgrep -x baton)"          # 1000 connections
    bench/idle-rss.py 127.0.0.1:2525 PID -n 5000 --json

Opens N connections to the server at ADDRESS, each read up to its greeting
and answered EHLO, and reads the server's VmRSS (/proc/PID/status) with all
N open; closes them; then opens N connections that have also completed
STARTTLS (no certificate check) and said EHLO again, and reads VmRSS again.
Each phase is measured against the VmRSS just before it opened its
connections, and the difference divided by N is the cost of one idle
connection. Run it against a server with nothing else to do: any other work
moves VmRSS too.

Allocators keep memory that was freed: when VmRSS does not come back down
after the plain connections close, the TLS connections reuse that memory and
the TLS figure against its own start undercounts. The script then says so,
and gives the TLS figure against the VmRSS before the plain phase as well;
`--only tls` (and `--only plain`) measures one phase alone, on a freshly
started server, which is the clean figure.

Loopback only (it opens many connections and holds them), bounded in time
(--timeout for the whole run), Python's standard library only. It raises
its own limit on open files (RLIMIT_NOFILE) to fit N; the server must allow
N connections at once from one client too.
"""

import argparse
import ipaddress
import json
import resource
import socket
import ssl
import sys
import time

# Most connections one run opens (a limit on the descriptors and time it
# can take, not a property of the servers measured).
COUNT_MAX = 100_000
# Descriptors beyond the connections: stdio, /proc reads, the resolver.
FILES_SPARE = 64
# Longest SMTP reply read, in bytes (RFC 5321 §4.5.3.1.5 says 512 per line;
# an EHLO reply has a dozen lines).
REPLY_BYTES_MAX = 16 * 1024
# Longest wait for any one reply or handshake.
STEP_TIMEOUT_SECONDS = 10.0
# Past this share of a phase's growth still held after its connections
# closed, the next phase starts on memory the allocator kept (see above).
RETAINED_FRACTION_MAX = 0.1


class Failure(Exception):
    """A run that cannot go on; the message says why."""


def parse_args():
    parser = argparse.ArgumentParser(
        description="RSS of an SMTP server per idle connection, plain and after STARTTLS."
    )
    parser.add_argument("address", help="the server's SMTP address, HOST:PORT (loopback)")
    parser.add_argument("pid", type=int, help="the server's process id")
    parser.add_argument(
        "-n", "--count", type=int, default=1000, help="connections per phase (1000)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds to wait before reading VmRSS, so the server is done (1)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds for the whole run (300)"
    )
    parser.add_argument("--ehlo", default="idle-rss.invalid", help="the EHLO name")
    parser.add_argument(
        "--only",
        choices=("plain", "tls"),
        help="measure one phase alone (on a freshly started server)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    if not 1 <= args.count <= COUNT_MAX:
        parser.error(f"--count must be between 1 and {COUNT_MAX}")
    return args


def loopback_address(text):
    """(host, port) of HOST:PORT, refused unless it is a loopback address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise Failure(f"address {text!r} is not HOST:PORT")
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    for family, _, _, _, sockaddr in infos:
        if ipaddress.ip_address(sockaddr[0]).is_loopback:
            return family, sockaddr
    raise Failure(f"{text} is not a loopback address: this script only measures local servers")


def vm_rss_kib(pid):
    """The process's resident set size, in KiB, from /proc/PID/status."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        raise Failure(f"no process {pid}") from None
    raise Failure(f"no VmRSS in /proc/{pid}/status (a kernel thread?)")


def raise_file_limit(count):
    """Enough descriptors for `count` connections, or a clear refusal."""
    needed = count + FILES_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return
        except (ValueError, OSError):
            raise Failure(
                f"{count} connections need {needed} open files; the hard limit is {hard}"
            ) from None
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Deadline:
    """The whole run's time limit, handed out to each blocking step."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def step(self):
        left = self.end - time.monotonic()
        if left <= 0:
            raise Failure("out of time (--timeout)")
        return min(left, STEP_TIMEOUT_SECONDS)


def read_reply(sock, deadline):
    """One SMTP reply: (code, lines). Reads up to its last line and no
    further (the server sends nothing unasked, so nothing is lost)."""
    data = b""
    while True:
        sock.settimeout(deadline.step())
        chunk = sock.recv(4096)
        if not chunk:
            raise Failure("the server closed the connection")
        data += chunk
        if len(data) > REPLY_BYTES_MAX:
            raise Failure(f"a reply longer than {REPLY_BYTES_MAX} bytes")
        if not data.endswith(b"\r\n"):
            continue
        lines = data.decode("utf-8", "replace").split("\r\n")[:-1]
        last = lines[-1]
        if len(last) >= 4 and last[3] == " ":
            return int(last[:3]), lines
        if len(last) == 3:
            return int(last), lines


def command(sock, line, expected, deadline):
    sock.settimeout(deadline.step())
    sock.sendall(line.encode() + b"\r\n")
    code, lines = read_reply(sock, deadline)
    if code != expected:
        raise Failure(f"{line.split()[0]}: {lines[-1]}")
    return lines


def open_connection(family, sockaddr, args, tls_context, deadline):
    """A connection past its greeting and EHLO; with `tls_context`, past
    STARTTLS and a second EHLO too."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(deadline.step())
        sock.connect(sockaddr)
        code, lines = read_reply(sock, deadline)
        if code != 220:
            raise Failure(f"greeting: {lines[-1]}")
        ehlo = command(sock, f"EHLO {args.ehlo}", 250, deadline)
        if tls_context is None:
            return sock
        if not any(line[4:].upper().startswith("STARTTLS") for line in ehlo):
            raise Failure("the server does not offer STARTTLS")
        command(sock, "STARTTLS", 220, deadline)
        sock.settimeout(deadline.step())
        sock = tls_context.wrap_socket(sock, server_hostname=sockaddr[0])
        command(sock, f"EHLO {args.ehlo}", 250, deadline)
        return sock
    except BaseException:
        sock.close()
        raise


def phase(name, family, sockaddr, args, tls_context, deadline):
    """Opens N connections, reads VmRSS, closes them."""
    time.sleep(args.settle)
    before = vm_rss_kib(args.pid)
    connections = []
    try:
        for index in range(args.count):
            try:
                connections.append(
                    open_connection(family, sockaddr, args, tls_context, deadline)
                )
            except (OSError, ssl.SSLError) as error:
                raise Failure(f"{name}: connection {index + 1}: {error}") from None
            except Failure as failure:
                raise Failure(f"{name}: connection {index + 1}: {failure}") from None
        time.sleep(args.settle)
        held = vm_rss_kib(args.pid)
    finally:
        for sock in connections:
            sock.close()
    time.sleep(args.settle)
    return {
        "connections": args.count,
        "rss_before_kib": before,
        "rss_with_connections_kib": held,
        "rss_per_connection_kib": (held - before) / args.count,
        "rss_after_closing_kib": vm_rss_kib(args.pid),
    }


def retained_kib(result):
    """VmRSS a phase left behind, when it is more than a small share of
    what the phase added; else None."""
    grown = result["rss_with_connections_kib"] - result["rss_before_kib"]
    left = result["rss_after_closing_kib"] - result["rss_before_kib"]
    return left if left > max(grown, 0) * RETAINED_FRACTION_MAX else None


def report(args, results):
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"idle-rss: {args.address}, pid {args.pid}, {args.count} idle connections at once")
    for name in ("plain", "tls"):
        if name not in results:
            continue
        r = results[name]
        print(
            f"  {name:<5} VmRSS {r['rss_before_kib']} KiB before, "
            f"{r['rss_with_connections_kib']} KiB with them: "
            f"{r['rss_per_connection_kib']:.1f} KiB per connection "
            f"({r['rss_after_closing_kib']} KiB after closing them)"
        )
    if "plain" not in results or "tls" not in results:
        return
    plain, tls = results["plain"], results["tls"]
    retained = results.get("plain_retained_kib")
    if retained is None:
        extra = tls["rss_per_connection_kib"] - plain["rss_per_connection_kib"]
        print(f"  TLS costs {extra:.1f} KiB more per idle connection than plain")
        return
    print(
        f"  note: {retained} KiB stayed resident after the plain connections closed, "
        f"so the TLS phase reused it; against the VmRSS before the plain phase, "
        f"TLS is {tls['rss_per_connection_from_start_kib']:.1f} KiB per connection. "
        f"For clean figures run --only plain and --only tls, each on a fresh server."
    )


def main():
    args = parse_args()
    results = {"address": args.address, "pid": args.pid}
    phases = [args.only] if args.only else ["plain", "tls"]
    status = 0
    try:
        family, sockaddr = loopback_address(args.address)
        raise_file_limit(args.count)
        vm_rss_kib(args.pid)
        deadline = Deadline(args.timeout)
        tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls_context.check_hostname = False
        tls_context.verify_mode = ssl.CERT_NONE
        for name in phases:
            context = tls_context if name == "tls" else None
            results[name] = phase(name, family, sockaddr, args, context, deadline)
    except Failure as failure:
        print(f"idle-rss: error: {failure}", file=sys.stderr)
        results["error"] = str(failure)
        status = 1
    if "plain" in results and "tls" in results:
        start = results["plain"]["rss_before_kib"]
        tls = results["tls"]
        tls["rss_per_connection_from_start_kib"] = (
            tls["rss_with_connections_kib"] - start
        ) / args.count
        results["plain_retained_kib"] = retained_kib(results["plain"])
    if any(name in results for name in phases):
        report(args, results)
    return status


if __name__ == "__main__":
    sys.exit(main())
