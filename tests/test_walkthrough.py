"""docs/deployment.md's fresh-machine walkthrough, pasted into a fresh Debian 12 machine.

The machine is a container: debootstrap's minimal Debian 12 booted by systemd-nspawn, so
systemd is PID 1 as on a VM, in a network namespace of its own whose NAT reaches Debian's
mirror and PyPI. Every ```sh block of "From a fresh machine to a running service" runs in
order, in one shell, as an admin user with sudo, and `createsuperuser`'s prompts are answered
through a pty. The blocks run as written except for what no sandbox can have, each replaced
exactly once (the test fails if the text is gone):

- the repository's URL: a git bundle of this checkout;
- Let's Encrypt: Pebble, Let's Encrypt's own test server (Debian's package), on the machine,
  because Let's Encrypt cannot reach a sandbox. certbot, the webroot, the deploy hook and the
  running service's port 80 are the real ones.

What a VM provider gives before the walkthrough starts is prepared here: a host name and a DNS
name that resolves to the machine (/etc/hosts), DNS, and the certificate authorities this
machine trusts (this sandbox reaches the registries through a proxy with its own CA; pip is
told to use the system's store for it). Pebble's root is trusted too, as Let's Encrypt's is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import textwrap
import time
from pathlib import Path

import pexpect
import pytest
from websockets.sync.client import connect

from tests import netns

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "app.example.com"
MIRROR = os.environ.get("REALTIME_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PEBBLE = "/usr/bin/pebble"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]


def walkthrough_blocks() -> list[str]:
    """The shell blocks of the walkthrough section, dedented, in order."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text.split("## From a fresh machine to a running service", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = re.findall(r"^( *)```sh\n(.*?)^\1```", section, flags=re.S | re.M)
    return [textwrap.dedent(body) for _, body in blocks]


def replace_once(script: str, old: str, new: str) -> str:
    assert script.count(old) == 1, f"the walkthrough no longer contains {old!r} exactly once"
    return script.replace(old, new)


def walkthrough_script() -> str:
    script = "\n".join(
        f"echo '=== walkthrough block {number}'\n{block}"
        for number, block in enumerate(walkthrough_blocks(), start=1)
    )
    script = replace_once(
        script, "https://github.com/your-team/realtime.git", "/opt/realtime.bundle"
    )
    script = replace_once(
        script,
        "sudo certbot certonly --webroot",
        "sudo certbot certonly --server https://localhost:14000/dir --webroot",
    )
    return "set -e -o pipefail\ncd\n" + script + "\necho '=== walkthrough done'\n"


def test_the_walkthrough_has_every_step():
    blocks = walkthrough_blocks()
    assert len(blocks) >= 11
    for command in (
        "useradd",
        "pip install --require-hashes",
        "createdb",
        "migrate",
        "systemctl enable --now realtime",
        "certbot certonly",
        "nftables",
        "pg_dump",
    ):
        assert any(command in block for block in blocks), command


class Machine:
    """A booted Debian 12 container; `run` executes inside it as root."""

    def __init__(self, rootfs: Path, namespace: str, log: Path) -> None:
        self.rootfs = rootfs
        self.namespace = namespace
        self.log = log
        self.nspawn: subprocess.Popen[bytes] | None = None

    def boot(self) -> None:
        self.console = self.log.open("wb")
        self.nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--register=no",
                "--keep-unit",
                "--boot",
                f"--directory={self.rootfs}",
                f"--network-namespace-path=/run/netns/{self.namespace}",
                # A VM's root may change its firewall; nspawn withholds this capability otherwise.
                "--capability=CAP_NET_ADMIN",
                "--machine=vm",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"the machine did not boot: {self.log.read_text()[-2000:]}")

    def leader(self) -> int:
        assert self.nspawn is not None and self.nspawn.poll() is None, "the machine stopped"
        children = subprocess.run(
            ["pgrep", "-P", str(self.nspawn.pid)], capture_output=True, text=True
        ).stdout.split()
        if not children:
            raise ProcessLookupError("systemd has not started in the machine yet")
        return int(children[0])

    def command(self, *args: str) -> list[str]:
        return [
            "nsenter",
            "-t",
            str(self.leader()),
            "-a",
            "env",
            "-i",
            f"PATH={PATH}",
            "HOME=/root",
            "LANG=C.UTF-8",
            "TERM=dumb",
            *args,
        ]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            command = self.command(*args)
        except ProcessLookupError as error:
            return subprocess.CompletedProcess(args, 1, "", str(error))
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if check and done.returncode:
            raise AssertionError(f"{args} failed in the machine: {done.stdout}{done.stderr}")
        return done

    def shutdown(self) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            # SIGTERM to nspawn asks the machine's systemd to power off.
            netns.stop(self.nspawn, signal.SIGTERM, wait=30)
        if self.nspawn is not None:
            self.console.close()


