"""Run folders: their paths (``RunFolder``), checkpoint names, one owner per folder, and durable
atomic writes.

A run folder (``patchforcing train --out DIR``) holds (every path is a property of ``RunFolder``)::

    DIR/config.json                       the resolved configuration
    DIR/metrics.jsonl                     one JSON line per log interval
    DIR/checkpoints/step-XXXXXXXX.pt      training checkpoints (8-digit step, so they sort as text)
    DIR/samples/step-XXXXXXXX.png         sample grids
    DIR/run.lock                          locked (``flock``) by the one process group training into DIR

One process group per output folder: ``lock_run_folder`` takes an exclusive OS lock on
``run.lock``; the kernel releases it when the process ends, however it ends (``kill -9``
included), so a stale lock never blocks a restart. Under ``torchrun`` only rank 0 takes it, for
all ranks of its job (``runtime.own_folder``). ``train``, ``evaluate``, ``bench`` and ``demo`` all
lock their ``--out``; the lock is per folder, so a bench holds its folder while each training
holds its own subfolder.

Every file is written with ``atomic_write``: into a temporary ``.NAME.pf-tmp-XXXXXXXX`` beside
the target, flushed and fsynced, renamed over the target, then the folder is fsynced. A kill at any
moment leaves the old file or the new one, never half a file; temporaries of killed writers are
removed by the next owner of the folder (``remove_stale_temporaries``): only files named like
this project's temporaries, never another hidden file of the user's.

``run.lock`` is opened without following symbolic links, and a lock file with a second hard link or
of another user is refused before a byte is written: a lock never writes into a file elsewhere. Files get the permissions
of a normally created file (``0666`` minus the umask: ``0644`` under umask 022).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from patchforcing.errors import CheckpointError, ConfigError, RunFolderError, describe_os_error
from patchforcing.json_files import read_json

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
METRICS_LIMIT = 256 << 20  # bytes of metrics.jsonl read back (a long run writes a few MB)
SAMPLES_DIR = "samples"
CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"  # an exported network beside (or instead of) training checkpoints
LOCK_FILE = "run.lock"
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.pt$")
TEMPORARY_TAG = ".pf-tmp-"  # atomic_write's temporaries: .NAME.pf-tmp-XXXXXXXX (XXXXXXXX from mkstemp)
_TEMPORARY_NAME = re.compile(r"^\..+\.pf-tmp-[A-Za-z0-9_]{8}$")


class RunFolder:
    """Every path of a run folder ``DIR`` (the layout in this module's docstring); creates nothing.

    ``RunFolder(DIR).config``, ``.metrics``, ``.samples``, ``.lock``, ``.checkpoints``,
    ``.model_file``; ``.sample_grid(step)`` and ``.checkpoint(step)`` name the files of a step.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    config = property(lambda self: self.path / CONFIG_FILE, doc="``DIR/config.json``: the resolved configuration")
    metrics = property(lambda self: self.path / METRICS_FILE, doc="``DIR/metrics.jsonl``: one JSON line per log interval")
    samples = property(lambda self: self.path / SAMPLES_DIR, doc="``DIR/samples``: the sample grids")
    lock = property(lambda self: self.path / LOCK_FILE, doc="``DIR/run.lock``: the folder's owner lock")
    checkpoints = property(lambda self: self.path / CHECKPOINT_DIR, doc="``DIR/checkpoints``")
    model_file = property(lambda self: self.path / MODEL_FILE, doc="``DIR/model.safetensors``: an exported network")

    def sample_grid(self, step: int) -> Path:
        """``DIR/samples/step-XXXXXXXX.png`` of training step ``step``."""
        return self.samples / f"step-{int(step):08d}.png"

    def checkpoint(self, step: int) -> Path:
        """``DIR/checkpoints/step-XXXXXXXX.pt`` of training step ``step``."""
        return self.checkpoints / f"step-{int(step):08d}.pt"

    def is_run(self) -> bool:
        """A ``config.json`` with a ``metrics.jsonl`` or a ``checkpoints/`` beside it: written by ``train``."""
        return self.config.is_file() and (self.metrics.is_file() or self.checkpoints.is_dir())

    @staticmethod
    def around(source: str | os.PathLike) -> tuple[RunFolder, ...]:
        """The folders a run folder of ``source`` may be, nearest first: the folder itself (or the
        file's folder), then the one or two above it (a checkpoint lies in ``DIR/checkpoints``)."""
        path = Path(source)
        return tuple(map(RunFolder, (path, path.parent, path.parent.parent) if path.is_dir() else (path.parent, path.parent.parent)))


# --- checkpoint names ---------------------------------------------------------------------------
def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """``run_dir/checkpoints/step-XXXXXXXX.pt`` of training step ``step``."""
    return RunFolder(run_dir).checkpoint(step)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step of a checkpoint file named by ``checkpoint_path``."""
    match = _CHECKPOINT_NAME.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{str(path)!r} is not named like a training checkpoint (step-XXXXXXXX.pt)")
    return int(match.group(1))


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Training checkpoints of a run folder, oldest first (temporaries of unfinished writes excluded)."""
    folder = RunFolder(run_dir).checkpoints
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _CHECKPOINT_NAME.match(p.name) and p.is_file()]
    return sorted(found, key=checkpoint_step)


