"""Dataset loading for the scripts and commands: Hub ids, local data files and `save_to_disk` folders alike."""

from __future__ import annotations

import os

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk


__all__ = ["load_any_dataset"]


_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def load_any_dataset(name_or_path: str, config: str | None = None, split: str | None = None) -> Dataset:
    """Load one split of a dataset from the Hub, a local data file, or a folder written by `save_to_disk`.

    This is the one rule of every script and command for choosing a split: `split` if given, else the only split
    the source has (a single data file is the `"train"` split), and an error naming the available splits otherwise.

    Args:
        name_or_path (`str`):
            A Hub dataset id, a local `.json` / `.jsonl` / `.parquet` / `.csv` / `.arrow` file, a folder written by
            `Dataset.save_to_disk` or `DatasetDict.save_to_disk`, or any folder `datasets.load_dataset` understands.
        config (`str`, *optional*):
            Dataset configuration name (Hub datasets).
        split (`str`, *optional*):
            Split to return. By default the only split of the source (a data file or a saved `Dataset` is the
            `"train"` split); a source with several splits (most Hub datasets) needs it.

    Returns:
        [`~datasets.Dataset`]: The split.

    Raises:
        `FileNotFoundError`: `name_or_path` names a data file (by its extension) that does not exist.
        `ValueError`: The format of a file is unknown, `split` is not one of the source's splits, or `split` is `None`
            and the source has several; the message lists the available splits.
    """
    if os.path.splitext(name_or_path)[1].lower() in _FILE_BUILDERS and not os.path.exists(name_or_path):
        raise FileNotFoundError(
            f"No such data file: {name_or_path!r}. Pass an existing file, folder or Hub dataset id."
        )
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
    single = os.path.isfile(name_or_path) or isinstance(data, Dataset)
    if isinstance(data, Dataset):  # `Dataset.save_to_disk`: one split, the "train" split as for a data file
        data = DatasetDict({"train": data})
    if split is None:
        if len(data) == 1:
            return next(iter(data.values()))
        raise ValueError(
            f"{name_or_path!r} has several splits {list(data)}: choose one (`split`; `--dataset_split` on the command "
            "line)."
        )
    if split not in data:
        single_file = " (a single data file or saved Dataset is the 'train' split)" if single else ""
        raise ValueError(
            f"Split {split!r} not found in {name_or_path!r}; available splits: {list(data)}{single_file}. Pass one of "
            "them, or no split to use the only one."
        )
    return data[split]
