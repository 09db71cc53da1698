"""SSH/SFTP access to one sensor with paramiko: host keys, login, fast reads, remote hashes.

Why these choices:

* **Host keys are checked, never assumed.** The key must already be in
  ``known_hosts`` (``[host]:port`` form for non-22 ports, as OpenSSH writes it).
  An unknown key is refused unless the sensor says ``trust_on_first_use: true``,
  which records it and logs a warning; a *changed* key is always refused.
* **Throughput.** paramiko's defaults (2 MB window, 32 KB packets and reads)
  run at about a fifth of OpenSSH's ``sftp`` on loopback. We advertise a 64 MB
  window and 256 KB packets, prefer AES-GCM, and prefetch reads of up to
  ``READ_SIZE`` bytes (OpenSSH's sftp-server answers reads up to 255 KB; a
  server that answers less is still read correctly, only slower).
  ``benchmarks/collect.py`` measures the result.
* **Remote SHA-256 in one exec per connection.** A shell script hashes the
  exact byte range we download (``head -c SIZE | sha256sum``) while the files
  transfer, so verification costs no extra round trips per file.
"""
from __future__ import annotations

import logging
import posixpath
import re
import shlex
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ._collect_paths import Entry, RemoteFile, entry_from_stat
from .config import SensorConfig
from .errors import IntegrationError, MissingDependencyError

log = logging.getLogger(__name__)

WINDOW_SIZE = 64 * 1024 * 1024
MAX_PACKET_SIZE = 256 * 1024
READ_SIZE = 255 * 1024  # below OpenSSH sftp-server's 256 KiB - 1 KiB cap on one read
WAIT_FOR_BYTES = 1 << 20  # the most a channel reader waits to have buffered before it wakes
MAX_REQUESTS = 48  # reads in flight per file: bounds memory to about 12 MB per transfer
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_SHA256SUM_LINE = re.compile(r"^(\\?)([0-9a-f]{64}) [ *](.*)$", re.S)
_known_hosts_lock = threading.Lock()


class HostKeyError(IntegrationError):
    """The sensor's host key is unknown or changed; never retried."""


class AuthError(IntegrationError):
    """The sensor refused our login; never retried."""


def _paramiko():
    try:
        import paramiko
    except ImportError:
        raise MissingDependencyError("paramiko", "ssh") from None
    return paramiko


def known_hosts_path(sensor: SensorConfig) -> Path:
    return Path(sensor.known_hosts or Path("~/.ssh/known_hosts")).expanduser()


def host_entry(sensor: SensorConfig) -> str:
    host = sensor.host or ""
    return host if sensor.port == 22 else f"[{host}]:{sensor.port}"


def _fingerprint(key) -> str:
    return key.fingerprint  # "SHA256:..." as ssh-keygen -l prints it


def _missing_key_policy(paramiko, sensor: SensorConfig, known: Path):
    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key) -> None:
            entry = host_entry(sensor)
            if not sensor.trust_on_first_use:
                raise HostKeyError(
                    f"sensor {sensor.name!r}: the host key of {entry} ({key.get_name()} {_fingerprint(key)}) "
                    f"is not in {known}. Check that fingerprint with the sensor's administrator, then add it: "
                    f"ssh-keyscan -p {sensor.port} {sensor.host} >> {known} (or connect once with "
                    f"ssh -p {sensor.port} {sensor.host}); or set trust_on_first_use: true for this sensor "
                    f"to record it on the next run")
            with _known_hosts_lock:
                known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with open(known, "a", encoding="ascii") as fh:
                    fh.write(f"{entry} {key.get_name()} {key.get_base64()}\n")
            log.warning("sensor %s: trust_on_first_use recorded the NEW host key of %s (%s %s) in %s; "
                        "later runs refuse any other key", sensor.name, entry, key.get_name(),
                        _fingerprint(key), known)
    return Policy()


