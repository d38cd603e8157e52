"""Every TCP socket that a short raymeta run listens on, and whether any is off loopback.

Runs ``raymeta meta-train`` (embedded Ray, 1 worker, a few steps by default), or with
``--quickstart`` the whole ``raymeta quickstart --smoke-test`` pipeline, in a subprocess
and polls the listening sockets of the driver and every process descended from it (GCS,
raylet, agents, Ray workers, Ray Train workers with their gloo/TCPStore sockets) until it
exits, so short-lived listeners are seen too. Prints one line per (process, address, port)
and a verdict; exit status 1 if anything listened outside 127.0.0.0/8 and ::1.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/listening_sockets.py [-- extra meta-train args]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import tempfile
import time

import psutil


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped IPv6 forms (``::ffff:127.0.0.1``)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def listening(root: psutil.Process) -> dict[tuple[int, str, int], str]:
    """{(pid, ip, port): process name} for every listening inet socket of ``root`` and its
    descendants (Ray renames its workers as they run tasks; the caller keeps the first name)."""
    found: dict[tuple[int, str, int], str] = {}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return found
    for p in procs:
        try:
            name = p.name()
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                found[(p.pid, c.laddr.ip, c.laddr.port)] = name
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument(
        "--quickstart",
        action="store_true",
        help="watch 'raymeta quickstart --smoke-test' (meta-train, priors, tune) instead",
    )
    ap.add_argument("extra", nargs="*", help="more meta-train arguments")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = (
            ["quickstart", "--smoke-test", "--out", os.path.join(tmp, "qs")]
            if args.quickstart
            else ["meta-train", "--workers", "1", "--steps", str(args.steps)]
            + ["--out", os.path.join(tmp, "meta")]
        )
        cmd = [sys.executable, "-m", "raymeta.cli.main", *run, *args.extra]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        root = psutil.Process(proc.pid)
        seen: dict[tuple[int, str, int], str] = {}
        while proc.poll() is None:
            seen = listening(root) | seen
            time.sleep(args.interval)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        print(f"{run[0]} failed (exit {proc.returncode}):\n{err}", file=sys.stderr)
        return 2
    ports = sorted(((name, ip, port) for (_, ip, port), name in seen.items()), key=lambda t: t[0])
    outside = [t for t in ports if not is_loopback(t[1])]
    for name, ip, port in ports:
        print(f"{'loopback' if is_loopback(ip) else 'EXPOSED '}  {name:<32} {ip}:{port}")
    print(f"{len(ports)} listening sockets, {len(outside)} outside loopback")
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
