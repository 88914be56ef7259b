"""Where production lines come from: files (resumable at a byte offset), followed files
(rotation and truncation), and standard input.

A line is handed over with its origin, line number and byte range, so the pipeline can commit
the position after it together with its score: that is what makes ingestion exactly once.

Only regular files are read: a FIFO (or socket, device) would block a reader forever, so files
are opened non-blocking and their type checked on the open descriptor (``open_regular``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from monitor.errors import RobmonError

EXCERPT_BYTES = 1024
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


class NotRegularFile(RobmonError):
    """Raised for a path that names a FIFO, socket, device or directory instead of a file."""


def special_file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO", "a socket", ...)."""
    return next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")


def not_regular(name: str, mode: int) -> str:
    return f"{name} is {special_file_kind(mode)}, not a regular file: only regular files are read."


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file; NotRegularFile otherwise, without
    blocking (a FIFO without a writer would block a plain open forever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(not_regular(str(path), mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass
class RawLine:
    origin: str  # file path, or "stdin"
    line_number: int  # 1-based
    offset: int  # byte offset of the line's first byte
    end: int  # byte offset just after the line (and its newline)
    data: bytes  # the line without its newline (only its head when it is oversized)
    size: int  # the line's true length in bytes
    refused: str | None = None  # dead-lettered for this reason without parsing (no record)

    @property
    def excerpt(self) -> str:
        return self.data[:EXCERPT_BYTES].decode("utf-8", errors="replace")


@dataclass
class Position:
    """How far one followed path has been read: committed with the scores before it."""

    path: str
    inode: int | None = None
    offset: int = 0
    line_number: int = 0


def expand_paths(specs: list[str]) -> list[Path]:
    """Files named directly, by glob, or as directories (every regular file in them)."""
    found: list[Path] = []
    for spec in specs:
        matches = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        for match in matches:
            path = Path(match)
            if path.is_dir():
                found.extend(sorted(p for p in path.iterdir() if p.is_file()))
            elif path.is_file():
                found.append(path)
            elif glob.has_magic(spec):
                continue  # a FIFO or socket among the matches: not read
            elif path.exists():
                raise NotRegularFile(not_regular(spec, path.stat().st_mode))
            else:
                raise RobmonError(f"{spec} does not exist.")
    seen: set[Path] = set()
    return [p for p in (q.resolve() for q in found) if not (p in seen or seen.add(p))]


def _next_line(handle: BinaryIO, max_line_bytes: int) -> tuple[bytes, int, bool] | None:
    """(the line's head without its newline, bytes consumed, ended by a newline); None at EOF.

    An oversized line is consumed up to its newline but only its first bytes are returned.
    """
    head = handle.readline(max_line_bytes + 1)
    if not head:
        return None
    consumed, ended = len(head), head.endswith(b"\n")
    while not ended and consumed > max_line_bytes:
        chunk = handle.readline(1 << 20)
        if not chunk:
            break
        consumed += len(chunk)
        ended = chunk.endswith(b"\n")
    return head.rstrip(b"\r\n"), consumed, ended


def read_lines(
    handle: BinaryIO,
    position: Position,
    max_line_bytes: int,
    limit: int,
    *,
    complete_only: bool,
) -> list[RawLine]:
    """Up to ``limit`` non-blank lines from ``position``, which advances past them.

    With ``complete_only`` a last line without its newline is left for later (a writer may still
    be appending to it). ``handle`` is seekable when ``complete_only`` is set.
    """
    if complete_only or handle.seekable():
        handle.seek(position.offset)
    lines: list[RawLine] = []
    while len(lines) < limit:
        start = position.offset
        found = _next_line(handle, max_line_bytes)
        if found is None:
            break
        data, consumed, ended = found
        if not ended and complete_only:
            handle.seek(start)
            break
        position.offset += consumed
        position.line_number += 1
        if data.strip() or consumed > max_line_bytes:
            size = consumed - (1 if ended else 0)
            lines.append(
                RawLine(position.path, position.line_number, start, position.offset, data, size)
            )
    return lines


MARK_BYTES = 256


@dataclass
class FollowedFile:
    """One followed path: its open handle, its position, and rotated files still to finish."""

    position: Position
    handle: BinaryIO | None = None
    draining: list[tuple[BinaryIO, Position]] = field(default_factory=list)
    mark: bytes = b""  # the bytes just before the position: a rewritten file changes them

    def bytes_before_position(self) -> bytes:
        if self.handle is None or self.position.offset == 0:
            return b""
        start = max(0, self.position.offset - MARK_BYTES)
        self.handle.seek(start)
        return self.handle.read(self.position.offset - start)


class FileTailer:
    """Follows paths (and globs/directories) across appends, rotation and truncation.

    Rotation (the path now names another inode): the old file is read to its end first, then
    the new one from its start. Truncation (copytruncate): the file is shorter than the position,
    or the bytes before the position changed (it was emptied and rewritten past it).
    """

    def __init__(self, specs: list[str], positions: dict[str, Position], max_line_bytes: int):
        self.specs = specs
        self.positions = positions
        self.max_line_bytes = max_line_bytes
        self.files: dict[str, FollowedFile] = {}
        self.refused: list[tuple[str, str]] = []  # (path, reason) not yet reported
        self._refused: set[tuple[str, int]] = set()  # (path, inode) refused once already

    def rescan(self) -> None:
        """Pick up new files matching the specs; notice rotation and truncation."""
        for path in expand_paths_quietly(self.specs):
            key = str(path)
            if key not in self.files:
                try:
                    self.files[key] = self._open(path)
                except FileNotFoundError:
                    continue  # gone since the scan
                except NotRegularFile as err:  # replaced by a FIFO since the scan
                    self._refuse(path, str(err))
        for key, followed in self.files.items():
            self._check(Path(key), followed)

    def take_refused(self) -> list[tuple[str, str]]:
        """Paths refused since the last call, with why (each path and inode once)."""
        refused, self.refused = self.refused, []
        return refused

    def _refuse(self, path: Path, reason: str) -> None:
        try:
            key = (str(path), path.stat().st_ino)
        except OSError:
            return
        if key not in self._refused:
            self._refused.add(key)
            self.refused.append((str(path), reason))

    def _open(self, path: Path) -> FollowedFile:
        handle = open_regular(path)
        stat = os.fstat(handle.fileno())
        saved = self.positions.get(str(path))
        followed = FollowedFile(Position(str(path), stat.st_ino, 0, 0), handle)
        if saved is not None and saved.inode == stat.st_ino:
            followed.position = saved
        elif saved is not None and saved.inode is not None:
            rotated = _find_inode(path.parent, saved.inode)
            if rotated is not None:  # rotated while we were down: finish the old file first
                with contextlib.suppress(OSError):  # unless gone again
                    followed.draining.append((open_regular(rotated), saved))
        if followed.position.offset > stat.st_size:  # truncated while we were down
            followed.position.offset = followed.position.line_number = 0
        followed.mark = followed.bytes_before_position()
        return followed

    def _check(self, path: Path, followed: FollowedFile) -> None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return  # moved away; new lines will appear when the writer recreates it
        if stat.st_ino != followed.position.inode:
            if followed.handle is not None:
                old = Position(
                    str(path),
                    followed.position.inode,
                    followed.position.offset,
                    followed.position.line_number,
                )
                followed.draining.append((followed.handle, old))
            followed.position = Position(str(path), stat.st_ino, 0, 0)
            followed.handle, followed.mark = None, b""
            try:
                followed.handle = open_regular(path)
            except NotRegularFile as err:  # replaced by a FIFO: refused, not waited on
                self._refuse(path, str(err))
            except FileNotFoundError:
                followed.position.inode = None  # gone again: opened when it reappears
            return
        shorter = stat.st_size < followed.position.offset
        if shorter or followed.bytes_before_position() != followed.mark:
            followed.position.offset = followed.position.line_number = 0
            followed.mark = b""

    def read(self, limit: int) -> list[tuple[list[RawLine], Position]]:
        """Batches of new complete lines, each with the position to commit after it."""
        batches = []
        for followed in self.files.values():
            while followed.draining:  # a rotated file is finished before its successor
                handle, position = followed.draining[0]
                lines = read_lines(
                    handle, position, self.max_line_bytes, limit, complete_only=False
                )
                if lines:
                    batches.append((lines, position))
                    break
                handle.close()
                followed.draining.pop(0)
            if followed.draining or followed.handle is None:
                continue
            lines = read_lines(
                followed.handle, followed.position, self.max_line_bytes, limit, complete_only=True
            )
            if lines:
                batches.append((lines, followed.position))
                followed.mark = followed.bytes_before_position()
        return batches

    def close(self) -> None:
        for followed in self.files.values():
            if followed.handle is not None:
                followed.handle.close()
            for handle, _ in followed.draining:
                handle.close()


def expand_paths_quietly(specs: list[str]) -> list[Path]:
    try:
        return expand_paths(specs)
    except RobmonError:
        return [p for s in specs for p in map(Path, glob.glob(s)) if p.is_file()]


def _find_inode(directory: Path, inode: int) -> Path | None:
    for entry in os.scandir(directory):
        if entry.is_file() and entry.inode() == inode:
            return Path(entry.path)
    return None