def connect(sensor: SensorConfig):
    """An authenticated ``paramiko.SSHClient`` for ``sensor``.

    Raises
    ------
    HostKeyError
        Unknown (without trust_on_first_use) or changed host key; says how to fix it.
    AuthError
        Login refused.
    OSError, paramiko.SSHException
        Connection problems, which the caller retries.
    """
    paramiko = _paramiko()
    known = known_hosts_path(sensor)
    client = paramiko.SSHClient()
    if known.is_file():
        client.load_host_keys(str(known))
    client.set_missing_host_key_policy(_missing_key_policy(paramiko, sensor, known))

    def transport_factory(sock, **kwargs):
        transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE,
                                       default_max_packet_size=MAX_PACKET_SIZE, **kwargs)
        options = transport.get_security_options()
        offered = tuple(options.ciphers)
        options.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in offered) + tuple(
            c for c in offered if c not in PREFERRED_CIPHERS)
        return transport

    password = sensor.password()
    key_file = str(sensor.key_file) if sensor.key_file else None
    try:
        client.connect(sensor.host, port=sensor.port, username=sensor.user, password=password,
                       key_filename=key_file, allow_agent=key_file is None, look_for_keys=key_file is None,
                       timeout=sensor.connect_timeout, banner_timeout=sensor.connect_timeout,
                       auth_timeout=sensor.connect_timeout, channel_timeout=sensor.connect_timeout,
                       transport_factory=transport_factory)
    except paramiko.BadHostKeyException as exc:
        client.close()
        entry = host_entry(sensor)
        raise HostKeyError(
            f"sensor {sensor.name!r}: HOST KEY CHANGED for {entry}: {known} has "
            f"{exc.expected_key.get_name()} {_fingerprint(exc.expected_key)}, the sensor offered "
            f"{exc.key.get_name()} {_fingerprint(exc.key)}. This can be an attack; if the sensor was "
            f"really reinstalled, remove the old key with ssh-keygen -R '{entry}' -f {known} and add the "
            f"new one after checking its fingerprint") from None
    except paramiko.AuthenticationException as exc:
        client.close()
        how = f"key {key_file}" if key_file else "the SSH agent / default keys"
        if password is not None:
            how += f" and the password from ${sensor.password_env}"
        raise AuthError(f"sensor {sensor.name!r}: {sensor.user or 'default user'}@{host_entry(sensor)} refused "
                        f"the login with {how} ({exc})") from None
    except HostKeyError:
        client.close()
        raise
    except paramiko.SSHException as exc:
        # when the transport thread died first (banner timeout, reset), paramiko reports only the
        # follow-on "No existing session"; the transport's own exception says what happened
        transport = client.get_transport()
        cause = getattr(transport, "saved_exception", None)
        client.close()
        if isinstance(cause, Exception) and cause is not exc:
            raise cause from None
        if str(exc) == "No existing session":  # start_client gave up waiting: the handshake is too slow
            raise TimeoutError(f"no SSH handshake from {host_entry(sensor)} within connect_timeout "
                               f"{sensor.connect_timeout:g}s (is an SSH server listening there?)") from None
        raise
    except Exception:
        client.close()
        raise
    return client


def _open_sftp(transport):
    """An SFTP session whose channel hands its reader whole SFTP messages (:func:`_whole_read_pipe`)."""
    paramiko = _paramiko()
    channel = transport.open_session()
    channel.in_buffer = _whole_read_pipe(paramiko)  # before the subsystem starts: no data has arrived yet
    channel.invoke_subsystem("sftp")
    return paramiko.SFTPClient(channel)


_PIPE_CLASS = None


def _whole_read_pipe(paramiko):
    """A channel buffer whose ``read(n)`` waits for ``n`` bytes (up to ``WAIT_FOR_BYTES``), not for any.

    Why: paramiko's SFTP client reads each message with ``recv(n)`` in a loop, and its
    ``BufferedPipe`` wakes the reader for every SSH packet that arrives (OpenSSH sends
    file data in packets of about 16 KB), so one 255 KB read answer cost ~16 thread
    wake-ups, GIL hand-offs and a quadratic ``bytes +=``. Waking the reader once the
    whole answer is buffered made ``benchmarks/collect.py``'s corpus arrive in a median
    3.9 s instead of 4.3 s (4 alternating pairs). Only SFTP channels get it: there every
    ``recv(n)`` wants exactly ``n`` bytes. After the timeout it hands over what it has.
    The window (64 MB) is far larger than one wait, so the sensor never stalls on it.
    """
    global _PIPE_CLASS
    if _PIPE_CLASS is None:
        import time

        from paramiko.buffered_pipe import BufferedPipe, PipeTimeout

        class WholeReadPipe(BufferedPipe):
            def __init__(self) -> None:
                super().__init__()
                self._buffer = bytearray()  # deleting from the front is O(1) for bytearray, not for array
                self._want = 0  # bytes the waiting reader needs before it is worth waking

            def _buffer_frombytes(self, data) -> None:
                self._buffer += data

            def _buffer_tobytes(self, limit=None) -> bytes:
                with memoryview(self._buffer) as view:
                    return bytes(view[:limit])

            def feed(self, data) -> None:
                with self._lock:
                    if self._event is not None:
                        self._event.set()
                    self._buffer += data
                    if len(self._buffer) >= self._want:
                        self._cv.notify_all()

            def read(self, nbytes, timeout=None) -> bytes:
                want = max(1, min(nbytes, WAIT_FOR_BYTES))
                with self._lock:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while len(self._buffer) < want and not self._closed:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            if self._buffer:
                                break  # a slow sensor: hand over what there is
                            raise PipeTimeout()
                        self._want = want
                        try:
                            self._cv.wait(left)
                        finally:
                            self._want = 0
                    out = self._buffer_tobytes(nbytes)
                    del self._buffer[:len(out)]
                    if not self._buffer and self._event is not None and not self._closed:
                        self._event.clear()
                    return out

        _PIPE_CLASS = WholeReadPipe
    return _PIPE_CLASS()


