"""Collection (phase 1) against a real OpenSSH server on 127.0.0.1, with real Zeek logs.

The server is ``/usr/sbin/sshd`` with a private config (see ``tests/sshd.py``);
the remote files are copies of the shared corpus. Nothing here is mocked: the
cut connection is a SIGKILL of the real sshd session, the unreadable file is a
real EACCES from the real SFTP server.
"""
from __future__ import annotations

import getpass
import hashlib
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require
from sshd import SSHD, SshServer, free_port

from watchtower_lib._collect_manifest import Manifest
from watchtower_lib._collect_paths import safe_local_path, unsafe_name
from watchtower_lib.cli import cli
from watchtower_lib.collect import collect
from watchtower_lib.config import SensorConfig, Settings
from watchtower_lib.errors import ConfigError

ZAT = "multi/zat-samples/tsv"
WRCCDC = "multi/wrccdc-2018/zeek-tsv"
PATTERNS = ("*.log", "*.log.gz", "current/*.log")


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def sshd():
    require("SSHD", SSHD.exists(), f"{SSHD} not found")
    # world-traversable, so the unprivileged login of the unreadable-file test can read authorized_keys
    workdir = Path(tempfile.mkdtemp(prefix="wt-sshd-"))
    workdir.chmod(0o755)
    server = SshServer(workdir).start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def remote():
    folder = Path(tempfile.mkdtemp(prefix="wt-remote-"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(folder, ignore_errors=True)


def _sensor(server: SshServer, remote: Path, **overrides) -> SensorConfig:
    values = dict(name="edge", host=server.host, port=server.port, user=server.user,
                  key_file=server.client_key, known_hosts=server.known_hosts, remote_dir=str(remote),
                  patterns=PATTERNS, retries=0, connect_timeout=5.0, transfer_timeout=20.0)
    values.update(overrides)
    return SensorConfig(**values)


def _settings(tmp_path: Path, *sensors: SensorConfig) -> Settings:
    return Settings(raw_dir=tmp_path / "raw", store_dir=tmp_path / "store", sensors=sensors)


def _populate(remote: Path, shared: Path) -> dict[str, Path]:
    """Real logs on the 'sensor': four ZAT TSV logs, two gzipped WRCCDC logs, one current/ log."""
    files = {
        "conn.log": shared / ZAT / "conn.log",
        "dns.log": shared / ZAT / "dns.log",
        "http.log": shared / ZAT / "http.log",
        "ssl.log": shared / ZAT / "ssl.log",
        "dns.log.gz": shared / WRCCDC / "dns.log.gz",
        "weird.log.gz": shared / WRCCDC / "weird.log.gz",
        "current/conn.log": shared / "scenarios/stratosphere-sdt/003-android-rat/conn.log",
    }
    for rel, source in files.items():
        (remote / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, remote / rel)
    (remote / "current").chmod(0o755)
    (remote / "README.txt").write_text("not selected by the patterns\n")
    return files


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ sync
def test_first_sync_then_second_downloads_nothing(sshd, remote, shared_data, tmp_path):
    files = _populate(remote, shared_data)
    settings = _settings(tmp_path, _sensor(sshd, remote))
    first = collect(settings).sensors[0]
    assert first.status == "ok", first.errors
    assert first.files == len(files) == 7
    assert first.bytes == sum(p.stat().st_size for p in files.values())
    assert sorted(p.relative_to(tmp_path / "raw" / "edge").as_posix() for p in first.new_paths) == sorted(files)
    for rel, source in files.items():
        assert (tmp_path / "raw" / "edge" / rel).read_bytes() == source.read_bytes()
    assert not (tmp_path / "raw" / "edge" / "README.txt").exists()
    assert not list((tmp_path / "raw").rglob("*.part"))
    with Manifest(tmp_path / "raw") as manifest:
        assert manifest.count("edge") == 7
        record = manifest.get("edge", "dns.log.gz")
        assert record.sha256 == _sha(shared_data / WRCCDC / "dns.log.gz")
        assert record.size == 1182875

    second = collect(settings).sensors[0]
    assert second.status == "ok"
    assert (second.files, second.bytes, second.unchanged, second.new_paths) == (0, 0, 7, [])


def test_growing_current_log_fetches_only_the_tail_and_keeps_the_old_copy(sshd, remote, shared_data, tmp_path):
    full = (shared_data / "scenarios/stratosphere-sdt/003-android-rat/conn.log").read_bytes()
    lines = full.splitlines(keepends=True)
    head = b"".join(lines[: len(lines) // 2])  # Zeek has written half of the log so far
    (remote / "current").mkdir()
    (remote / "current" / "conn.log").write_bytes(head)
    settings = _settings(tmp_path, _sensor(sshd, remote))
    assert collect(settings).sensors[0].files == 1

    with open(remote / "current" / "conn.log", "ab") as fh:  # ... and then the rest
        fh.write(full[len(head):])
    result = collect(settings).sensors[0]
    local = tmp_path / "raw" / "edge" / "current" / "conn.log"
    assert result.status == "ok"
    assert local.read_bytes() == full
    assert result.bytes == len(full) - len(head)  # only the new tail travelled
    assert result.resumed == [("current/conn.log", len(head))]
    assert len(result.old_copies) == 1
    assert result.old_copies[0].name.startswith("conn.prev-") and result.old_copies[0].name.endswith(".log")
    assert result.old_copies[0].parent == local.parent / ".superseded"  # hidden: the store's folder walk skips it
    assert result.old_copies[0].read_bytes() == head
    assert result.new_paths == [local]
    with Manifest(tmp_path / "raw") as manifest:
        assert [(p, r) for p, _, r in manifest.superseded_copies("edge")] == [("current/conn.log", "grown")]


def test_rotated_log_is_fetched_again_and_the_old_copy_kept(sshd, remote, shared_data, tmp_path):
    first = shared_data / ZAT / "dns.log"  # 12,406 bytes
    smaller = shared_data / ZAT / "weird.log"  # 1,484 bytes: rotation replaced it with a new, smaller file
    bigger = shared_data / ZAT / "conn.log"  # 45,416 bytes, different from the first byte: not a growth
    shutil.copyfile(first, remote / "dns.log")
    settings = _settings(tmp_path, _sensor(sshd, remote))
    local = tmp_path / "raw" / "edge" / "dns.log"
    collect(settings)

    shutil.copyfile(smaller, remote / "dns.log")
    result = collect(settings).sensors[0]
    assert (result.status, result.files, result.resumed) == ("ok", 1, [])
    assert local.read_bytes() == smaller.read_bytes()
    assert [p.read_bytes() for p in result.old_copies] == [first.read_bytes()]

    shutil.copyfile(bigger, remote / "dns.log")
    result = collect(settings).sensors[0]
    assert result.resumed == []  # the prefix differs, so nothing was reused
    assert result.bytes == bigger.stat().st_size
    assert local.read_bytes() == bigger.read_bytes()
    copies = sorted(p.read_bytes() for p in (tmp_path / "raw" / "edge" / ".superseded").glob("dns.prev-*.log"))
    assert copies == sorted([first.read_bytes(), smaller.read_bytes()])
    with Manifest(tmp_path / "raw") as manifest:
        assert [r for _, _, r in manifest.superseded_copies("edge")] == ["rotated", "rotated"]


def test_touched_file_with_same_content_is_not_kept_twice(sshd, remote, shared_data, tmp_path):
    shutil.copyfile(shared_data / ZAT / "ssl.log", remote / "ssl.log")
    settings = _settings(tmp_path, _sensor(sshd, remote))
    collect(settings)
    os.utime(remote / "ssl.log", (time.time() + 60, time.time() + 60))
    result = collect(settings).sensors[0]
    assert (result.files, result.unchanged, result.old_copies, result.new_paths) == (0, 1, [], [])
    assert result.bytes == (remote / "ssl.log").stat().st_size  # it did travel again (new mtime)
    assert list((tmp_path / "raw" / "edge").iterdir()) == [tmp_path / "raw" / "edge" / "ssl.log"]


def test_replaced_file_that_looks_grown_is_fetched_whole_in_the_same_run(sshd, remote, shared_data, tmp_path):
    """A log replaced by a longer one whose first and last 64 KiB (of the old length) match the old
    copy passes the cheap prefix check; the sensor's sha256sum catches it and the file is fetched again
    whole in the same run, so the result is the sensor's file, not old bytes plus a new tail."""
    real = (shared_data / "labelled/stratosphere-sdt/011-ctu-normal-43-day1/conn.log.labeled").read_bytes()
    old = real[:400_000]
    middle = len(old) // 2
    replaced = old[:middle] + old[middle:middle + 100].swapcase() + old[middle + 100:] + real[400_000:600_000]
    (remote / "conn.log").write_bytes(old)
    settings = _settings(tmp_path, _sensor(sshd, remote))
    assert collect(settings).sensors[0].files == 1
    (remote / "conn.log").write_bytes(replaced)
    result = collect(settings).sensors[0]
    assert result.status == "ok", result.errors
    local = tmp_path / "raw" / "edge" / "conn.log"
    assert local.read_bytes() == replaced
    assert result.bytes == len(replaced) + (len(replaced) - len(old))  # the tail, then the whole file
    assert [p.read_bytes() for p in result.old_copies] == [old]  # the old copy is kept, not lost
    assert collect(settings).sensors[0].files == 0  # settled: the next run has nothing to do


def test_a_failure_while_finishing_is_reported_not_swallowed(sshd, remote, shared_data, tmp_path, monkeypatch):
    """An unexpected error after the download (here the manifest refusing a write, as on a full disk)
    makes that file an error and the sensor partial, with a non-zero exit; the next run completes it."""
    import sqlite3

    from watchtower_lib import _collect_manifest

    files = _populate(remote, shared_data)
    settings = _settings(tmp_path, _sensor(sshd, remote))
    real_put = _collect_manifest.Manifest.put

    def put(self, record):
        if record.path == "dns.log":
            raise sqlite3.OperationalError("database or disk is full")
        return real_put(self, record)

    monkeypatch.setattr(_collect_manifest.Manifest, "put", put)
    report = collect(settings)
    result = report.sensors[0]
    assert result.status == "partial" and not report.ok
    assert [e for e in result.errors if e.startswith("dns.log:")] == ["dns.log: database or disk is full"]
    assert result.files == len(files) - 1
    monkeypatch.setattr(_collect_manifest.Manifest, "put", real_put)
    again = collect(settings).sensors[0]
    assert again.status == "ok" and (tmp_path / "raw/edge/dns.log").read_bytes() == files["dns.log"].read_bytes()


# ------------------------------------------------------------------ interruption
def _big_log(remote: Path, shared: Path) -> Path:
    """~37 MB: the WRCCDC gzipped logs concatenated ten times (a valid multi-member gzip)."""
    parts = sorted((shared / WRCCDC).glob("*.log.gz"))
    big = remote / "big.log.gz"
    with open(big, "wb") as out:
        for _ in range(10):
            for part in parts:
                out.write(part.read_bytes())
    return big


def _cut_when_part_grows(server: SshServer, part: Path, threshold: int) -> tuple[threading.Thread, dict]:
    state: dict[str, int] = {}

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                size = part.stat().st_size
            except FileNotFoundError:
                size = 0
            if size >= threshold:
                state["killed"] = server.kill_sessions()
                state["at"] = size
                return
            time.sleep(0.001)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, state


# paramiko's prefetch thread dies with the killed connection and says so on stderr; that is expected here
_PREFETCH_DIES = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@_PREFETCH_DIES
def test_cut_connection_then_resume_is_byte_identical(sshd, remote, shared_data, tmp_path):
    big = _big_log(remote, shared_data)
    size = big.stat().st_size
    settings = _settings(tmp_path, _sensor(sshd, remote, retries=0, parallel_files=1))
    part = tmp_path / "raw" / "edge" / ".big.log.gz.part"
    watcher, state = _cut_when_part_grows(sshd, part, 2 * 1024 * 1024)
    cut = collect(settings).sensors[0]
    watcher.join()
    assert state.get("killed", 0) >= 1, "the sshd session was not killed"
    assert cut.status == "failed"
    assert "gave up after 1 attempt" in cut.errors[0]
    kept = part.stat().st_size
    assert 0 < kept < size
    assert not (tmp_path / "raw" / "edge" / "big.log.gz").exists()

    resumed = collect(settings).sensors[0]
    assert resumed.status == "ok", resumed.errors
    assert resumed.resumed == [("big.log.gz", kept)]
    assert resumed.bytes == size - kept
    assert _sha(tmp_path / "raw" / "edge" / "big.log.gz") == _sha(big)
    assert not part.exists()


@_PREFETCH_DIES
def test_corrupt_partial_file_is_caught_by_the_sensors_sha256sum(sshd, remote, shared_data, tmp_path, caplog):
    big = _big_log(remote, shared_data)
    settings = _settings(tmp_path, _sensor(sshd, remote, retries=0, parallel_files=1))
    part = tmp_path / "raw" / "edge" / ".big.log.gz.part"
    watcher, state = _cut_when_part_grows(sshd, part, 2 * 1024 * 1024)
    collect(settings)
    watcher.join()
    kept = part.stat().st_size
    assert state.get("killed", 0) >= 1 and kept > 256 * 1024
    with open(part, "r+b") as fh:  # damage the middle, where the 64 KiB end samples do not look
        fh.seek(kept // 2)
        byte = fh.read(1)
        fh.seek(kept // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="watchtower_lib"):
        caught = collect(settings).sensors[0]
    # the resumed bytes do not hash like the sensor's file: discarded, and fetched whole in the same run
    assert [r for r in caplog.records if "do not match the sensor's file" in r.getMessage()]
    assert caught.status == "ok" and caught.errors == [] and not part.exists()
    assert caught.bytes == big.stat().st_size + (big.stat().st_size - kept)  # the tail in vain, then all
    assert _sha(tmp_path / "raw" / "edge" / "big.log.gz") == _sha(big)
    assert collect(settings).sensors[0].files == 0


@_PREFETCH_DIES
def test_cut_connection_is_retried_within_the_run(sshd, remote, shared_data, tmp_path, caplog):
    big = _big_log(remote, shared_data)
    monkey_backoff = pytest.MonkeyPatch()
    monkey_backoff.setattr("watchtower_lib.collect.BACKOFF_BASE", 0.2)
    settings = _settings(tmp_path, _sensor(sshd, remote, retries=2, parallel_files=1))
    part = tmp_path / "raw" / "edge" / ".big.log.gz.part"
    watcher, state = _cut_when_part_grows(sshd, part, 2 * 1024 * 1024)
    with caplog.at_level(logging.WARNING, logger="watchtower_lib.collect"):
        result = collect(settings).sensors[0]
    watcher.join()
    monkey_backoff.undo()
    assert state.get("killed", 0) >= 1
    assert result.status == "ok", result.errors
    assert len(result.resumed) == 1 and result.resumed[0][1] > 0
    assert result.bytes == big.stat().st_size - result.resumed[0][1]
    assert _sha(tmp_path / "raw" / "edge" / "big.log.gz") == _sha(big)
    assert any("retry 1 of 2" in r.getMessage() for r in caplog.records)


def test_stalled_transfer_times_out_and_resumes_on_a_new_connection(sshd, remote, shared_data, tmp_path, caplog):
    import signal

    big = _big_log(remote, shared_data)
    monkey_backoff = pytest.MonkeyPatch()
    monkey_backoff.setattr("watchtower_lib.collect.BACKOFF_BASE", 0.2)
    settings = _settings(tmp_path, _sensor(sshd, remote, retries=1, parallel_files=1, transfer_timeout=1.0))
    part = tmp_path / "raw" / "edge" / ".big.log.gz.part"
    frozen: list[int] = []

    def freeze() -> None:  # SIGSTOP the session: the connection stays open but no byte moves
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if part.exists() and part.stat().st_size >= 2 * 1024 * 1024:
                frozen.extend(sshd.session_pids())
                for pid in frozen:
                    os.kill(pid, signal.SIGSTOP)
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=freeze, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="watchtower_lib.collect"):
            result = collect(settings).sensors[0]
    finally:
        watcher.join()
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        monkey_backoff.undo()
    assert frozen, "the session was not frozen"
    assert result.status == "ok", result.errors
    assert len(result.resumed) == 1 and result.resumed[0][1] > 0
    assert _sha(tmp_path / "raw" / "edge" / "big.log.gz") == _sha(big)
    assert any("retry 1 of 1" in r.getMessage() for r in caplog.records)
    assert time.monotonic() - started < 30


def test_silent_port_hits_the_connect_timeout(remote, tmp_path):
    import socket

    with socket.socket() as silent:  # accepts TCP, never says SSH-2.0
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        sensor = SensorConfig(name="mute", host="127.0.0.1", port=silent.getsockname()[1], remote_dir=str(remote),
                              connect_timeout=1.0, retries=0, known_hosts=tmp_path / "known_hosts")
        started = time.monotonic()
        result = collect(_settings(tmp_path, sensor)).sensors[0]
    assert time.monotonic() - started < 10
    assert result.status == "failed"
    assert "gave up after 1 attempt(s)" in result.errors[0], result.errors
    assert any(word in result.errors[0].lower() for word in ("banner", "timed out", "timeout")), result.errors


# ------------------------------------------------------------------ host keys
def test_unknown_host_key_is_refused_with_how_to_add_it(sshd, remote, shared_data, tmp_path):
    _populate(remote, shared_data)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    result = collect(_settings(tmp_path, _sensor(sshd, remote, known_hosts=empty, retries=3))).sensors[0]
    assert result.status == "failed" and result.files == 0
    assert len(result.errors) == 1  # refused at once, not retried
    message = result.errors[0]
    assert f"[127.0.0.1]:{sshd.port}" in message and "is not in" in message
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1" in message and "trust_on_first_use" in message
    assert empty.read_text() == ""
    assert not (tmp_path / "raw" / "edge").exists()


def test_changed_host_key_is_refused_even_with_trust_on_first_use(sshd, remote, shared_data, tmp_path):
    _populate(remote, shared_data)
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} " + " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    before = known.read_text()
    result = collect(_settings(tmp_path, _sensor(sshd, remote, known_hosts=known,
                                                  trust_on_first_use=True))).sensors[0]
    assert result.status == "failed"
    assert "HOST KEY CHANGED" in result.errors[0] and "ssh-keygen -R" in result.errors[0]
    assert known.read_text() == before


def test_trust_on_first_use_records_the_key_and_says_so(sshd, remote, shared_data, tmp_path, caplog):
    _populate(remote, shared_data)
    known = tmp_path / "ssh" / "known_hosts"  # neither the file nor its folder exist yet
    settings = _settings(tmp_path, _sensor(sshd, remote, known_hosts=known, trust_on_first_use=True))
    with caplog.at_level(logging.WARNING):
        result = collect(settings).sensors[0]
    assert result.status == "ok" and result.files == 7
    assert known.read_text() == sshd.known_hosts_line()
    assert any("trust_on_first_use recorded the NEW host key" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        collect(settings)
    assert known.read_text() == sshd.known_hosts_line()  # recorded once
    assert not any("trust_on_first_use" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ bad files and names
def _reader_who_obeys_permissions() -> str:
    """chmod 000 does not stop root, so as root the sensor login is the unprivileged `nobody`."""
    if os.geteuid() != 0:
        return getpass.getuser()
    try:
        pwd.getpwnam("nobody")
        has_nobody = True
    except KeyError:
        has_nobody = False
    require("SSHD", has_nobody, "running as root and there is no unprivileged 'nobody' user to log in as")
    return "nobody"


def test_unreadable_file_is_reported_while_the_others_arrive(sshd, remote, shared_data, tmp_path, caplog):
    files = _populate(remote, shared_data)
    (remote / "http.log").chmod(0o000)  # the sensor's login cannot open it: a real EACCES from sftp
    sensor = _sensor(sshd, remote, user=_reader_who_obeys_permissions())
    with caplog.at_level(logging.INFO):
        report = collect(_settings(tmp_path, sensor))
    result = report.sensors[0]
    assert result.status == "partial" and not report.ok
    assert len(result.errors) == 1
    assert result.errors[0].startswith("http.log: ") and "EACCES" in result.errors[0]
    assert result.files == 6
    for rel, source in files.items():
        if rel != "http.log":
            assert (tmp_path / "raw" / "edge" / rel).read_bytes() == source.read_bytes()
    assert not (tmp_path / "raw" / "edge" / "http.log").exists()
    if sensor.user == "nobody":  # nologin shell: no sha256sum, so the sizes were the check
        assert any("checked by size only" in r.getMessage() for r in caplog.records)


def test_dotdot_pattern_and_outward_symlinks_are_refused(sshd, remote, shared_data, tmp_path):
    secret_dir = Path(tempfile.mkdtemp(prefix="wt-outside-"))
    try:
        shutil.copyfile(shared_data / ZAT / "smtp.log", secret_dir / "smtp.log")
        shutil.copyfile(shared_data / ZAT / "conn.log", remote / "conn.log")
        (remote / "leak.log").symlink_to(secret_dir / "smtp.log")  # file link out of remote_dir
        (remote / "elsewhere").symlink_to(secret_dir)  # directory link out of remote_dir
        (remote / "alias.log").symlink_to("conn.log")  # a link that stays inside is fine
        (remote / "gone.log").symlink_to(remote / "never-written.log")  # dangling
        out = f"../{secret_dir.name}/*.log"
        sensor = _sensor(sshd, remote, patterns=("*.log", "*/*.log", out, "/etc/*"))
        result = collect(_settings(tmp_path, sensor)).sensors[0]
        refused = {r.path: r.reason for r in result.refused}
        assert set(refused) == {"leak.log", "elsewhere", out, "/etc/*"}
        assert "outside remote_dir" in refused["leak.log"] and "not followed" in refused["elsewhere"]
        assert "steps out of remote_dir" in refused[out]
        assert len(result.errors) == 1 and result.errors[0].startswith("gone.log: symlink cannot be resolved")
        assert result.status == "partial"
        landed = sorted(p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*.log"))
        assert landed == ["edge/alias.log", "edge/conn.log"]
        secret = (secret_dir / "smtp.log").read_bytes()
        assert all(p.read_bytes() != secret for p in (tmp_path / "raw").rglob("*") if p.is_file())
    finally:
        shutil.rmtree(secret_dir)


@pytest.mark.parametrize("rel", ["../../etc/passwd", "/etc/passwd", "a/../../b.log", "..", "a/./b.log",
                                 "x\\..\\y.log", "bad\x00.log", "new\nline.log", "a//b.log"])
def test_hostile_remote_names_cannot_leave_the_sensor_folder(tmp_path, rel):
    with pytest.raises(ValueError):
        safe_local_path(tmp_path / "edge", rel)


def test_local_symlink_inside_raw_cannot_redirect_a_download(tmp_path):
    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "current").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="outside"):
        safe_local_path(tmp_path / "edge", "current/conn.log")
    assert safe_local_path(tmp_path / "edge", "2024-05-01/conn.00:00:00-01:00:00.log.gz").name.endswith(".gz")
    (tmp_path / "edge" / "dns.log").symlink_to(tmp_path / "elsewhere.log")  # the file itself, in a known folder
    with pytest.raises(ValueError, match="outside"):
        safe_local_path(tmp_path / "edge", "dns.log")
    assert unsafe_name("..conn.log") is None  # dots inside a name are harmless


# ------------------------------------------------------------------ several sensors, CLI
def _yaml_sensor(name: str, server: SshServer, remote: Path, port: int, **extra) -> str:
    lines = [f"  - name: {name}", f"    host: {server.host}", f"    port: {port}", f"    user: {server.user}",
             f"    key_file: {server.client_key}", f"    known_hosts: {server.known_hosts}",
             f"    remote_dir: {remote}", "    patterns: ['*.log', '*.log.gz', 'current/*.log']"]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines)


def test_one_sensor_down_the_other_completes_and_exit_code_is_1(sshd, remote, shared_data, tmp_path):
    files = _populate(remote, shared_data)
    closed = free_port()
    config = tmp_path / "watchtower.yml"
    config.write_text("raw_dir: raw\nsensors:\n" + _yaml_sensor("edge", sshd, remote, sshd.port, retries=0) + "\n"
                      + _yaml_sensor("down", sshd, remote, closed, retries=1, connect_timeout=2) + "\n")
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["--config", str(config), "collect", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert time.monotonic() - started < 20
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line[:4] in ("edge", "down")}
    assert rows["edge"][1:3] == ["ok", "7"]
    assert rows["down"][1:3] == ["failed", "0"]
    assert f"down: error: 127.0.0.1:{closed}: gave up after 2 attempt(s)" in result.output
    for rel in files:
        assert (tmp_path / "raw" / "edge" / rel).is_file()
    assert not (tmp_path / "raw" / "down").exists()


def test_cli_logs_the_collection_not_paramikos_every_channel(sshd, remote, shared_data, tmp_path):
    """`watchtower collect` at the default INFO level: the collector's lines and table, none of paramiko's
    per-connection and per-channel INFO lines (it logged 7 for one sensor)."""
    import sys

    _populate(remote, shared_data)
    config = tmp_path / "watchtower.yml"
    config.write_text("raw_dir: raw\nsensors:\n" + _yaml_sensor("edge", sshd, remote, sshd.port, retries=0) + "\n")
    entry = "import sys; from watchtower_lib.cli import main; main(sys.argv[1:])"  # = the `watchtower` script
    done = subprocess.run([sys.executable, "-c", entry, "--config", str(config), "collect", "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "INFO watchtower_lib.collect: sensor edge: ok, 7 files" in done.stderr
    assert "paramiko" not in done.stderr
    assert [line.split()[:3] for line in done.stdout.splitlines() if line.startswith("edge")] == [["edge", "ok", "7"]]


def test_cli_unknown_sensor_is_a_config_error(tmp_path):
    config = tmp_path / "watchtower.yml"
    config.write_text("sensors:\n  - {name: local1, kind: local, remote_dir: logs}\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "collect", "--sensor", "nope"])
    assert isinstance(result.exception, ConfigError)
    assert "no sensor named 'nope'" in str(result.exception) and "local1" in str(result.exception)


def test_no_sensors_configured_says_how_to_add_one(tmp_path):
    with pytest.raises(ConfigError, match="no sensors configured"):
        collect(Settings(raw_dir=tmp_path / "raw"))


def test_local_sensor_and_ingest_into_the_store(shared_data, tmp_path):
    logs = tmp_path / "zeek-logs"
    (logs / "current").mkdir(parents=True)
    for name in ("conn.log", "dns.log"):
        shutil.copyfile(shared_data / ZAT / name, logs / name)
    shutil.copyfile(shared_data / WRCCDC / "ssl.log.gz", logs / "current" / "ssl.log.gz")
    config = tmp_path / "watchtower.yml"
    config.write_text("raw_dir: raw\nstore_dir: store\nsensors:\n"
                      f"  - {{name: box, kind: local, remote_dir: {logs}, patterns: ['*.log', 'current/*.log.gz']}}\n")
    first = CliRunner().invoke(cli, ["--config", str(config), "collect", "--ingest", "--no-progress"])
    assert first.exit_code == 0, first.output
    assert "box: 3 file(s) ingested" in first.output
    assert (tmp_path / "raw" / "box" / "current" / "ssl.log.gz").read_bytes() == \
        (shared_data / WRCCDC / "ssl.log.gz").read_bytes()
    assert list((tmp_path / "store").rglob("*.parquet"))
    again = CliRunner().invoke(cli, ["--config", str(config), "collect", "--ingest", "--no-progress"])
    assert again.exit_code == 0
    assert "--ingest: no new files" in again.output


def test_local_sensor_log_that_grows_is_stored_once(shared_data, tmp_path):
    """collect + ingest_new twice while current/conn.log grows, then phase 2's ingest of raw/<sensor>/."""
    from watchtower_lib import store, zeek
    from watchtower_lib.collect import ingest_new

    source = shared_data / "scenarios/stratosphere-sdt/003-android-rat/conn.log"  # 361 rows, unique uids
    full = source.read_bytes()
    lines = full.splitlines(keepends=True)
    head = b"".join(lines[: len(lines) // 2])  # the header and the first 177 rows
    logs = tmp_path / "zeek-logs"
    (logs / "current").mkdir(parents=True)
    (logs / "current" / "conn.log").write_bytes(head)
    sensor = SensorConfig(name="box", kind="local", remote_dir=str(logs), patterns=("current/*.log",))
    settings = _settings(tmp_path, sensor)

    first = collect(settings)
    assert first.ok and ingest_new(first, settings)["box"].rows_by_log_type == {"conn": 177}
    with open(logs / "current" / "conn.log", "ab") as fh:  # Zeek writes the rest
        fh.write(full[len(head):])
    second = collect(settings)
    result = second.sensors[0]
    assert result.ok and len(result.old_copies) == 1
    stored = ingest_new(second, settings)["box"]
    assert (stored.files_ingested, stored.files_replaced, stored.rows_replaced) == (1, 1, 177)

    df = store.load(settings.store_dir, "conn")
    assert len(df) == 361 and df["uid"].is_unique
    assert sorted(df["uid"]) == sorted(zeek.read_log(source)["uid"])

    # phase 2 ingests the whole sensor folder: the live file is already in, the old copy is not read
    assert result.old_copies[0].read_bytes() == head and result.old_copies[0].is_file()
    folder = store.ingest([settings.raw_dir / "box"], settings.store_dir, sensor="box")
    assert (folder.files_ingested, folder.files_skipped, folder.not_logs) == (0, 1, [])
    assert len(store.load(settings.store_dir, "conn")) == 361


def test_missing_paramiko_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "paramiko", None)  # as on an install without the [ssh] extra
    sensor = SensorConfig(name="edge", host="127.0.0.1", port=free_port(), retries=3)
    result = collect(_settings(tmp_path, sensor)).sensors[0]
    assert result.status == "failed"
    assert result.errors == ["paramiko is needed for this feature: pip install 'watchtower-zeek[ssh]'"]


# ------------------------------------------------------------------ the sensor-side SHA-256
def test_remote_sha256_checks_the_listed_range_of_a_log_that_kept_growing(sshd, remote, shared_data):
    from watchtower_lib._collect_paths import RemoteFile
    from watchtower_lib._sftp import SftpSource

    data = (shared_data / ZAT / "conn.log").read_bytes()
    (remote / "conn.log").write_bytes(data)  # listed at 20,000 bytes; Zeek has written more since
    (remote / "dns.log").write_bytes((shared_data / ZAT / "dns.log").read_bytes())
    listed = RemoteFile("conn.log", str(remote / "conn.log"), 20_000, 0)
    whole = RemoteFile("dns.log", str(remote / "dns.log"), (remote / "dns.log").stat().st_size, 0)
    source = SftpSource(_sensor(sshd, remote))
    try:
        verify = source.verifier([listed, whole])
        assert verify(listed, hashlib.sha256(data[:20_000]).hexdigest()) is True
        assert source.sha256_available is True
        assert verify(whole, hashlib.sha256(b"not the file").hexdigest()) is False
    finally:
        source.close()


def test_sha256sum_output_with_escaped_names_is_parsed():
    from watchtower_lib._sftp import _parse_sha256sum

    digest = "a" * 64
    assert _parse_sha256sum(f"{digest}  /opt/zeek/logs/conn.log") == (digest, "/opt/zeek/logs/conn.log")
    assert _parse_sha256sum(f"\\{digest}  /logs/odd\\nname\\\\x.log") == (digest, "/logs/odd\nname\\x.log")
    assert _parse_sha256sum(f"{digest} */logs/binary-mode.log") == (digest, "/logs/binary-mode.log")
    assert _parse_sha256sum("sha256sum: /logs/x.log: Permission denied") is None


def test_recursive_patterns_list_every_level_the_same_on_any_number_of_threads(sshd, remote, shared_data):
    """``**`` walks day folders level by level; the listing (files, refusals) is the same whether one
    thread or six list the folders, over SFTP and locally; a folder symlink is followed by ``*`` (as
    zeekctl's logs/current needs) but not under ``**``."""
    from watchtower_lib._collect_paths import LocalSource, list_matching
    from watchtower_lib._sftp import SftpSource

    wanted = []
    for day in ("2024-05-01", "2024-05-02", "2024-05-03"):
        for name in ("conn.log", "dns.log"):
            (remote / day).mkdir(exist_ok=True)
            shutil.copyfile(shared_data / ZAT / name, remote / day / name)
            wanted.append(f"{day}/{name}")
    (remote / "2024-05-03" / "deep" / "er").mkdir(parents=True)
    shutil.copyfile(shared_data / ZAT / "http.log", remote / "2024-05-03/deep/er/http.log")
    wanted.append("2024-05-03/deep/er/http.log")
    (remote / "linked").symlink_to(remote / "2024-05-01")  # inside remote_dir: followed by `*`, not by `**`
    wanted.append("linked/conn.log")
    (remote / "notes.txt").write_text("not a log\n")
    patterns = ("**/*.log", "*/conn.log")
    sftp = SftpSource(_sensor(sshd, remote))
    try:
        listings = [list_matching(source, patterns, workers=n) for source in (sftp, LocalSource(remote))
                    for n in (1, 6)]
    finally:
        sftp.close()
    for listing in listings:
        assert [f.rel for f in listing.files] == sorted(wanted)
        assert listing.refused == [] and listing.errors == []
        assert {f.rel: f.size for f in listing.files} == {rel: (remote / rel).stat().st_size for rel in wanted}
        assert "linked/dns.log" not in [f.rel for f in listing.files]


# ------------------------------------------------------------------ large collections
def _many_logs(remote: Path, shared: Path, copies: int) -> dict[str, Path]:
    """Real logs in day folders: four ZAT and two WRCCDC TSV logs copied into ``copies`` folders."""
    sources = [shared / ZAT / n for n in ("conn.log", "dns.log", "http.log", "ssl.log")] + [
        shared / WRCCDC / n for n in ("dns.log.gz", "weird.log.gz")]
    files = {}
    for k in range(copies):
        day = remote / f"2024-05-{k + 1:02d}"
        day.mkdir()
        for src in sources:
            shutil.copyfile(src, day / src.name)
            files[f"{day.name}/{src.name}"] = src
    return files


def test_default_sshd_session_limit_is_never_exceeded(remote, shared_data, tmp_path):
    """OpenSSH allows 10 sessions per connection by default. Listing on six threads, transferring on
    six more and hashing on the sensor once opened 13; channels of threads that ended are reused now."""
    require("SSHD", SSHD.exists(), f"{SSHD} not found")
    files = _many_logs(remote, shared_data, 4)
    workdir = Path(tempfile.mkdtemp(prefix="wt-sshd10-"))
    try:
        with SshServer(workdir, max_sessions=10) as server:
            settings = _settings(tmp_path, _sensor(server, remote, patterns=("**/*",), parallel_files=6,
                                                   processes=1))
            result = collect(settings).sensors[0]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert result.status == "ok", result.errors
    assert result.files == len(files)
    for rel, src in files.items():
        assert (tmp_path / "raw" / "edge" / rel).read_bytes() == src.read_bytes(), rel


def _needs_two_cores() -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("helper processes are used only with 2 or more CPUs")


def test_large_collection_is_shared_with_a_helper_process(sshd, remote, shared_data, tmp_path, monkeypatch):
    """Past HELPER_MIN_BYTES the work is cut into chunks that this process and a helper process (its
    own SSH connection) take in turn; the result is the same files, manifest and report."""
    import watchtower_lib.collect as collect_module

    _needs_two_cores()
    monkeypatch.setattr(collect_module, "HELPER_MIN_BYTES", 0)
    monkeypatch.setattr(collect_module, "CHUNK_FILES", 3)  # 60 files: 20 chunks
    files = _many_logs(remote, shared_data, 10)
    assert len(files) == 60
    settings = _settings(tmp_path, _sensor(sshd, remote, patterns=("**/*",), processes=2))
    first = collect(settings).sensors[0]
    assert first.status == "ok", first.errors
    assert first.helpers == 1
    assert first.files == 60 and first.bytes == sum(p.stat().st_size for p in files.values())
    assert sorted(p.relative_to(tmp_path / "raw" / "edge").as_posix() for p in first.new_paths) == sorted(files)
    for rel, src in files.items():
        assert (tmp_path / "raw" / "edge" / rel).read_bytes() == src.read_bytes(), rel
    assert not list((tmp_path / "raw").rglob(".*.part"))
    with Manifest(tmp_path / "raw") as manifest:
        assert manifest.count("edge") == 60
        assert manifest.get("edge", "2024-05-03/dns.log.gz").sha256 == _sha(shared_data / WRCCDC / "dns.log.gz")

    second = collect(settings).sensors[0]
    assert (second.status, second.files, second.bytes, second.unchanged, second.helpers) == ("ok", 0, 0, 60, 0)


def _helper_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"watchtower_lib._collect_helper" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_killed_helper_process_loses_nothing(sshd, remote, shared_data, tmp_path, monkeypatch, caplog):
    """SIGKILL the helper while it holds a chunk: the parent takes the chunk back and fetches (or resumes)
    its files in the same run; every file arrives whole."""
    import signal

    import watchtower_lib.collect as collect_module

    _needs_two_cores()
    monkeypatch.setattr(collect_module, "HELPER_MIN_BYTES", 0)
    monkeypatch.setattr(collect_module, "CHUNK_FILES", 2)
    files = _many_logs(remote, shared_data, 8)
    settings = _settings(tmp_path, _sensor(sshd, remote, patterns=("**/*",), processes=2))
    killed: list[int] = []

    def kill_the_helper() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not killed:
            done = list((tmp_path / "raw" / "edge").rglob("*.log*")) if (tmp_path / "raw").exists() else []
            pids = _helper_pids()
            if pids and len(done) >= 3:
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                killed.extend(pids)
            time.sleep(0.002)

    watcher = threading.Thread(target=kill_the_helper, daemon=True)
    watcher.start()
    with caplog.at_level(logging.WARNING, logger="watchtower_lib"):
        result = collect(settings).sensors[0]
    watcher.join()
    assert killed, "the helper process was never seen"
    assert "helper process ended early" in caplog.text
    assert result.status == "ok", result.errors
    assert result.files == len(files)
    for rel, src in files.items():
        assert (tmp_path / "raw" / "edge" / rel).read_bytes() == src.read_bytes(), rel
    with Manifest(tmp_path / "raw") as manifest:
        assert manifest.count("edge") == len(files)


def test_helper_that_cannot_connect_leaves_the_work_to_the_parent(tmp_path):
    """A helper whose sensor does not answer says so and takes no chunk."""
    from watchtower_lib._collect_helper import HelperProcess

    sensor = SensorConfig(name="down", host="127.0.0.1", port=free_port(), user="nobody",
                          known_hosts=tmp_path / "known_hosts", connect_timeout=2.0)
    helper = HelperProcess(sensor, tmp_path / "raw", "20240501T000000Z")
    taken: list[int] = []
    try:
        done = helper.serve(lambda: taken.append(1) or [], lambda n: None, lambda n: None,
                            lambda r, lost: None, lambda chunk: None)
    finally:
        helper.close()
    assert (done, taken) == (0, [])
    assert helper.proc.returncode == 0


def test_sftp_channel_buffer_wakes_its_reader_with_whole_messages():
    """The SFTP channel buffer returns ``n`` bytes once ``n`` are there (not the first packet), what it
    has at its timeout or close, and raises paramiko's PipeTimeout when nothing came at all."""
    import paramiko
    from paramiko.buffered_pipe import PipeTimeout

    from watchtower_lib._sftp import _whole_read_pipe

    pipe = _whole_read_pipe(paramiko)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read(10, timeout=10)))
    reader.start()
    for piece in (b"abc", b"defg", b"hijkl"):  # three packets: the reader wakes once, with 10 bytes
        time.sleep(0.05)
        assert not got
        pipe.feed(piece)
    reader.join()
    assert got == [b"abcdefghij"]
    assert pipe.read(5, timeout=0.2) == b"kl"  # the timeout passes with 2 bytes there: hand them over
    with pytest.raises(PipeTimeout):
        pipe.read(5, timeout=0.1)
    pipe.feed(b"xyz")
    pipe.close()
    assert pipe.read(100) == b"xyz"
    assert pipe.read(100) == b""  # closed and empty: EOF
