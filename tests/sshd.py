"""A private, real OpenSSH server on 127.0.0.1 for the collection tests and benchmark.

Why a real one: host-key checks, permission errors, a session killed mid-transfer
and the `sftp` client comparison only mean something against the real daemon.
Everything lives in one temp folder (sshd_config, host key, client key,
authorized_keys, pid file, log); nothing touches /etc/ssh or ~/.ssh.

``/usr/sbin/sshd`` wants ``/run/sshd`` (its privilege-separation directory)
when started as root; :meth:`SshServer.start` creates it if it can.
"""
from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"


def free_port() -> int:
    """A TCP port nobody listens on right now (closed again before it is returned)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "watchtower-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)


class SshServer:
    """``sshd -D -e`` with its own config in ``workdir``; :meth:`stop` ends it by PID.

    Parameters
    ----------
    workdir : an empty folder for config, keys, pid file and log.
    max_sessions : sshd's MaxSessions (sessions per connection; OpenSSH's default is 10).
    """

    def __init__(self, workdir: Path, max_sessions: int = 32) -> None:
        self.workdir = Path(workdir)
        self.max_sessions = max_sessions
        self.port = 0
        self.host = "127.0.0.1"
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.client_key = self.workdir / "client_ed25519"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.known_hosts = self.workdir / "known_hosts"
        self.config = self.workdir / "sshd_config"
        self.pid_file = self.workdir / "sshd.pid"
        self.log_file = self.workdir / "sshd.log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self, timeout: float = 10.0) -> SshServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if not self.host_key.exists():
            _keygen(self.host_key)
            _keygen(self.client_key)
            self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
            self.authorized_keys.chmod(0o644)  # readable by the unprivileged test user too
        self.port = free_port()
        self.config.write_text("\n".join([
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            # in-process SFTP: also works for a user whose shell is nologin (the unreadable-file test)
            "Subsystem sftp internal-sftp",
            f"MaxSessions {self.max_sessions}",
            "MaxStartups 50",
            # sessions get the temp folder as HOME, so the login shell reads no rc files of the
            # machine running the tests (like a clean sensor; a root ~/.bashrc here can hang on pyenv)
            f"SetEnv HOME={self.workdir}",
            "LogLevel INFO",
            "",
        ]))
        self.known_hosts.write_text(self.known_hosts_line())
        log = self.log_file.open("ab")
        self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.process.returncode}: {self.log_file.read_text()}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not answer on port {self.port} within {timeout}s: {self.log_file.read_text()}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def stop(self) -> None:
        """End the listener and every session it forked, by PID."""
        if self.process is None:
            return
        self.kill_sessions()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests --------------------------------------------------
    @property
    def user(self) -> str:
        return getpass.getuser()

    def known_hosts_line(self) -> str:
        """The line OpenSSH would write for this server: ``[127.0.0.1]:PORT ssh-ed25519 AAAA...``."""
        key_type, key_b64 = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"[{self.host}]:{self.port} {key_type} {key_b64}\n"

    def session_pids(self) -> list[int]:
        """PIDs of every process below the listener (one set per open connection)."""
        if self.process is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found: list[int] = []
        todo = [self.process.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def kill_sessions(self) -> int:
        """SIGKILL every session process (cuts open connections; the listener stays up)."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)
