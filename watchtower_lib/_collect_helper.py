"""Large collections from one ssh sensor on more than one core: helper processes, each with its own connection.

Why: paramiko handles every SSH packet in Python, on one transport thread per
connection, under the GIL. However many SFTP channels one process opens, it
uses about one core: on loopback it took 4.5-5 s for 222 MB of real logs where
OpenSSH's ``sftp`` took 2.8-3.8 s, with a third of the machine idle. Two
processes of three channels each fetched the same files in 2.7-2.9 s
(``benchmarks/collect.py``, ``docs/benchmarks.md``).

How: the collecting process (the *parent*) lists the sensor and decides which
files need fetching. When that is at least ``collect.HELPER_MIN_BYTES``, it cuts
the work into chunks and starts ``sensor.processes - 1`` helpers
(``python -m watchtower_lib._collect_helper``: a fresh interpreter, no fork of a
threaded process). Each helper connects on its own (same config, same host-key
checks; secrets come from its inherited environment, never through the pipe),
asks the parent for a chunk, runs the ordinary ``collect._transfer_all`` on it
(same checks, fsync, rename and manifest rows) and reports the chunk's
``SensorResult``. Parent and helpers take chunks from one queue, so a helper
that starts late or runs slow simply takes fewer. A helper that cannot connect,
or dies, costs nothing but time: its unfinished chunk goes back to the parent.

Protocol (pickled tuples over two pipes, ``multiprocessing.connection``):
parent -> helper ``("start", sensor, raw_dir, stamp)``, then ``("chunk", files)``
or ``("stop",)`` each time the helper asks; helper -> parent ``("ready",)`` or
``("failed", reason)``, then any number of ``("bytes", n)``, ``("plan", n)`` and
``("log", level, logger, text)``, and ``("done", result, left)`` after each chunk.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BYTES_FLUSH = 4 << 20  # the helper reports progress in steps of this many bytes


class HelperProcess:
    """The parent's end of one helper: start it, hand it chunks, collect what it did."""

    def __init__(self, sensor: Any, raw_dir: Path, stamp: str) -> None:
        self.sensor = sensor
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        package_parent = str(Path(__file__).resolve().parents[1])  # importable even when not installed
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (package_parent, os.environ.get("PYTHONPATH")) if p))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watchtower_lib._collect_helper", str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, close_fds=True, env=env)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._out = Connection(to_child_w, readable=False)
        self._in = Connection(from_child_r, writable=False)
        try:
            self._out.send(("start", sensor, Path(raw_dir), stamp))
        except OSError:  # it died at once (no watchtower_lib for that interpreter?): reap it, then say so
            self.close()
            raise

    def serve(self, take: Callable[[], list | None], on_bytes: Callable[[int], None],
              on_plan: Callable[[int], None], on_done: Callable[[Any, list], None],
              give_back: Callable[[list], None]) -> int:
        """Hand chunks to the helper until ``take`` has none; returns the chunks it completed.

        Runs on a parent thread. ``on_done(result, lost)`` gets each chunk's
        ``SensorResult`` and the files its lost connection cut off (the helper
        then stops); ``give_back`` the chunk a helper held when it died.
        """
        done = 0
        chunk: list | None = None
        try:
            first = self._in.recv()
            if first[0] != "ready":
                log.info("sensor %s: a helper connection could not start (%s); this process fetches its share",
                         self.sensor.name, first[1] if len(first) > 1 else first)
                return 0
            while True:
                chunk = take()
                if not chunk:
                    self._out.send(("stop",))
                    return done
                self._out.send(("chunk", chunk))
                while True:
                    msg = self._in.recv()
                    kind = msg[0]
                    if kind == "bytes":
                        on_bytes(msg[1])
                    elif kind == "plan":
                        on_plan(msg[1])
                    elif kind == "log":
                        logging.getLogger(msg[2]).log(msg[1], "%s", msg[3])
                    elif kind == "done":
                        chunk = None
                        on_done(msg[1], msg[2])
                        done += 1
                        if msg[2]:  # its connection was lost: stop giving it work
                            self._out.send(("stop",))
                            return done
                        break
        except (EOFError, OSError) as exc:
            log.warning("sensor %s: a helper process ended early (%s); this process fetches its files",
                        self.sensor.name, type(exc).__name__)
            return done
        finally:
            if chunk:
                give_back(chunk)

    def close(self) -> None:
        """Wait for the helper to exit (it does once told to stop or once its pipe closes)."""
        for conn in (self._out, self._in):
            try:
                conn.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=self.sensor.connect_timeout + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Sender:
    """Thread-safe sends to the parent (transfer threads, finishers and logging all report)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.pending = 0

    def send(self, msg: tuple) -> None:
        with self.lock:
            self.conn.send(msg)

    # the _Progress interface collect._transfer_all uses
    def plan(self, n: int) -> None:
        self.flush()
        self.send(("plan", n))

    def advance(self, n: int) -> None:
        with self.lock:
            self.pending += n
            if self.pending < BYTES_FLUSH:
                return
            n, self.pending = self.pending, 0
            self.conn.send(("bytes", n))

    def flush(self) -> None:
        with self.lock:
            if self.pending:
                self.conn.send(("bytes", self.pending))
                self.pending = 0


class _Forward(logging.Handler):
    def __init__(self, sender: _Sender) -> None:
        super().__init__()
        self.sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sender.send(("log", record.levelno, record.name, f"[helper {os.getpid()}] {record.getMessage()}"))
        except Exception:  # the parent is gone: nothing left to tell
            pass


def main(fd_in: int, fd_out: int) -> int:
    """The helper: connect, then transfer the chunks the parent hands over."""
    from ._collect_manifest import Manifest
    from ._collect_paths import _reason, forget_real_dirs
    from ._sftp import SftpSource
    from .collect import SensorResult, _transfer_all

    conn_in = Connection(fd_in, writable=False)
    sender = _Sender(Connection(fd_out, readable=False))
    root = logging.getLogger("watchtower_lib")
    root.addHandler(_Forward(sender))
    root.setLevel(logging.INFO)
    root.propagate = False
    _, sensor, raw_dir, stamp = conn_in.recv()
    forget_real_dirs()
    try:
        source = SftpSource(sensor)
    except Exception as exc:  # noqa: BLE001 - the parent does the work instead; say why
        sender.send(("failed", _reason(exc)))
        return 0
    try:
        sender.send(("ready",))
        with Manifest(raw_dir) as manifest:
            while True:
                msg = conn_in.recv()
                if msg[0] != "chunk":
                    return 0
                result = SensorResult(sensor.name, sensor.kind)
                left = _transfer_all(source, sensor, msg[1], Path(raw_dir) / sensor.name, manifest, sender,
                                     stamp, result, plan_total=False, needed=msg[1])  # the parent checked them
                sender.flush()
                sender.send(("done", result, left))
    except EOFError:  # the parent went away
        return 0
    finally:
        source.close()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
