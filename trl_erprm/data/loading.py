"""Dataset loading for the scripts and commands: Hub ids, local data files and `save_to_disk` folders alike."""

from __future__ import annotations

import os

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk


__all__ = ["load_any_dataset"]


_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def load_any_dataset(name_or_path: str, config: str | None = None, split: str | None = None) -> Dataset | DatasetDict:
    """Load a dataset from the Hub, a local data file, or a folder written by `save_to_disk`.

    Args:
        name_or_path (`str`):
            A Hub dataset id, a local `.json` / `.jsonl` / `.parquet` / `.csv` / `.arrow` file, a folder written by
            `Dataset.save_to_disk`, or any folder `datasets.load_dataset` understands.
        config (`str`, *optional*):
            Dataset configuration name (Hub datasets).
        split (`str`, *optional*):
            Split to return. A single data file is the `"train"` split.

    Returns:
        [`~datasets.Dataset`] if `split` is given (or the source holds a single dataset), else a
        [`~datasets.DatasetDict`].
    """
    if os.path.isfile(name_or_path):
        builder = _FILE_BUILDERS.get(os.path.splitext(name_or_path)[1].lower())
        if builder is None:
            raise ValueError(
                f"Cannot tell the format of {name_or_path!r}; use one of {sorted(_FILE_BUILDERS)} or a dataset folder."
            )
        data = load_dataset(builder, data_files={"train": name_or_path})
    elif os.path.isdir(name_or_path) and (
        os.path.exists(os.path.join(name_or_path, "dataset_info.json"))
        or os.path.exists(os.path.join(name_or_path, "dataset_dict.json"))
    ):
        data = load_from_disk(name_or_path)
    else:
        data = load_dataset(name_or_path, config)
    if isinstance(data, Dataset):
        return data
    if split is None:
        return data
    if split not in data:
        raise ValueError(f"Split {split!r} not found in {name_or_path!r}; available splits: {list(data)}.")
    return data[split]
