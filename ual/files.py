"""Files the user owns: what a name points at, writes that are atomic and readable by the user's group,
and one run at a time per output.

- ``looks_local``: the one rule, for every command, that tells a local path from a hub id;
  ``read_json``: JSON and JSON-lines files, a bad line named by its number.
- ``shipped``: the files ual ships (recipes, accelerate configs, the tiny model, sample and eval data), from the
  installed wheel or, in a source checkout, from the checkout's top folders.
- ``write_atomic``: a temporary file beside the target, moved into place only when complete, with the
  mode the user's umask gives a new file (``tempfile`` and safetensors create 0600 files).
- ``OutputLock``: an exclusive ``flock`` on ``NAME.lock`` naming the holder's pid; the kernel releases it
  on any exit (kill -9 included), so a lock file left by a crash is taken over, not obeyed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

from .errors import UsageError

# Suffixes of the data and config files ual reads: a name ending in one is a file, never a hub id.
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".yaml", ".yml")


def looks_local(spec: str | os.PathLike) -> bool:
    """True when ``spec`` names a local path: it exists, or it cannot be a hub id (``name`` or ``org/name``).

    Hub ids have at most one ``/`` and no path prefix; ``./x``, ``/x``, ``~/x``, ``a/b/c``, a name with a
    file suffix, and ``org/name`` whose ``org`` is a folder here are all local.
    """
    text = str(spec)
    if os.path.exists(os.path.expanduser(text)):
        return True
    first = text.split("/", 1)[0]
    return (
        text.startswith((".", "/", "~"))
        or text.lower().endswith(FILE_SUFFIXES)
        or text.count("/") > 1
        or ("/" in text and os.path.isdir(first))
    )


def shipped(*parts: str) -> Path:
    """A path among the files ual ships: ``shipped("recipes", "tiny.yaml")``.

    A wheel carries them as the package data of ``ual.packaged`` (pyproject.toml maps the checkout's recipes/,
    accelerate_configs/, models/ and data/ there); a source checkout (editable install) has them at its top."""
    from importlib.resources import files

    packaged = Path(str(files("ual") / "packaged"))  # pip installs wheels unzipped: a real folder
    root = packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent
    return root.joinpath(*parts)


def read_json(path: str | os.PathLike, where: str | None = None):
    """A ``.json`` document (any JSON value), or the rows of JSON lines (``.jsonl``, or a ``.json`` file that is
    not one document). A bad line is a UsageError naming the file (or ``where``) and the line, 1-based as editors
    count."""
    path = Path(path)
    where = where or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            if not is_json(next((line for line in text.splitlines() if line.strip()), "")):  # not JSON lines either
                raise UsageError(f"{where}: line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            raise UsageError(f"{where}: line {number}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    return rows


def is_json(text: str) -> bool:
    """Whether ``text`` parses as JSON (a cache line a kill did not cut short)."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (other threads may create files)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it under the user's umask."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~current_umask())


def write_atomic(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, then move it into place.

    A crash leaves either the old file or the new one, never half of one; the leftover temporary file
    (``.NAME.*.tmp``) is removed by ``remove_stale_temps`` on the next run that holds the output's lock.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.NAME.*.tmp``) that ``write_atomic`` leaves beside ``path`` when killed; only
    call it while holding ``path``'s ``OutputLock`` (another run's write in progress looks the same)."""
    path = Path(path)
    pattern = re.compile(r"^\." + re.escape(path.name) + r"\..+\.tmp$")
    removed = []
    for stale in sorted(path.parent.iterdir()) if path.parent.is_dir() else []:
        if pattern.match(stale.name) and stale.is_file():
            try:
                stale.unlink()
                removed.append(stale)
            except FileNotFoundError:
                pass
    return removed


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same resolved path (the file need not exist yet), or, for files that
    exist, the same inode (a hard link)."""
    a, b = Path(os.path.expanduser(str(a))), Path(os.path.expanduser(str(b)))
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


class OutputLock:
    """``with OutputLock(path, "ual score"):`` holds ``path + ".lock"`` exclusively, or raises UsageError naming
    the run that holds it. The lock file records the holder's pid, host and command line."""

    def __init__(self, path: str | os.PathLike, command: str):
        self.target = Path(path)
        self.path = Path(f"{path}.lock")
        self.command = command
        self._fd: int | None = None
        self.took_over: str | None = None  # what a crashed earlier holder had written, when its lock was taken over

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_fd(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise UsageError(
                    f"{self.target} is in use by another {self.command} run ({holder or 'holder unknown'}; lock "
                    f"{self.path}). Wait for it to finish or stop it; two runs on one output would ask and pay twice"
                ) from None
            # the file may have been removed (released) between open and flock: then lock the new one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = _read_fd(fd)
        if left:
            self.took_over = left
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                      f"{' '.join(sys.argv)}\n".encode("utf-8", "replace"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
