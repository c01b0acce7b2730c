"""Records on disk: file names, atomic parquet writes, and whether a cell's records are complete.

A cell writes its results once, with ``write_parquet_atomic``, so a reader (a resumed
sweep, a report) sees a whole file or none; ``records_complete`` decides whether a resumed
sweep keeps a cell or runs it again.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # a frame's own methods write it: the check reads records without pandas
    import pandas as pd

RECORDS = "records.parquet"
TRAIN = "train.parquet"


def status_kind(status: pd.Series) -> pd.Series:
    """What a ``status`` column says before its reason: ok, skipped, failed or nonfinite.

    Statuses are ``ok`` or ``<kind>: <reason>`` (``skipped: leave-one-out needs ...``).
    """
    return status.astype(str).str.split(":").str[0]


def write_parquet_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to ``path`` so that a reader sees the whole file or none.

    As ``write_atomic``. A job killed before the rename leaves at most a
    ``.records.parquet.*.tmp`` file, which readers ignore and the next run of the cell
    removes (``remove_stale_temporaries``).
    """
    return write_atomic(path, lambda handle: frame.to_parquet(handle, index=False))


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file and rename it over ``path``.

    The temporary file lies in the same folder (``.NAME.*.tmp``), is flushed to disk, and is
    renamed over ``path`` (an atomic step on POSIX file systems); then the folder itself is
    synced, so that the rename survives a crash of the machine, not only of the job. A
    reader sees the whole file or none; a failed ``write`` leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the permissions of a plain open().
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


@functools.cache
def _umask() -> int:
    # Read once: os.umask can only be read by setting it, which is not thread-safe.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open a folder (Windows): nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename still stands
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(
    folder: str | Path, name: str = RECORDS, min_age_s: float = 60
) -> None:
    """Delete temporary files that killed writers left in ``folder``.

    Only files untouched for ``min_age_s`` seconds: a younger one may belong to a writer
    that is still alive (the same sweep started twice, an orphaned worker), and readers
    ignore temporary files anyway.
    """
    now = time.time()
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > min_age_s:
                tmp.unlink()
        except FileNotFoundError:  # its writer finished or cleaned up meanwhile
            pass


def records_complete(path: str | Path, config_hash: str) -> bool:
    """Whether a cell's records at ``path`` can be kept when its sweep is run again.

    True when the file reads, has rows, was written for the same configuration
    (``config_hash`` column) and no row says ``failed`` (failed cells are retried).
    """
    import pyarrow.parquet as pq  # read directly: a resumed sweep asks this of every cell

    try:
        columns = pq.read_table(path, columns=["status", "config_hash"]).to_pydict()
    except Exception:  # missing, truncated, foreign or older files: run the cell again
        return False
    return (
        bool(columns["status"])
        and all(value == config_hash for value in columns["config_hash"])
        and not any(str(s).split(":")[0] == "failed" for s in columns["status"])
    )
