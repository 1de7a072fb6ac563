"""Which addresses a process tree listens on, read from /proc (what ``ss -ltnup`` reads), and its processes."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def _parent_map() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
    return parents


def descendants(root: int) -> set[int]:
    """``root`` and every process below it."""
    parents = _parent_map()
    found, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_addr)
    # /proc/net prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def _bound(kind: str) -> dict[int, str]:
    """Socket inode -> "address:port" for listening TCP and bound UDP sockets of this network namespace."""
    out = {}
    for name in (kind, f"{kind}6"):
        try:
            lines = Path(f"/proc/self/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if kind == "tcp" and state != "0A":  # LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            out[inode] = f"{_address(hex_addr)}:{int(hex_port, 16)}"
    return out


def listening(pids: set[int]) -> dict[int, list[str]]:
    """pid -> the addresses it listens on (TCP) or is bound to (UDP)."""
    sockets = {**_bound("tcp"), **_bound("udp")}
    result: dict[int, list[str]] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in sockets:
                    result.setdefault(pid, []).append(sockets[inode])
    return result


def is_loopback(address: str) -> bool:
    host = ipaddress.ip_address(address.rsplit(":", 1)[0])
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    return host.is_loopback
