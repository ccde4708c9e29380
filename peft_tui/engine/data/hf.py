"""HF datasets: a folder written by `save_to_disk`, or `hf:name[:config][:split]` from the hub."""

from __future__ import annotations

import contextlib
from pathlib import Path

from peft_tui.errors import ConfigError, first_line
from peft_tui.limits import MAX_TABLE_BYTES, size_text

HF_SPLIT_NAMES = ("train", "test", "validation", "valid", "dev", "unsupervised")


def is_hf_folder(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (False for a path that cannot
    be looked at, e.g. one too long: the file reader says why)."""
    try:
        return path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json",
                                                                   "dataset_info.json"))
    except OSError:
        return False


def parse_hf_spec(source: str) -> tuple[str, str | None, str | None]:
    """`hf:name[:config][:split]` -> (name, config, split). `hf:imdb:train` reads as a split when the
    second part is a usual split name (or a slice such as `train[:10%]`); `hf:glue:sst2` as a config."""
    head, bracket = source[3:], ""
    if "[" in head:  # a split slice may hold colons: train[:10%]
        head, bracket = head[: head.index("[")], head[head.index("[") :]
    parts = head.split(":")
    parts[-1] += bracket
    if not parts[0] or len(parts) > 3:
        raise ConfigError(f"{source!r} is not hf:name[:config][:split]: write e.g. hf:glue:sst2:train or hf:imdb")
    name, config, split = parts[0], None, None
    if len(parts) == 2:
        if parts[1].split("[")[0] in HF_SPLIT_NAMES:
            split = parts[1]
        else:
            config = parts[1] or None
    elif len(parts) == 3:
        config, split = parts[1] or None, parts[2] or None
    return name, config, split


def load_hf(source: str):
    """The dataset (or DatasetDict) behind a `hf:` spec or a save_to_disk folder."""
    try:
        import datasets
    except ModuleNotFoundError:
        raise ConfigError("HF datasets need the `datasets` package: pip install datasets") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    with contextlib.suppress(ImportError, AttributeError):  # the hub client's "Retrying in 8s" lines: the error below says it
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    if source.startswith("hf:"):
        name, config, split = parse_hf_spec(source)
        from peft_tui.engine.hub import reachable, unreachable_note

        if not reachable():  # the hub client would retry for minutes; the datasets cache needs no network
            datasets.config.HF_HUB_OFFLINE = True
        try:
            return datasets.load_dataset(name, config, split=split)
        except Exception as e:  # noqa: BLE001 - offline, unknown id, bad config/split: one line
            why = first_line(e, 200) if reachable() else unreachable_note()
            raise ConfigError(
                f"dataset {source!r} could not be loaded from the hub ({why}); "
                "save it with save_to_disk where the hub is reachable and pass the folder"
            ) from None
    try:
        return datasets.load_from_disk(str(Path(source).expanduser()))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"dataset folder {source!r} could not be read ({first_line(e, 200)}): "
                          "pass a save_to_disk folder") from None


def _class_names(ds, label_col: str) -> list[str] | None:
    feature = getattr(ds, "features", {}).get(label_col) if hasattr(ds, "features") else None
    names = getattr(feature, "names", None)
    return list(names) if names else None


def is_hf_source(src: str) -> bool:
    return src.startswith("hf:") or is_hf_folder(Path(src).expanduser())


def _to_pandas(ds, what: str, src: str, columns: list[str] | None):
    """A split as a DataFrame of the wanted columns (those it has), refused above MAX_TABLE_BYTES before
    it is copied out of its memory-mapped Arrow files."""
    names = list(ds.column_names)
    if columns:
        ds = ds.select_columns([c for c in columns if c in names])
    size = ds.data.nbytes
    if size > MAX_TABLE_BYTES:
        raise ConfigError(f"{what} {src!r} holds {size_text(size)} in the columns used, above the "
                          f"{size_text(MAX_TABLE_BYTES)} limit: pick a slice, e.g. hf:name::train[:10%]")
    df = ds.to_pandas()
    df.attrs["all_columns"] = names  # for the message when a wanted column is missing
    return df


def read_hf(src: str, what: str, label_col: str = "label", columns: list[str] | None = None):
    """(DataFrame of the main split, ClassLabel names or None, {"val"/"test": (split name, DataFrame)} from
    a DatasetDict's own validation / test splits); with `columns`, only those columns."""
    ds = load_hf(src)
    builtin: dict = {}
    if hasattr(ds, "keys") and not hasattr(ds, "features"):  # a DatasetDict
        splits = list(ds.keys())
        main = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
        if main is None:
            raise ConfigError(
                f"{what} {src!r} has splits {', '.join(splits)} and none is 'train': "
                "pass one with hf:name:config:split, or save that split alone"
            )
        for which, candidates in (("val", ("validation", "valid", "dev")), ("test", ("test",))):
            for c in candidates:
                if c in ds and c != main:
                    builtin[which] = (c, _to_pandas(ds[c], what, src, columns))
                    break
        ds = ds[main]
    names = _class_names(ds, label_col)
    if len(ds) == 0:
        raise ConfigError(f"{what} {src!r} has no rows: pick another split")
    return _to_pandas(ds, what, src, columns), names, builtin
