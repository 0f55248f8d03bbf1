"""The labeler's rollout cache: the graded outcomes of every step prefix rolled out, reused for identical prefixes.

Solutions sampled for one problem often share their first steps word for word, and a second job often labels rows a
first one already covered. The labeler therefore keys each step prefix's outcomes by everything that decides them
([`ERPRMLabeler.rollout_key`]: the exact rollout prompt, generator, backend, sampling, `N`, seed and seed policy, the
prompt format, the gold answer and the grader) and rolls a key out once. Under the content seed policy
(`SEED_POLICY`: the seed of a prefix's rollouts is derived from its prompt, not from its row) reusing an outcome gives
exactly the row a job without reuse writes.

Layout of a cache folder (by default `output_dir/rollouts`; `--rollout_cache_dir` points several jobs at one):

```
rollouts.json            the format tag
parts/part-00000.jsonl   one JSON object per rolled-out key, appended and fsynced per batch, one file per writer
.lock-00000              the lock of the process writing part 00000
```

Each writing process (a job, a rank of an `accelerate launch`, another job sharing the folder) takes the first part
whose lock is free, so writers never share a file; a killed writer leaves at worst a torn last line, which readers
ignore and the next writer of that part truncates. Entries are read when the cache is opened.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path

from .. import jobs


#: Format tag of a rollout cache folder and of its entries.
ROLLOUT_CACHE_FORMAT = "trl-erprm-rollouts/1"
_TAG_FILE = "rollouts.json"


class RolloutCache:
    """Outcomes of step-prefix rollouts by key, in memory and (with a folder) on disk, shared by jobs.

    Args:
        folder (`str` or `os.PathLike`, *optional*):
            The cache folder (created if needed). `None` keeps the entries in memory only.

    Example:
    ```python
    from trl_erprm.labeling.rollout_cache import RolloutCache

    cache = RolloutCache("rollout-cache")
    cache.open()
    cache.add({"a-key": {"outcomes": [1.0, 0.0], "counts": {}}})
    assert cache.get("a-key")["outcomes"] == [1.0, 0.0]
    cache.close()
    ```
    """

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.entries: dict[str, dict] = {}
        self.loaded = 0
        self._lock_file = None
        self._writer = None

    def open(self) -> int:
        """Load the stored entries and take a part to append to.

        Returns:
            `int`: The number of entries loaded from the folder.

        Raises:
            `ValueError`: The folder is not empty and is not a rollout cache, or holds another format.
            [`~trl_erprm.jobs.JobFolderError`]: The folder is read-only, full or a file.
        """
        if self.folder is None:
            return 0
        tag = self.folder / _TAG_FILE
        with jobs.folder_errors(self.folder, "open the rollout cache"):
            # Another process may be creating the same cache right now: its own files are not foreign.
            names = [p.name for p in self.folder.iterdir()] if self.folder.is_dir() else []
            foreign = [n for n in names if n != jobs.PARTS and not n.startswith((".lock-", _TAG_FILE))]
            if foreign and not tag.is_file():
                raise ValueError(
                    f"{self.folder} is not empty and is not a rollout cache (no {_TAG_FILE}): choose a new or empty "
                    "folder for rollout_cache_dir."
                )
            self.folder.mkdir(parents=True, exist_ok=True)
            if tag.is_file():
                found = json.loads(tag.read_text()).get("format")
                if found != ROLLOUT_CACHE_FORMAT:
                    raise ValueError(
                        f"The rollout cache {self.folder} has format {found!r}, this version writes "
                        f"{ROLLOUT_CACHE_FORMAT!r}: choose another rollout_cache_dir."
                    )
            else:  # atomically, through a file of this process's own (several may create the cache at once)
                staging = tag.with_name(f"{_TAG_FILE}.{os.getpid()}.tmp")
                staging.write_text(json.dumps({"format": ROLLOUT_CACHE_FORMAT}) + "\n")
                os.replace(staging, tag)
        for record in jobs.read_records(self.folder):  # a key two writers stored at once: the first part's wins
            self.entries.setdefault(record["key"], record)
        self.loaded = len(self.entries)
        self._claim_part()
        return self.loaded

    def _claim_part(self) -> None:
        """Lock the first free part (an operating-system lock, released when the process exits)."""
        slot = 0
        while True:
            with jobs.folder_errors(self.folder, "lock a rollout cache part"):
                handle = open(self.folder / f".lock-{slot:05d}", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                handle.close()
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                slot += 1
                continue
            self._lock_file = handle
            self._writer = jobs.PartWriter(self.folder, slot)
            return

    def get(self, key: str) -> dict | None:
        """The entry stored for `key`, or `None`.

        Args:
            key (`str`):
                A rollout key.

        Returns:
            `dict` or `None`: The entry (`outcomes`, `counts`, ...).
        """
        return self.entries.get(key)

    def add(self, entries: dict[str, dict]) -> None:
        """Store entries (in memory, and appended and fsynced to this process's part when there is a folder).

        Args:
            entries (`dict[str, dict]`):
                Entries by key: JSON-serialisable dicts (`outcomes`, `counts`, ...).
        """
        records = [{"key": key, **entry} for key, entry in entries.items() if key not in self.entries]
        self.entries.update({record["key"]: record for record in records})
        if self._writer is not None and records:
            self._writer.write(records)

    def close(self) -> None:
        """Close the part and release its lock."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> RolloutCache:
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
