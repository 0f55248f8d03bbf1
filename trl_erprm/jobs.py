"""The one job store of trl-erprm: resumable, crash-safe, single-owner output folders for long jobs.

Labeling ([`~trl_erprm.labeling.labeler.ERPRMLabeler`]), evaluation (`trl-erprm bon`, `trl-erprm stepeval`) and any
later long job (RAFT, search) write their rows through a [`JobStore`]. Layout of a job folder:

```
output_dir/
  manifest.json            the job's identity: format tag, arguments, number of input rows, hash of their content
  parts/part-00000.jsonl   one JSON object per finished row (with its input `index`), one file per writing process
  .lock, .lock-00001, ...  lock files of the processes that own the folder (rank 0, rank 1, ...)
  ...                      the job's own outputs (a merged dataset, summary.json, reports), written at the end
```

- **Resume without loss or duplication**: each process appends whole lines to its own part and `fsync`s after every
  batch. A process killed at any moment (SIGKILL included) leaves at worst a torn last line, which readers ignore and
  the next writer of that part truncates before appending. A row is done once its line is complete, so a restarted job
  skips exactly the rows already written. A resumed job says so (`Resuming <folder>: 37 of 100 rows done.`).
- **One job per folder**: [`JobStore.open`] takes an exclusive `fcntl.flock` on the folder's lock file (rank 0) or on
  its rank's lock file (other ranks of an `accelerate launch`). The operating system releases it when the process
  exits, however it exits, so a killed job never leaves a stale lock. A second job started on a held folder stops at
  once with a [`JobLockedError`] naming the holder (pid, host, start time, command).
- **Identity**: a folder holding rows of a job with other arguments or other input is refused with the list of
  differences (or cleared with `overwrite=True`: only the files this store and the job write are deleted). A folder
  whose previous job wrote no row at all (it failed at start-up, e.g. on a wrong model path) is simply taken over by
  the new job: there is nothing to protect.
- **Environment faults** (a read-only folder, a full disk, a file where the folder should be) raise a
  [`JobFolderError`] whose one-line message names the folder and the fix; files already written are never damaged
  (manifests and reports are replaced atomically, parts are only appended to).

Several processes (`accelerate launch`): rank 0 opens the store first (it creates or checks the folder), then the
other ranks open theirs (each checks the manifest and locks its own part); each writes only `parts/part-{rank}.jsonl`.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path


logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PARTS = "parts"
LOCK = ".lock"

_PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_A_FOLDER_ERRNOS = {errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


class JobFolderError(RuntimeError):
    """The job folder cannot be used as asked (read-only, full, a file, held by another job); the message is one line
    naming the folder and the fix."""


class JobLockedError(JobFolderError):
    """Another running job owns the folder; the message names it (pid, host, start time, command)."""


def content_hash(values: Iterable) -> str:
    """SHA-256 of a sequence of JSON-serialisable values (e.g. the fields of every input row, in order).

    Args:
        values (iterable of JSON-serialisable objects):
            The values to hash, in order.

    Returns:
        `str`: Hex digest; equal iff the values (and their order) are equal.
    """
    digest = hashlib.sha256()
    for value in values:
        digest.update(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def make_manifest(kind: str, job: dict, num_rows: int, data_hash: str) -> dict:
    """Build the manifest (identity) of a job.

    Args:
        kind (`str`):
            Format tag of the job's records, e.g. `"trl-erprm-labels/2"` or `"trl-erprm-bon/1"`.
        job (`dict`):
            JSON-serialisable arguments that decide the results (not speed settings).
        num_rows (`int`):
            Number of input rows.
        data_hash (`str`):
            [`content_hash`] of the input rows.

    Returns:
        `dict`: The manifest, as written to `manifest.json`.
    """
    return {"format": kind, "job": job, "num_rows": num_rows, "data_hash": data_hash}


def manifest_differences(stored: dict, current: dict) -> list[str]:
    """Human-readable differences between the manifest found in a folder and the one of the current job.

    Args:
        stored (`dict`):
            The manifest read from the folder.
        current (`dict`):
            The manifest of the job being started.

    Returns:
        `list[str]`: One line per difference, empty when the folder belongs to this job.
    """
    lines = []
    if stored.get("format") != current["format"]:
        lines.append(f"format: {stored.get('format')!r} in the folder, {current['format']!r} now")
    old_job, new_job = stored.get("job", {}), current["job"]
    for key in sorted(set(old_job) | set(new_job)):
        if old_job.get(key) != new_job.get(key):
            lines.append(f"{key}: {old_job.get(key)!r} in the folder, {new_job.get(key)!r} now")
    if stored.get("num_rows") != current["num_rows"]:
        lines.append(f"number of input rows: {stored.get('num_rows')} in the folder, {current['num_rows']} now")
    elif stored.get("data_hash") != current["data_hash"]:
        lines.append("input rows: same number, but different content or order")
    return lines


@contextlib.contextmanager
def folder_errors(output_dir: str | os.PathLike, doing: str) -> Iterator[None]:
    """Turn the operating system's errors about a job folder into a one-line [`JobFolderError`] with the fix.

    Args:
        output_dir (`str` or `os.PathLike`):
            The job folder.
        doing (`str`):
            What was being done, for the message (e.g. `"write the manifest"`).

    Raises:
        [`JobFolderError`]: on a permission, read-only, disk-full or not-a-folder error; other errors pass through.
    """
    try:
        yield
    except JobFolderError:
        raise
    except OSError as error:
        where = f"the output folder {output_dir}"
        what = error.strerror or str(error)
        if error.errno in _PERMISSION_ERRNOS:
            fix = "choose a writable output_dir (--output_dir) or make this one writable; nothing written was changed"
        elif error.errno in _SPACE_ERRNOS:
            fix = (
                "free some space (or choose an output_dir on another disk) and run the same command again: the rows "
                "already written are kept and the job resumes after them"
            )
        elif error.errno in _NOT_A_FOLDER_ERRNOS:
            fix = f"{error.filename or output_dir} is a file, not a folder: choose a folder path for output_dir"
        else:
            raise
        raise JobFolderError(f"Cannot {doing} in {where}: {what}; {fix}.") from None


def write_json_atomic(path: str | os.PathLike, value: dict, sort_keys: bool = False) -> None:
    """Write a JSON file atomically (a temporary file, `fsync`, then `os.replace`): readers see the old or the new
    file, never a torn one, and a failed write (full disk) leaves the old file as it was.

    Args:
        path (`str` or `os.PathLike`):
            Destination.
        value (`dict`):
            JSON-serialisable value (NaN is written as `NaN`; other objects with `str`).
        sort_keys (`bool`, *optional*, defaults to `False`):
            Write the keys of every mapping in sorted order.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(value, indent=2, sort_keys=sort_keys, ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` folder of a `Trainer` output folder that was written to the end, or `None`.

    `Trainer._save_checkpoint` writes the weights, the optimizer and then `trainer_state.json` into `checkpoint-N`
    (transformers 5.24); a run killed while saving leaves a newer folder without a readable `trainer_state.json`, which
    `transformers.trainer_utils.get_last_checkpoint` would still return and `Trainer.train` would then refuse. Such
    folders are skipped here.

    Args:
        output_dir (`str` or `os.PathLike`):
            The trainer's `output_dir`.

    Returns:
        `str` or `None`: The path of the newest complete checkpoint; `None` when there is none (or no folder).
    """
    root = Path(output_dir)
    if not root.is_dir():
        return None
    steps = []
    for child in root.iterdir():
        prefix, _, number = child.name.partition("-")
        if prefix == "checkpoint" and number.isdigit() and child.is_dir():
            steps.append((int(number), child))
    for _, child in sorted(steps, reverse=True):
        try:
            json.loads((child / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
        except (OSError, ValueError, KeyError):
            continue
        return str(child)
    return None


def _complete_lines(path: Path) -> list[bytes]:
    """The complete (newline-terminated) lines of a part; a torn last line is dropped."""
    data = path.read_bytes()
    end = data.rfind(b"\n")
    return data[: end + 1].splitlines() if end >= 0 else []


def read_results(output_dir: str | os.PathLike) -> dict[int, dict]:
    """Read every complete record of every part of a job folder.

    Args:
        output_dir (`str` or `os.PathLike`):
            The job folder.

    Returns:
        `dict[int, dict]`: The records by input row index.

    Raises:
        `ValueError`: A complete line is not valid JSON, or one row has two different records.
    """
    results: dict[int, dict] = {}
    parts = Path(output_dir) / PARTS
    for path in sorted(parts.glob("part-*.jsonl")) if parts.is_dir() else []:
        if not path.is_file():
            raise ValueError(f"{path} is not a regular file: remove it, or start the job in a new output_dir.")
        for number, line in enumerate(_complete_lines(path), start=1):
            try:
                record = json.loads(line)
                index = int(record["index"])
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{path}, line {number}, is not a valid result record ({error}). Delete that line to redo the "
                    "row, or start the job in a new output_dir."
                ) from None
            if index in results and results[index] != record:
                raise ValueError(
                    f"Row {index} has two different results in {parts}: the folder was written by jobs with "
                    "different arguments. Start again in a new output_dir (or with overwrite=True)."
                )
            results[index] = record
    return results


def read_records(output_dir: str | os.PathLike) -> list[dict]:
    """Every complete record of every part of a folder, in file order, whatever its fields (no row `index` needed):
    for stores keyed otherwise, such as the labeler's rollout cache.

    Args:
        output_dir (`str` or `os.PathLike`):
            The folder holding `parts/part-*.jsonl`.

    Returns:
        `list[dict]`: The records; a torn last line is ignored.

    Raises:
        `ValueError`: A complete line is not a JSON object (naming the file and the line).
    """
    records = []
    parts = Path(output_dir) / PARTS
    for path in sorted(parts.glob("part-*.jsonl")) if parts.is_dir() else []:
        for number, line in enumerate(_complete_lines(path), start=1):
            try:
                record = json.loads(line)
            except ValueError as error:
                record, reason = None, str(error)
            if not isinstance(record, dict):
                reason = "not a JSON object" if record is not None else reason
                raise ValueError(f"{path}, line {number}, is not a valid record ({reason}). Delete that line.")
            records.append(record)
    return records


def ordered_results(results: dict[int, dict], num_rows: int) -> list[dict]:
    """The records of rows `0 .. num_rows - 1`, in input order.

    Args:
        results (`dict[int, dict]`):
            Records by row index ([`read_results`]).
        num_rows (`int`):
            Number of input rows.

    Returns:
        `list[dict]`: One record per row, in order.

    Raises:
        `ValueError`: Some rows have no record, or records exist for rows past the input.
    """
    missing = [i for i in range(num_rows) if i not in results]
    extra = sorted(i for i in results if not 0 <= i < num_rows)
    if missing or extra:
        raise ValueError(
            f"The job folder has no result for {len(missing)} row(s) (first: {missing[:5]}) and results for "
            f"{len(extra)} unknown row(s) (first: {extra[:5]}): run the same job again to finish it."
        )
    return [results[i] for i in range(num_rows)]


def _end_of_last_line(file, size: int, block: int = 1 << 16) -> int:
    """Offset just past the last newline of a file of `size` bytes (0 if none), reading backwards block by block."""
    end = size
    while end > 0:
        start = max(0, end - block)
        file.seek(start)
        newline = file.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


class PartWriter:
    """Append-only writer of one process's part, durable after every [`write`].

    Opening it truncates a torn last line left by a killed writer, so appended records always start on a new line.
    Use it through [`JobStore.writer`], which holds the lock that makes this process the part's only writer.

    Args:
        output_dir (`str` or `os.PathLike`):
            The job folder.
        rank (`int`):
            Index of the writing process; each process writes its own `parts/part-{rank:05d}.jsonl`.
    """

    def __init__(self, output_dir: str | os.PathLike, rank: int):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / PARTS / f"part-{rank:05d}.jsonl"
        with folder_errors(self.output_dir, "open the results part"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab+", buffering=0)  # unbuffered: a failed write leaves nothing pending
            status = os.fstat(self._file.fileno())
            size = status.st_size if stat.S_ISREG(status.st_mode) else 0
            keep = _end_of_last_line(self._file, size)
            if keep < size:
                self._file.truncate(keep)
                self._file.flush()
                os.fsync(self._file.fileno())

    def write(self, records: Iterable[dict]) -> None:
        """Append records (one JSON line each) and make them durable (`flush` + `fsync`).

        Args:
            records (iterable of `dict`):
                Records with an integer `index` field (the input row).
        """
        payload = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
        if payload:
            # A partial write (disk full) leaves a torn line, which readers ignore and the next writer truncates.
            with folder_errors(self.output_dir, "append results"):
                view = memoryview(payload)
                while view:
                    view = view[self._file.write(view) :]
                os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        with contextlib.suppress(OSError):
            self._file.close()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class JobStore:
    """A job folder owned by this process while open: lock, manifest, resumable parts, atomic outputs.

    Args:
        output_dir (`str` or `os.PathLike`):
            The job folder (created if needed).
        manifest (`dict`):
            The job's identity ([`make_manifest`]).
        rank (`int`, *optional*, defaults to `0`):
            Index of this process in a multi-process job. Rank 0 creates or checks the folder; the other ranks open
            after it and only check the manifest and lock their own part.
        outputs (`tuple[str, ...]`, *optional*, defaults to `()`):
            Files or folders the job writes in the folder besides the parts (reports, a dataset): deleted with the
            parts on `overwrite`, and their presence means the job wrote results.
        overwrite (`bool`, *optional*, defaults to `False`):
            When the folder holds another job's results, delete them (the parts, the manifest and `outputs`, nothing
            else) instead of raising.
        unit (`str`, *optional*, defaults to `"rows"`):
            Name of a row in messages (`"rows"`, `"problems"`, `"items"`).

    Example:
    ```python
    from trl_erprm.jobs import JobStore, content_hash, make_manifest

    rows = [{"q": "1+1"}, {"q": "2+2"}]
    manifest = make_manifest("my-job/1", {"model": "m"}, len(rows), content_hash(rows))
    with JobStore("my-job", manifest) as job:
        done = job.open()  # records already written, by index
        with job.writer() as writer:
            writer.write([{"index": i, "answer": i + 2} for i in range(len(rows)) if i not in done])
    ```
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        manifest: dict,
        rank: int = 0,
        outputs: tuple[str, ...] = (),
        overwrite: bool = False,
        unit: str = "rows",
    ):
        self.root = Path(output_dir)
        self.manifest = manifest
        self.rank = int(rank)
        self.outputs = tuple(outputs)
        self.overwrite = bool(overwrite)
        self.unit = unit
        self.resumed = False
        self._lock_file = None

    @property
    def lock_path(self) -> Path:
        """This process's lock file (`.lock` for rank 0, `.lock-{rank:05d}` for the others)."""
        return self.root / (LOCK if self.rank == 0 else f"{LOCK}-{self.rank:05d}")

    def open(self) -> dict[int, dict]:
        """Take the folder for this process and return the records already written (empty for a new job).

        Rank 0 locks the folder, then creates it or checks that it holds this very job (resuming it), takes over a
        folder whose previous job wrote nothing, or clears another job's results with `overwrite`. Other ranks lock
        their part and check the manifest rank 0 wrote.

        Returns:
            `dict[int, dict]`: Records by input row index.

        Raises:
            [`JobLockedError`]: Another running process holds this lock.
            [`JobFolderError`]: The folder is read-only, full or a file.
            `ValueError`: The folder belongs to a job with different arguments or input (and `overwrite=False`), is
                a non-empty folder that is not a job folder, or (rank > 0) has no or another manifest.
        """
        manifest_path = self.root / MANIFEST
        if self.rank == 0 and self.root.is_dir() and not manifest_path.exists() and not self.lock_path.exists():
            if any(self.root.iterdir()):
                raise ValueError(
                    f"The output folder {self.root} is not empty and holds no job manifest ({MANIFEST}): it is not a "
                    "job folder. Choose a new or empty output_dir."
                )
        with folder_errors(self.root, "create the job folder"):
            self.root.mkdir(parents=True, exist_ok=True)
        if self._lock_file is None:  # opening again (to re-read the records) keeps the lock already held
            self._lock()
        try:
            if self.rank == 0:
                self._prepare(manifest_path)
            else:
                self._check(manifest_path)
            results = read_results(self.root)
        except BaseException:
            self.close()
            raise
        self.resumed = bool(results)
        if self.rank == 0 and results:
            logger.info(f"Resuming {self.root}: {len(results)} of {self.manifest['num_rows']} {self.unit} done.")
        return results

    def writer(self) -> PartWriter:
        """The append-only, crash-safe writer of this process's part.

        Returns:
            [`PartWriter`]: Use as a context manager; `write(records)` appends and fsyncs.
        """
        if self._lock_file is None:
            raise RuntimeError("Call JobStore.open() before writing: the folder must be owned by this process.")
        return PartWriter(self.root, self.rank)

    def read_results(self) -> dict[int, dict]:
        """Every record written so far, by every process ([`read_results`]).

        Returns:
            `dict[int, dict]`: Records by input row index.
        """
        return read_results(self.root)

    def write_json(self, name: str, value: dict) -> Path:
        """Write a JSON output of the job (a summary, a report) atomically in the folder.

        Args:
            name (`str`):
                File name inside the folder.
            value (`dict`):
                JSON-serialisable value.

        Returns:
            `Path`: The file written.
        """
        path = self.root / name
        with folder_errors(self.root, f"write {name}"):
            write_json_atomic(path, value)
        return path

    def close(self) -> None:
        """Release the lock (also released by the operating system if the process dies)."""
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------------------

    def _lock(self) -> None:
        with folder_errors(self.root, "create the lock file"):
            handle = open(self.lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
            except (ValueError, KeyError, TypeError):
                who = "a process that is still starting"
            raise JobLockedError(
                f"The output folder {self.root} is in use by another job ({who}). Wait for that job to finish or stop "
                "it (its lock is released when it exits), or choose another output_dir."
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300],
        }
        with folder_errors(self.root, "write the lock file"):
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(holder) + "\n")
            handle.flush()
        self._lock_file = handle

    def _prepare(self, manifest_path: Path) -> None:
        if manifest_path.is_file():
            stored = json.loads(manifest_path.read_text())
            differences = manifest_differences(stored, self.manifest)
            if not differences:
                return
            if self._has_results():
                if not self.overwrite:
                    raise ValueError(
                        f"The output folder {self.root} holds the results of a job with different arguments:\n  - "
                        + "\n  - ".join(differences)
                        + "\nUse a new output_dir to keep both, resume that job with its own arguments, or pass "
                        "overwrite=True (--overwrite) to delete its results and start this job from scratch."
                    )
                with folder_errors(self.root, "delete the previous job's results"):
                    for name in (PARTS, *self.outputs):
                        path = self.root / name
                        if path.is_dir():
                            shutil.rmtree(path)
                        else:
                            path.unlink(missing_ok=True)
            else:
                logger.info(
                    f"{self.root}: its previous job wrote no result ({'; '.join(differences)}); starting this job there."
                )
        with folder_errors(self.root, "write the manifest"):
            (self.root / PARTS).mkdir(exist_ok=True)
            write_json_atomic(manifest_path, self.manifest, sort_keys=True)

    def _has_results(self) -> bool:
        """Whether the folder holds a complete record or an output (a torn first line is not a result)."""
        return bool(read_results(self.root)) or any((self.root / name).exists() for name in self.outputs)

    def _check(self, manifest_path: Path) -> None:
        if not manifest_path.is_file():
            raise ValueError(
                f"{manifest_path} is missing: every process must use the same output_dir (on a shared file system)."
            )
        differences = manifest_differences(json.loads(manifest_path.read_text()), self.manifest)
        if differences:
            raise ValueError(
                f"{manifest_path} does not match this process's job:\n  - " + "\n  - ".join(differences) + "\nLaunch "
                "every process with the same arguments and input dataset."
            )
