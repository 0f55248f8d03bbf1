"""Resumable output folders of evaluation runs, on top of the labeling job store.

Layout: `manifest.json` (the run's identity: the arguments that decide the scored rows, the number of input rows and a
hash of their content), `parts/part-00000.jsonl` (one scored row per line, appended and fsync'ed chunk by chunk),
then the reports. A run killed at any moment and started again with the same arguments skips the rows already written;
a folder written with other arguments or other data is refused with the list of differences.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..labeling.store import MANIFEST, PARTS, PartWriter, content_hash, manifest_differences, read_results


def open_run_dir(
    output_dir: str | os.PathLike,
    kind: str,
    job: dict,
    rows: list,
    overwrite: bool = False,
    reports: tuple[str, ...] = (),
) -> dict[int, dict]:
    """Create an evaluation folder, or check that an existing one belongs to this very run and read what it holds.

    Args:
        output_dir (`str` or `os.PathLike`):
            The folder.
        kind (`str`):
            Format tag, e.g. `"trl-erprm-bon/1"`.
        job (`dict`):
            JSON-serialisable arguments that decide the scored rows.
        rows (`list`):
            The input rows (hashed, so a folder is never resumed on other data).
        overwrite (`bool`, *optional*, defaults to `False`):
            Delete the results of a different run found in the folder instead of raising.
        reports (`tuple[str, ...]`, *optional*, defaults to `()`):
            Report file names this run writes, deleted along with the parts on overwrite.

    Returns:
        `dict[int, dict]`: Scored rows already in the folder, by input index.
    """
    root = Path(output_dir)
    manifest = {"format": kind, "job": job, "num_rows": len(rows), "data_hash": content_hash(rows)}
    path = root / MANIFEST
    if path.is_file():
        differences = manifest_differences(json.loads(path.read_text()), manifest)
        if not differences:
            return read_results(root)
        if not overwrite:
            raise ValueError(
                f"The output folder {root} holds an evaluation run with different arguments or data:\n  - "
                + "\n  - ".join(differences)
                + "\nUse a new output_dir, rerun with that run's arguments to resume it, or pass --overwrite to delete "
                "its results."
            )
        shutil.rmtree(root / PARTS, ignore_errors=True)
        for name in (MANIFEST, *reports):
            (root / name).unlink(missing_ok=True)
    elif root.is_dir() and any(root.iterdir()):
        raise ValueError(f"The output folder {root} is not empty and is not an evaluation folder: choose a new one.")
    (root / PARTS).mkdir(parents=True, exist_ok=True)
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
    return {}


def run_writer(output_dir: str | os.PathLike) -> PartWriter:
    """The append-only, crash-safe writer of scored rows (records need an integer `index`).

    Args:
        output_dir (`str` or `os.PathLike`):
            The folder opened with [`open_run_dir`].

    Returns:
        `PartWriter`: Use as a context manager; `write(records)` appends and fsyncs.
    """
    return PartWriter(output_dir, 0)


def write_json(path: str | os.PathLike, value: dict) -> None:
    """Write a JSON report atomically.

    Args:
        path (`str` or `os.PathLike`):
            Destination.
        value (`dict`):
            JSON-serialisable value (NaN is written as `NaN`).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