def newest_step(run_dir: str | os.PathLike) -> int | None:
    """Step of the newest checkpoint in ``run_dir`` (None when there is none)."""
    found = list_checkpoints(run_dir)
    return checkpoint_step(found[-1]) if found else None


def previous_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint written before ``path`` in the same run folder, or None."""
    path = Path(path)
    if _CHECKPOINT_NAME.match(path.name) is None:
        return None
    older = [p for p in list_checkpoints(path.parent.parent) if checkpoint_step(p) < checkpoint_step(path)]
    return older[-1] if older else None


def newest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The file a network is read from when a run folder is given: the newest training checkpoint,
    else an exported ``model.safetensors``.

    Raises:
        CheckpointError: the folder holds neither.
    """
    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir)
    if found:
        return found[-1]
    if RunFolder(run_dir).model_file.is_file():
        return RunFolder(run_dir).model_file
    raise CheckpointError(
        f"{str(run_dir)!r} is a folder without {CHECKPOINT_DIR}/step-*.pt or {MODEL_FILE}; "
        "pass a checkpoint file, or a run folder written by `patchforcing train`"
    )


def fallback_hint(path: str | os.PathLike) -> str:
    """What to do when checkpoint ``path`` cannot be read: name the previous checkpoint if any."""
    previous = previous_checkpoint(path)
    if previous is not None:
        return (f"the previous checkpoint is {previous}: pass it instead, or delete the unreadable "
                f"{Path(path).name} to fall back to it")
    return "the file may be truncated or of another kind: re-download, re-export or retrain it"


# --- durable atomic writes ----------------------------------------------------------------------
def file_mode() -> int:
    """Permissions of a newly created file under the current umask (0644 under umask 022)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask sets it, a race with other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], Any]) -> Path:
    """Call ``write_fn(tmp_path)``, make the bytes durable, then rename onto ``path``.

    A crash at any moment leaves either the old file or the complete new one. The temporary file
    is fsynced before the rename and the folder after it, so the rename survives a power cut.

    Args:
        path: destination file (its folder is created when missing).
        write_fn: writes the whole content to the path it is given.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMPORARY_TAG}", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through ``atomic_write``; a full disk raises ``OSError(ENOSPC)``."""
    import torch

    def write(tmp: str) -> None:
        try:
            with open(tmp, "wb") as f:  # a file object: write errors surface as OSError with errno
                torch.save(obj, f)
        except RuntimeError as err:  # torch's writer turns a failed write into RuntimeError on closing
            cause = _os_error_in(err)
            if cause is None:
                raise
            raise OSError(cause.errno, cause.strerror, str(path)) from err

    return atomic_write(path, write)


