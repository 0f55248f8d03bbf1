"""Resumable result store of a labeling job: append-only JSON-lines parts and a manifest, in one output folder.

Layout of a job folder:

```
output_dir/
  manifest.json            the job's identity: its arguments, the number of input rows and a hash of their content
  parts/part-00000.jsonl   one JSON object per labelled row (with its input index), one file per writing process
  dataset/                 the merged `datasets.Dataset` (`save_to_disk`), written at the end
  summary.json             status counts, throughput and the labeling metadata, written at the end
```

Crash safety: each process appends whole lines to its own part and `fsync`s after every batch. A process killed at
any moment (SIGKILL included) leaves at worst a torn last line, which readers ignore and the next writer of that
part truncates before appending. A row is "done" once its line is complete, so a restarted job skips exactly the
rows already written: nothing lost, nothing written twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path


MANIFEST = "manifest.json"
PARTS = "parts"
DATASET = "dataset"
SUMMARY = "summary.json"
FORMAT = "trl-erprm-labels/1"


def content_hash(values: Iterable) -> str:
    """SHA-256 of a sequence of JSON-serialisable values (e.g. the labelled fields of every input row, in order).

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


def make_manifest(job: dict, num_rows: int, data_hash: str) -> dict:
    """Build the manifest of a job.

    Args:
        job (`dict`):
            The arguments that decide the results (see `ERPRMLabelerConfig.job_arguments`).
        num_rows (`int`):
            Number of input rows.
        data_hash (`str`):
            [`content_hash`] of the input rows.

    Returns:
        `dict`: The manifest, as written to `manifest.json`.
    """
    return {"format": FORMAT, "job": job, "num_rows": num_rows, "data_hash": data_hash}


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


def _write_json_atomic(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prepare_job_dir(output_dir: str | os.PathLike, manifest: dict, overwrite: bool = False) -> bool:
    """Create a job folder or check that an existing one belongs to the same job. Call on ONE process only.

    Args:
        output_dir (`str` or `os.PathLike`):
            The job folder.
        manifest (`dict`):
            The current job's manifest ([`make_manifest`]).
        overwrite (`bool`, *optional*, defaults to `False`):
            When the folder holds another job's results, delete them (the files this module writes, nothing else)
            instead of raising.

    Returns:
        `bool`: Whether the folder already held results of this very job (a resumption).

    Raises:
        `ValueError`: The folder belongs to a job with different arguments or input (and `overwrite=False`), or it
            is a non-empty folder that is not a labeling job folder.
    """
    root = Path(output_dir)
    manifest_path = root / MANIFEST
    if manifest_path.is_file():
        stored = json.loads(manifest_path.read_text())
        differences = manifest_differences(stored, manifest)
        if not differences:
            return True
        if not overwrite:
            raise ValueError(
                f"The output folder {root} holds the results of a labeling job with different arguments:\n  - "
                + "\n  - ".join(differences)
                + "\nUse a new output_dir to keep both, resume that job with its own arguments, or pass overwrite=True "
                "(--overwrite) to delete its results and start this job from scratch."
            )
        for name in (MANIFEST, SUMMARY):
            (root / name).unlink(missing_ok=True)
        for name in (PARTS, DATASET):
            shutil.rmtree(root / name, ignore_errors=True)
    elif root.is_dir() and any(root.iterdir()):
        raise ValueError(
            f"The output folder {root} is not empty and holds no labeling manifest ({MANIFEST}): it is not a labeling "
            "job folder. Choose a new or empty output_dir."
        )
    (root / PARTS).mkdir(parents=True, exist_ok=True)
    _write_json_atomic(manifest_path, manifest)
    return False


def check_job_dir(output_dir: str | os.PathLike, manifest: dict) -> None:
    """Check, on every process, that the folder's manifest is the current job's (after [`prepare_job_dir`]).

    Args:
        output_dir (`str` or `os.PathLike`):
            The job folder.
        manifest (`dict`):
            The current job's manifest.

    Raises:
        `ValueError`: The manifest is missing or differs (processes launched with different arguments).
    """
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path} is missing: every process must use the same output_dir (on a shared file system).")
    differences = manifest_differences(json.loads(path.read_text()), manifest)
    if differences:
        raise ValueError(
            f"{path} does not match this process's job:\n  - " + "\n  - ".join(differences) + "\nLaunch every "
            "process with the same arguments and input dataset."
        )


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
        for number, line in enumerate(_complete_lines(path), start=1):
            try:
                record = json.loads(line)
                index = int(record["index"])
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{path}, line {number}, is not a valid result record ({error}). Delete that line to relabel the "
                    "row, or start the job in a new output_dir."
                ) from None
            if index in results and results[index] != record:
                raise ValueError(
                    f"Row {index} has two different results in {parts}: the folder was written by jobs with "
                    "different arguments. Start again in a new output_dir (or with overwrite=True)."
                )
            results[index] = record
    return results


class PartWriter:
    """Append-only writer of one process's part, durable after every [`write`].

    Opening it truncates a torn last line left by a killed writer, so appended records always start on a new line.

    Args:
        output_dir (`str` or `os.PathLike`):
            The job folder (prepared with [`prepare_job_dir`]).
        rank (`int`):
            Index of the writing process; each process writes its own `parts/part-{rank:05d}.jsonl`.
    """

    def __init__(self, output_dir: str | os.PathLike, rank: int):
        self.path = Path(output_dir) / PARTS / f"part-{rank:05d}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab+")
        self._file.seek(0, os.SEEK_END)
        size = self._file.tell()
        if size:
            self._file.seek(0)
            keep = self._file.read().rfind(b"\n") + 1
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
            self._file.write(payload)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


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


def write_summary(output_dir: str | os.PathLike, summary: dict) -> None:
    """Write `summary.json` atomically.

    Args:
        output_dir (`str` or `os.PathLike`):
            The job folder.
        summary (`dict`):
            JSON-serialisable summary.
    """
    _write_json_atomic(Path(output_dir) / SUMMARY, summary)
