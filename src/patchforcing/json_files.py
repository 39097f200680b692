"""Reading the small files users hand in: every ``config.json``, ``model_index.json``, ``plan.json``,
``meta.json``, ``settings.json``, a training ``--config`` and the JSON inside a safetensors header.

One reader for all of them, so that each refuses the same things with one line naming the fix:

* a path that is not a regular file (``/dev/zero``, a FIFO, a folder) is refused before a byte is
  read (opened with ``O_NONBLOCK``, so even a FIFO without a writer answers at once);
* at most ``limit`` bytes are read (``MAX_JSON_BYTES``, 1 MB, for settings; callers reading data
  pass a larger one), so a file that keeps growing or is larger than any settings file is refused;
* text that is not UTF-8, not JSON, or nested too deeply for the parser (``RecursionError``) is
  one error, not a crash.

A missing or unreadable file stays an ``OSError`` (its callers already word those); everything else
raises ``error`` (default ``ConfigError``), a ``ValueError``.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from patchforcing.errors import ConfigError

MAX_JSON_BYTES = 1 << 20  # 1 MB: the largest settings file this project writes is a few kB
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def read_bytes_capped(path: str | os.PathLike, *, limit: int = MAX_JSON_BYTES, error: type[Exception] = ConfigError,
                      fix: str = "replace it with the file it should be") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Raises:
        OSError: the file is missing or cannot be opened.
        error: ``path`` is not a regular file, or holds more than ``limit`` bytes; the message ends with ``fix``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
            raise error(f"{str(path)!r} is {kind}, not a regular file; {fix}")
        chunks, total = [], 0
        while total <= limit and info.st_size <= limit:  # reads past st_size too: the file may be growing
            chunk = os.read(fd, min(limit + 1 - total, max(info.st_size - total, 0) + (1 << 16)))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if max(total, info.st_size) > limit:
        raise error(f"{str(path)!r} holds more than {_size(limit)}, more than a file of this kind ever holds; {fix}")
    return b"".join(chunks)


def read_text_capped(path: str | os.PathLike, *, limit: int = MAX_JSON_BYTES, error: type[Exception] = ConfigError,
                     fix: str = "replace it with the file it should be") -> str:
    """``read_bytes_capped`` decoded as UTF-8 (text that is not UTF-8 raises ``error`` naming the byte)."""
    data = read_bytes_capped(path, limit=limit, error=error, fix=fix)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{str(path)!r} is not UTF-8 text (byte {err.start}); {fix}") from None


def read_json(path: str | os.PathLike, *, limit: int = MAX_JSON_BYTES, error: type[Exception] = ConfigError,
              fix: str = "replace it with the file it should be") -> Any:
    """The JSON document in the regular file ``path`` (at most ``limit`` bytes, UTF-8).

    Raises:
        OSError: the file is missing or cannot be opened.
        error: not a regular file, too large, not UTF-8 or not JSON; the message names ``path`` and ends with ``fix``.
    """
    return parse_json(read_text_capped(path, limit=limit, error=error, fix=fix), repr(str(Path(path))), error=error, fix=fix)


def parse_json(text: str | bytes, where: str, *, error: type[Exception] = ConfigError,
               fix: str = "replace it with the file it should be") -> Any:
    """``json.loads(text)``; invalid or too deeply nested JSON raises ``error`` naming ``where``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{where} is JSON nested too deeply to read; {fix}") from None
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise error(f"{where} is not valid JSON ({' '.join(str(err).split())[:120]}); {fix}") from None


def _size(n: int) -> str:
    return f"{n / (1 << 20):g} MB" if n >= 1 << 20 else f"{n} bytes"