def debootstrap(rootfs: Path) -> None:
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus,sudo,ca-certificates",
            "bookworm",
            str(rootfs),
            MIRROR,
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )


def prepare_like_a_vm(rootfs: Path) -> None:
    """What a VM has before anyone logs in: names, DNS, trusted CAs, an admin with sudo."""
    (rootfs / "etc/hostname").write_text("vm\n")
    (rootfs / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\tvm\n127.0.0.1\t{DOMAIN}\n")
    shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    local_cas = rootfs / "usr/local/share/ca-certificates"
    for ca in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(ca, local_cas / ca.name)
    if any(local_cas.iterdir()):
        pip_conf = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
        (rootfs / "etc/pip.conf").write_text(pip_conf)
    (rootfs / "etc/sudoers.d/admin").write_text("admin ALL=(ALL) NOPASSWD:ALL\n")
    (rootfs / "etc/sudoers.d/admin").chmod(0o440)


def bundle_checkout(destination: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "bundle", "create", str(destination), "HEAD", "--branches"],
        check=True,
        capture_output=True,
    )


def start_pebble(machine: Machine) -> None:
    """Pebble on the machine, validating over its port 80 (the service's redirect listener)."""
    directory = machine.rootfs / "opt/pebble"
    directory.mkdir(parents=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(directory / "key.pem"),
            "-out",
            str(directory / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    (directory / "config.json").write_text(
        '{"pebble": {"listenAddress": "127.0.0.1:14000",'
        ' "managementListenAddress": "127.0.0.1:15000",'
        ' "certificate": "/opt/pebble/cert.pem", "privateKey": "/opt/pebble/key.pem",'
        ' "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "",'
        ' "externalAccountBindingRequired": false}}'
    )
    shutil.copy(PEBBLE, machine.rootfs / "usr/local/bin/pebble")
    shutil.copy(
        directory / "cert.pem", machine.rootfs / "usr/local/share/ca-certificates/pebble-api.crt"
    )
    machine.run(
        "systemd-run",
        "--unit=pebble",
        "-E",
        "PEBBLE_VA_NOSLEEP=1",
        "-E",
        "PEBBLE_WFE_NONCEREJECT=0",
        "/usr/local/bin/pebble",
        "-config",
        "/opt/pebble/config.json",
    )
    root = fetch_in_machine(machine, "https://localhost:15000/roots/0", directory / "cert.pem")
    (machine.rootfs / "usr/local/share/ca-certificates/pebble-root.crt").write_text(root)
    machine.run("update-ca-certificates")


def fetch_in_machine(machine: Machine, url: str, cafile: Path) -> str:
    """GET from inside the machine's network (Pebble listens on its loopback)."""
    code = (
        "import ssl, sys, time, urllib.request\n"
        "context = ssl.create_default_context(cafile=sys.argv[2])\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        print(urllib.request.urlopen(sys.argv[1], context=context).read().decode())\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
        "else:\n"
        "    sys.exit('no answer from ' + sys.argv[1])\n"
    )
    done = subprocess.run(
        ["nsenter", "-t", str(machine.leader()), "-n", "python3", "-c", code, url, str(cafile)],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def paste_walkthrough(machine: Machine, transcript: Path) -> None:
    """Run the walkthrough as `admin` through a pty, answering createsuperuser's prompts."""
    (machine.rootfs / "opt/walkthrough.sh").write_text(walkthrough_script())
    machine.run("useradd", "--create-home", "--shell", "/bin/bash", "admin")
    command = machine.command("runuser", "-l", "admin", "-c", "bash /opt/walkthrough.sh")
    with transcript.open("w") as log:
        shell = pexpect.spawn(
            command[0],
            command[1:],
            encoding="utf-8",
            timeout=900,
            logfile=log,
            dimensions=(50, 200),
        )
        answers = {
            "Username": "boss",
            "Email address": f"boss@{DOMAIN}",
            "Password": "a long pass phrase 4 walkthrough",
            "Password (again)": None,
        }
        answers["Password (again)"] = answers["Password"]
        prompts = [re.escape(prompt) + r"[^:]*: " for prompt in answers]
        while True:
            index = shell.expect([*prompts, pexpect.EOF])
            if index == len(prompts):
                break
            shell.sendline(list(answers.values())[index])
        shell.close()
    output = transcript.read_text()
    assert shell.exitstatus == 0 and "=== walkthrough done" in output, output[-4000:]


def served_certificate(address: str, trust: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection((address, 443), 5) as raw,
        trust.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        return tls.getpeercert(binary_form=True)


def machine_trust(machine: Machine) -> ssl.SSLContext:
    """Trust what the machine's clients trust: Pebble's root, as a browser trusts Let's Encrypt."""
    return ssl.create_default_context(
        cafile=str(machine.rootfs / "usr/local/share/ca-certificates/pebble-root.crt")
    )


def welcome_from(address: str, trust: ssl.SSLContext) -> str:
    # Connect by address, check the certificate against the DNS name (as a client resolving it).
    raw = socket.create_connection((address, 443), 10)
    with connect(
        f"wss://{DOMAIN}/ws/",
        sock=raw,
        ssl=trust,
        server_hostname=DOMAIN,
        origin=f"https://{DOMAIN}",
        open_timeout=10,
    ) as websocket:
        return websocket.recv(10)


def cron_command(machine: Machine) -> tuple[str, str]:
    line = next(
        line
        for line in (machine.rootfs / "etc/cron.d/realtime-backup").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    fields = line.split(None, 6)
    return fields[5], fields[6].replace("\\%", "%")


def blocked(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), 2):
        return False
    return True


def require_tools() -> None:
    missing = [
        tool
        for tool in ("debootstrap", "systemd-nspawn", "nft", PEBBLE)
        if shutil.which(tool) is None
    ]
    if missing:
        pytest.fail(f"the walkthrough test needs {missing} (.ci/run installs them)")


def test_the_walkthrough_runs_on_a_fresh_debian_12(tmp_path):
    require_tools()
    netns.require_namespaces()
    rootfs = tmp_path / "vm"
    debootstrap(rootfs)
    prepare_like_a_vm(rootfs)
    bundle_checkout(rootfs / "opt/realtime.bundle")
    with netns.Network() as network:
        network.reach_outside()
        host = network.host("vm")
        machine = Machine(rootfs, host.namespace, tmp_path / "console.log")
        try:
            machine.boot()
            start_pebble(machine)
            paste_walkthrough(machine, tmp_path / "transcript.log")
            check_the_running_machine(machine, host.address)
        finally:
            machine.shutdown()


def settled_state(machine: Machine, unit: str, within: float = 60) -> str:
    """A unit's state once it is not reloading or activating any more (`systemctl reload`
    returns at the SIGHUP; serve says READY=1 when its workers are replaced)."""
    deadline = time.monotonic() + within
    while True:
        state = machine.run("systemctl", "is-active", unit, check=False).stdout.strip()
        if state not in ("reloading", "activating") or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def check_the_running_machine(machine: Machine, address: str) -> None:
    trust = machine_trust(machine)
    # The service runs under systemd with the certificate Pebble issued through its port 80
    # (once the rolling reload certbot's deploy hook started in the walkthrough is done).
    assert settled_state(machine, "realtime") == "active"
    assert https_get(address, "/healthz", trust).startswith(b"HTTP/1.1 200")
    assert json.loads(welcome_from(address, trust))["type"] == "welcome"
    # The superuser from step 6 exists in PostgreSQL.
    users = machine.run(
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-tA",
        "realtime",
        "-c",
        "select username from auth_user where is_superuser",
    ).stdout.split()
    assert users == ["boss"]
    # Renewal: certbot runs the stored deploy hook, the service reloads, a new certificate.
    before = served_certificate(address, trust)
    machine.run("certbot", "renew", "--force-renewal", "--no-random-sleep-on-renew")
    assert wait_until(lambda: served_certificate(address, trust) != before, 60)
    assert https_get(address, "/healthz", trust).startswith(b"HTTP/1.1 200")
    # The firewall: 443 and 80 answer from outside, anything else does not.
    machine.run("systemd-run", "--unit=stray", "python3", "-m", "http.server", "8080")
    inside = "import socket; socket.create_connection(('127.0.0.1', 8080), 2)"
    assert wait_until(lambda: machine.run("python3", "-c", inside, check=False).returncode == 0, 10)
    assert not blocked(address, 80)
    assert blocked(address, 8080)
    # The backup line of cron, run as its user now: a dump pg_restore can read.
    user, command = cron_command(machine)
    machine.run("runuser", "-u", user, "--", "sh", "-c", command)
    listed = machine.run("sh", "-c", "pg_restore --list /var/backups/realtime/*.dump")
    assert "TABLE public realtime_broadcast" in listed.stdout
    assert machine.run("systemctl", "is-active", "cron").stdout.strip() == "active"
    # The journal has the service's lines.
    journal = machine.run("journalctl", "-u", "realtime", "--no-pager").stdout
    assert "is ready" in journal and "reload done" in journal


def https_get(address: str, path: str, trust: ssl.SSLContext) -> bytes:
    """GET by address, the certificate verified for DOMAIN (the test has no DNS for it)."""
    with (
        socket.create_connection((address, 443), 10) as raw,
        trust.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
        return b"".join(iter(lambda: tls.recv(65536), b""))


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if condition():
                return True
        time.sleep(0.5)
    return False
