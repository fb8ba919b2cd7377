"""Several hosts on one machine for the tests: Linux network namespaces joined by a bridge.

    with Network() as net:
        data = net.host("data")        # 10.N.0.10 inside its own namespace
        data.spawn(["redis-server", ...])
        net.address("data")            # how any host (and the test) reaches it

The test itself stays in the root namespace, where the bridge has 10.N.0.1: it reaches every
host, and the hosts reach each other. Each host's processes can run under their own host name
(a UTS namespace), so that `socket.gethostname()` tells the hosts apart as on real machines.
Needs root and `ip` (iproute2); everything made is removed on exit, processes first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def require_namespaces() -> None:
    """Fail (not skip) where the tests cannot build hosts: CI runs as root with iproute2."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the multi-host tests need root and iproute2's `ip` (network namespaces)")


@dataclass
class Host:
    network: Network
    name: str
    address: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return f"{self.network.prefix}-{self.name}"

    def spawn(
        self,
        args: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        hostname: str | None = None,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `args` inside this host (its own process group, output to `log`)."""
        command = list(args)
        if user:
            command = ["runuser", "-u", user, "--", *command]
        if hostname:
            # A UTS namespace of its own: this host's name, as gethostname() reports it.
            command = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname,
                       *command]  # fmt: skip
        with open(log, "ab") as output:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *command],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            stop(process)
        self.processes.clear()


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 15) -> int:
    """Signal a process's whole group and wait for it; SIGKILL if it takes longer."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        return process.wait(wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait(wait)


class Network:
    """A bridge in the root namespace and hosts (namespaces) on it, on 10.N.0.0/24."""

    def __init__(self) -> None:
        self.number = 100 + os.getpid() % 150
        self.prefix = f"rt{self.number}"
        self.bridge = f"{self.prefix}br"
        self.hosts: dict[str, Host] = {}

    def subnet_address(self, last: int) -> str:
        return f"10.{self.number}.0.{last}"

    def __enter__(self) -> Network:
        require_namespaces()
        self.remove_leftovers()
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.subnet_address(1)}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def host(self, name: str) -> Host:
        """A new host: a namespace with loopback and one interface on the bridge."""
        address = self.subnet_address(10 + len(self.hosts))
        host = Host(self, name, address)
        index = len(self.hosts)
        outside, inside = f"{self.prefix}v{index}o", f"{self.prefix}v{index}i"
        ip("netns", "add", host.namespace)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", outside, "master", self.bridge, "up")
        ip("link", "set", inside, "netns", host.namespace)
        inside_ip = ["netns", "exec", host.namespace, "ip"]
        ip(*inside_ip, "link", "set", "lo", "up")
        ip(*inside_ip, "addr", "add", f"{address}/24", "dev", inside)
        ip(*inside_ip, "link", "set", inside, "up")
        ip(*inside_ip, "route", "add", "default", "via", self.subnet_address(1))
        self.hosts[name] = host
        return host

    def reach_outside(self) -> None:
        """Let the hosts reach what the machine reaches (package mirrors): NAT, undone on exit."""
        forwarding = Path("/proc/sys/net/ipv4/ip_forward")
        self.forwarding_was = forwarding.read_text().strip()
        forwarding.write_text("1")
        nft = ["nft", "add"]
        subprocess.run([*nft, "table", "ip", self.prefix], check=True)
        subprocess.run(
            [
                *nft,
                "chain",
                "ip",
                self.prefix,
                "out",
                "{ type nat hook postrouting priority 100; }",
            ],
            check=True,
        )
        subprocess.run(
            [
                *nft,
                "rule",
                "ip",
                self.prefix,
                "out",
                "ip",
                "saddr",
                f"{self.subnet_address(0)}/24",
                "oifname",
                "!=",
                self.bridge,
                "masquerade",
            ],
            check=True,
        )

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts.values():
            host.stop_all()
        self.remove_leftovers()
        if getattr(self, "forwarding_was", None) is not None:
            subprocess.run(["nft", "delete", "table", "ip", self.prefix], capture_output=True)
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self.forwarding_was)

    def remove_leftovers(self) -> None:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in listed.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(f"{self.prefix}-"):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)


def wait_for_tcp(address: str, port: int, timeout: float, process=None) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((address, port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {address}:{port} after {timeout} s")