def atomic_save_safetensors(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors`` ``save_file`` through ``atomic_write``; a failed write is an ``OSError``.

    The written size is checked too: the safetensors writer can lose the error of its last
    buffered write (seen writing to ``/dev/full``), which would leave a short file.
    """
    from safetensors.torch import save_file

    data_bytes = sum(t.numel() * t.element_size() for t in tensors.values())

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except Exception as err:  # SafetensorError "I/O error: ... (os error 28)"
            code = re.search(r"\(os error (\d+)\)", str(err))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from err
        with open(tmp, "rb") as f:
            expected = 8 + int.from_bytes(f.read(8), "little") + data_bytes
        if os.path.getsize(tmp) != expected:
            raise OSError(errno.EIO, f"short write ({os.path.getsize(tmp)} of {expected} bytes; is the disk full?)", str(path))

    return atomic_write(path, write)


def _os_error_in(err: BaseException) -> OSError | None:
    """The OSError among ``err``'s causes and contexts, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_write``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some systems cannot open folders; the rename itself is done
    try:
        os.fsync(fd)
    except OSError:
        pass  # fsync of a folder is not supported everywhere (some network file systems)
    finally:
        os.close(fd)


def is_temporary(path: str | os.PathLike) -> bool:
    """True for the temporary files ``atomic_write`` creates."""
    return _TEMPORARY_NAME.match(Path(path).name) is not None


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete temporaries that killed writers left in ``run_dir`` and its subfolders.

    Only files named like ``atomic_write``'s temporaries (``.NAME.pf-tmp-XXXXXXXX``) are removed;
    any other file, hidden or not, is the user's and is kept.

    Call it only while holding the folder's lock: then no live writer owns them. A subfolder with
    a ``run.lock`` of its own is another output folder (a bench's training runs, an evaluation
    inside a run folder): its own owner cleans it, so it is left alone here.

    Returns:
        The removed files.
    """
    removed = []
    for folder, subfolders, files in os.walk(run_dir):
        subfolders[:] = sorted(d for d in subfolders if not os.path.exists(os.path.join(folder, d, LOCK_FILE)))
        for name in sorted(files):
            path = Path(folder, name)
            if is_temporary(path) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# --- outputs and the owner of a run folder ------------------------------------------------------
def ensure_writable_folder(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any work starts.

    Raises:
        ConfigError: the path is a file, a parent is a file, or the folder cannot be written
            (read-only, no permission, full disk); the message names the path, the cause and ``flag``.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag} {str(folder)!r} is a file; give a folder (it is created when missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".write-test{TEMPORARY_TAG}", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{flag}: {describe_os_error(err)}; choose another {flag}") from None
    return folder


def ensure_writable_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check that file ``path`` can be written (its folder is created) before any work starts."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a folder; give a file name, e.g. {path / 'grid.png'}")
    ensure_writable_folder(path.parent, flag)
    return path


class RunLock:
    """An exclusive ``flock`` on ``run_dir/run.lock`` for as long as this object is held.

    The lock file names its holder (pid, host, start time, command); it stays in the folder after
    the run (deleting it would let two processes lock two different files).
    """

    def __init__(self, run_dir: Path, fd: int | None):
        self.run_dir, self._fd = run_dir, fd  # fd None: held for this process by another (rank 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_run_folder(run_dir: str | os.PathLike) -> RunLock:
    """Create ``run_dir`` if needed and take its lock (call it on rank 0 only under torchrun).

    Raises:
        ConfigError: ``run_dir`` is a file or cannot be created or written.
        RunFolderError: another live process holds the folder; the message names it.
    """
    run_dir = ensure_writable_folder(run_dir)
    path = RunFolder(run_dir).lock
    try:  # O_NOFOLLOW: a symbolic link at run.lock is refused, never followed to a file elsewhere
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, file_mode())
    except OSError as err:
        if err.errno == errno.ELOOP or path.is_symlink():
            raise RunFolderError(_LINK_REFUSED.format(path=path)) from None
        raise ConfigError(f"--out: {describe_os_error(err)}; choose another --out") from None
    refused = _foreign_lock(os.fstat(fd), path)
    if refused is not None:  # checked before anything is written into the file
        os.close(fd)
        raise RunFolderError(refused)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(f"--out: cannot lock {path} ({describe_os_error(err)}); choose another --out") from None
        raise RunFolderError(
            f"{run_dir} is in use by another run ({_holder(path)}); wait for it to end or stop it, "
            "or choose another --out (one process group per output folder)"
        ) from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    return RunLock(run_dir, fd)


_LINK_REFUSED = ("{path} is a symbolic link; lock files are opened without following links (so a lock never "
                 "writes elsewhere): remove the link (it is recreated as a plain file) or choose another --out")


def _foreign_lock(info: os.stat_result, path: Path) -> str | None:
    """Why the opened ``run.lock`` must not be written (None when it is this user's own plain file).

    A FIFO or device, a file with another hard link (writing the holder's details would overwrite
    the file it is linked to, anywhere on the file system) and a file of another user are refused.
    """
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device in its place
        return f"{path} is not a plain file; remove it (it is recreated) or choose another --out"
    if info.st_nlink > 1:
        return (f"{path} has {info.st_nlink} hard links, so writing the lock would change another file; remove it "
                "(`rm` removes only this name; the lock is recreated as a file of its own) or choose another --out")
    if info.st_uid != os.geteuid():
        return (f"{path} belongs to another user (uid {info.st_uid}); remove it (it is recreated) "
                "or choose another --out")
    return None


def _holder(path: Path) -> str:
    try:
        info = read_json(path) if path.stat().st_size else {}
    except (OSError, ValueError):
        info = {}
    info = info if isinstance(info, dict) else {}
    if not info.get("pid"):
        return "its holder is starting up"
    return f"pid {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}: {info.get('command', '?')}"
