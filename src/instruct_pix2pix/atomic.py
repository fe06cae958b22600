"""Writing files and folders so that a crash or a kill never leaves half of one.

Everything is written under a unique hidden temporary name next to its final place (two runs at
once never share one), made durable with fsync, and then renamed into place, which is atomic on
one file system. A folder that already exists is moved aside before the new one takes its place
and removed only afterwards, so there is no moment without one. A failure removes the temporary
file or folder and leaves whatever was there before.

    with atomic_path("out.parquet") as temporary:   # for libraries that write by name
        writer.write(temporary)
    with atomic_file("edits.jsonl", "w") as stream:  # for our own writes
        stream.write(...)
    write_text("table.md", text); write_json("metrics.json", record)
    with atomic_folder("model") as folder:           # a whole folder, e.g. save_pretrained(folder)
        ...
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from instruct_pix2pix.errors import UserError


def temporary_name(path: Path) -> Path:
    """A hidden name next to `path`, unique to this write."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _usual_permissions(path: Path) -> None:
    """What any new file gets (0666 less the umask): some writers (safetensors) make theirs 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync_file(Path(root) / name)


def _cannot_write(path: Path, error: OSError) -> UserError:
    return UserError(f"cannot write {path}: {error.strerror or error}; check the folder, free space and permissions")


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _cannot_write(path, error) from None


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write a file at; on success it becomes `path`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; give a file name")
    _make_parent(path)
    temporary = temporary_name(path)
    try:
        yield temporary
        _usual_permissions(temporary)
        _fsync_file(temporary)  # the data is on disk before the rename makes it visible
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _cannot_write(path, error) from error
        raise


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Yield an open stream; on success what was written becomes `path`."""
    with atomic_path(path) as temporary:
        # O_EXCL: never write into a file that is not ours. 0o666 lets the umask decide the
        # permissions, as for any new file.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        with os.fdopen(os.open(temporary, flags, 0o666), mode, **open_kwargs) as stream:
            yield stream


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_file(path, "wb") as stream:
        stream.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_file(path, "w", encoding="utf-8") as stream:
        stream.write(text)


def write_json(path: str | os.PathLike[str], value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def replace_folder(new: Path, final: Path) -> None:
    """Put the finished folder `new` at `final`; an existing `final` is removed only once `new` is in."""
    new, final = Path(new), Path(final)
    _fsync_tree(new)
    if not final.exists():
        os.replace(new, final)
        return
    old = temporary_name(final)
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it takes the place of `path`."""
    path = Path(path)
    _make_parent(path)
    temporary = temporary_name(path)
    try:
        temporary.mkdir()
        yield temporary
        replace_folder(temporary, path)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, OSError):
            raise _cannot_write(path, error) from error
        raise


def check_job_folder(folder: str | os.PathLike[str], manifest: str, record: dict, *, what: str,
                     overwrite: bool = False) -> None:  # fmt: skip
    """Before a resumable job starts: `folder` is new, empty, or holds the same job (its `manifest`
    file equals `record`); else one line saying which settings differ. `what` names the job."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; give a folder for the {what}")
    if overwrite or not folder.exists() or not any(folder.iterdir()):
        return
    path = folder / manifest
    if not path.is_file():
        raise UserError(f"{folder} holds other files and no {manifest}; give an empty or new folder")
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{path} is unreadable; give another folder, or --overwrite to start again") from None
    differ = sorted(key for key in set(stored) | set(record) if stored.get(key) != record.get(key))
    if differ:
        raise UserError(f"{folder} holds a {what} with other settings ({', '.join(differ)} differ); use another "
                        "-o, or --overwrite to start again")  # fmt: skip
