"""Errors a user can cause. Each message says what was found, what was expected, and the fix."""


class PatchForcingError(Exception):
    """Base class: the CLI prints these as one line instead of a stack trace."""


class CheckpointError(PatchForcingError, ValueError):
    """A missing, corrupt or foreign checkpoint, or weights that do not fit the config."""


class ConfigError(PatchForcingError, ValueError):
    """An unknown preset, sampler or distribution name, or an invalid option value."""


class ShapeError(PatchForcingError, ValueError):
    """Inputs whose shapes do not fit the network or each other."""


class DataError(PatchForcingError, ValueError):
    """A data set that is missing, empty or unreadable."""


class TrainingError(PatchForcingError, RuntimeError):
    """Training cannot go on (for example a NaN loss)."""


class RunFolderError(PatchForcingError, RuntimeError):
    """A run folder that another live process is training into (one process group per folder)."""


_OS_CAUSES = {  # errno name -> (cause, what to do)
    "ENOSPC": ("the disk is full", "free some space or write elsewhere"),
    "EDQUOT": ("the disk quota is exceeded", "free some space or write elsewhere"),
    "EROFS": ("the file system is read-only", "write to a writable location"),
    "EACCES": ("permission denied", "fix the permissions or write elsewhere"),
    "EPERM": ("operation not permitted", "fix the permissions or write elsewhere"),
    "ENOTDIR": ("a parent of it is a file, not a folder", "give a path below a folder"),
    "EISDIR": ("it is a folder, not a file", "give a file path"),
    "EEXIST": ("a file of that name is in the way", "remove it or choose another path"),
    "ENOENT": ("it does not exist", "check the path"),
    "ENAMETOOLONG": ("the name is too long", "choose a shorter path"),
}


def describe_os_error(err: OSError) -> str:
    """One line for an ``OSError``: the path, the cause in plain words, and what to do."""
    import errno

    name = errno.errorcode.get(err.errno or -1, "")
    cause, fix = _OS_CAUSES.get(name, (err.strerror or str(err), "check the path and the disk"))
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    where = " -> ".join(repr(str(p)) for p in paths) if paths else "a file operation failed"
    return f"{where}: {cause}; {fix}"


_MEMORY_WORDS = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


def describe_memory_error(err: BaseException) -> str | None:
    """One line for running out of memory (``MemoryError``, ``torch.OutOfMemoryError``, the CPU
    allocator's ``RuntimeError``) that names the flags that lower it; None for any other error."""
    text = " ".join(str(err).split())
    if not (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or any(word in text.lower() for word in _MEMORY_WORDS)):
        return None
    cause = text.split("(GPU 0;")[0].split(". See documentation")[0][:160] or type(err).__name__
    return (f"out of memory ({cause}); lower --batch-size (images per step or per sampler call) or "
            "--num-samples, or choose a smaller network or resolution")