class SftpSource:
    """One SSH connection to a sensor; each worker thread gets its own SFTP channel on it."""

    kind = "ssh"

    def __init__(self, sensor: SensorConfig) -> None:
        self.sensor = sensor
        self.root = sensor.remote_dir
        self.client = connect(sensor)
        self.transport = self.client.get_transport()
        self._local = threading.local()
        self._owners: list[list] = []  # [SFTP client, the thread using it]: every channel opened
        self._lock = threading.Lock()
        self.sha256_available: bool | None = None

    @property
    def sftp(self):
        """This thread's SFTP channel: a channel of a thread that has ended is reused, so thread pools
        that come and go (listing, each chunk of a large collection) never pile channels up past
        OpenSSH's default of 10 sessions per connection."""
        client = getattr(self._local, "sftp", None)
        if client is None:
            me = threading.current_thread()
            with self._lock:
                for pair in self._owners:
                    if not pair[1].is_alive():
                        client, pair[1] = pair[0], me
                        break
            if client is None:
                client = _open_sftp(self.transport)
                client.get_channel().settimeout(self.sensor.transfer_timeout)
                with self._lock:
                    self._owners.append([client, me])
            self._local.sftp = client
        return client

    def realpath(self, path: str) -> str:
        resolved = self.sftp.normalize(path)
        self.sftp.stat(path)  # normalize() of a dangling link may succeed on some servers
        return posixpath.normpath(resolved)

    def listdir(self, path: str) -> list[Entry]:
        return [entry_from_stat(a.filename, a) for a in self.sftp.listdir_attr(path)]

    def stat(self, path: str) -> Entry:
        return entry_from_stat(posixpath.basename(path), self.sftp.stat(path))

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        with self.sftp.open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def read_chunks(self, path: str, offset: int, size: int) -> Iterator[bytes]:
        """Bytes ``offset`` .. ``size`` of ``path``, many reads in flight (never past ``size``)."""
        fh = self.sftp.open(path, "rb")
        try:
            fh.MAX_REQUEST_SIZE = READ_SIZE  # per file object: larger reads, fewer round trips
            fh.seek(offset)
            if size - offset > READ_SIZE:  # one read is enough for a small log: no prefetch thread
                fh.prefetch(size, MAX_REQUESTS)
            remaining = size - offset
            while remaining > 0:
                data = fh.read(min(READ_SIZE, remaining))
                if not data:
                    return
                remaining -= len(data)
                yield data
        finally:
            # a read-only handle: send CLOSE without waiting for its answer (one round trip less per
            # file; paramiko's own garbage-collection path does the same)
            close_async = getattr(fh, "_close", None)
            if close_async is not None:
                close_async(async_=True)
            else:  # pragma: no cover - other paramiko versions
                fh.close()

    def connection_lost(self) -> bool:
        if self.transport is None or not self.transport.is_active():
            return True
        client = getattr(self._local, "sftp", None)
        if client is not None:
            channel = client.get_channel()
            return channel.closed or channel.eof_received
        return False

    def verifier(self, files: Sequence[RemoteFile]) -> Callable[[RemoteFile, str], bool | None]:
        """Start hashing ``files`` on the sensor; the returned ``verify(rf, sha256)`` checks one download.

        One ``sha256sum`` process hashes every file (no fork per file, which
        would cost more than the transfer of a small log). It hashes whole
        files; when a digest differs, the exact downloaded range is hashed
        again with ``head -c SIZE`` (a Zeek ``current/`` log keeps growing after
        it was listed). ``verify`` returns None when the sensor cannot tell
        (no ``sha256sum``, no shell, or the file vanished there); such files
        are checked by size only.
        """
        if self.sha256_available is False or not files:
            return lambda rf, sha: None
        wanted = [rf.path for rf in files]
        script = ["command -v sha256sum >/dev/null 2>&1 && command -v head >/dev/null 2>&1 "
                  "|| { echo WT-NO-SHA256; exit 0; }", "echo WT-SHA256-OK"]
        for i in range(0, len(wanted), 200):
            script.append("sha256sum -- " + " ".join(shlex.quote(p) for p in wanted[i:i + 200]) + " 2>/dev/null")
        script.append("echo WT-SHA256-DONE")
        channel = self._run_script(script)
        if channel is None:
            return lambda rf, sha: None
        stream = channel.makefile("rb")
        digests: dict[str, str] = {}
        lock = threading.Lock()
        state = {"open": True}

        def read_until(path: str) -> None:
            while state["open"] and path not in digests:
                text = self._readline(stream, channel)
                if text is None or text == "WT-SHA256-DONE" or not self.sha256_available:
                    state["open"] = False
                    channel.close()
                    return
                parsed = _parse_sha256sum(text)
                if parsed is not None:
                    digests[parsed[1]] = parsed[0]

        def verify(rf: RemoteFile, sha: str) -> bool | None:
            with lock:
                read_until(rf.path)
                whole = digests.pop(rf.path, None)
            if whole is None:
                return None
            if whole == sha:
                return True
            exact = self._exact_sha256(rf)  # the file may have grown since it was listed
            return None if exact is None else exact == sha
        return verify

    def _run_script(self, script: list[str]):
        """``sh -s`` on the sensor fed ``script``; None when commands cannot run there."""
        try:
            channel = self.transport.open_session(timeout=self.sensor.connect_timeout)
            # a login shell that hangs in its rc files must not hold the transfers up for long
            channel.settimeout(self.sensor.connect_timeout if self.sha256_available is None
                               else self.sensor.transfer_timeout)
            channel.exec_command("sh -s")
            channel.sendall(("\n".join(script) + "\n").encode("utf-8", "surrogateescape"))
            channel.shutdown_write()
        except Exception as exc:  # exec not allowed (sftp-only account) or the like
            log.info("sensor %s: cannot run commands (%s); files are checked by size only", self.sensor.name, exc)
            self.sha256_available = False
            return None
        return channel

    def _readline(self, stream, channel) -> str | None:
        """The next line of a script's output, or None at its end; settles ``sha256_available``."""
        try:
            line = stream.readline()
        except (socket.timeout, OSError, EOFError) as exc:
            if self.sha256_available is None:
                log.warning("sensor %s: the sensor's shell did not answer within %.0fs (%s); files are "
                            "checked by size only", self.sensor.name, self.sensor.connect_timeout,
                            type(exc).__name__)
                self.sha256_available = False
            else:
                log.warning("sensor %s: lost the sensor's sha256sum output (%s); the remaining files of this "
                            "connection are checked by size only", self.sensor.name, type(exc).__name__)
            return None
        if not line:
            return None
        text = line.decode("utf-8", "surrogateescape").rstrip("\n")
        if self.sha256_available is None:
            if text == "WT-SHA256-OK":
                self.sha256_available = True
                channel.settimeout(self.sensor.transfer_timeout)
                return self._readline(stream, channel)
            log.info("sensor %s: no sha256sum/head on the sensor (or no shell: %r); files are checked by size "
                     "only", self.sensor.name, text[:80])
            self.sha256_available = False
            return None
        return text

    def _exact_sha256(self, rf: RemoteFile) -> str | None:
        """SHA-256 of exactly the first ``rf.size`` bytes on the sensor (one command)."""
        channel = self._run_script([f"head -c {rf.size} -- {shlex.quote(rf.path)} 2>/dev/null | sha256sum"])
        if channel is None:
            return None
        try:
            text = self._readline(channel.makefile("rb"), channel)
        finally:
            channel.close()
        parsed = _parse_sha256sum(text or "")
        if parsed is None or (parsed[0] == EMPTY_SHA256 and rf.size > 0):  # head failed: nothing was hashed
            return None
        return parsed[0]

    def close(self) -> None:
        with self._lock:
            for client, _ in self._owners:
                try:
                    client.close()
                except Exception:  # already dead with the connection
                    pass
            self._owners.clear()
        self.client.close()


def _parse_sha256sum(line: str) -> tuple[str, str] | None:
    """(digest, file name) from one line of GNU/BusyBox ``sha256sum`` output, undoing GNU's escaping."""
    match = _SHA256SUM_LINE.match(line)
    if match is None:
        return None
    escaped, digest, name = match.groups()
    if escaped:  # GNU: a leading backslash means the name has \\, \n or \r escaped
        name = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "\\": "\\"}.get(m.group(1), m.group(1)), name)
    return digest, name
