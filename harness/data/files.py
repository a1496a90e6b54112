"""`file` (local jsonl/csv/parquet) and `hf` (a Hugging Face dataset id) with a field mapping."""

from __future__ import annotations

from pathlib import Path

from harness.data.base import Dataset, DataError, map_fields, register

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class LocalFile(Dataset):
    name = "file"
    description = "local .jsonl/.json/.csv/.parquet file; `prompt_field`/`response_field` name the columns"

    def records(self, cfg):
        if not cfg.path:
            raise DataError("data.path", "dataset `file` needs `path` (a .jsonl, .csv or .parquet file)")
        path = Path(cfg.path).expanduser()
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError("data.path", f"`{cfg.path}` has an unsupported extension; allowed: {', '.join(FORMATS)}")
        if not path.is_file():
            raise DataError("data.path", f"data file `{cfg.path}` does not exist")
        import pandas as pd

        try:
            frame = {"json": lambda p: pd.read_json(p, lines=p.suffix == ".jsonl"),
                     "csv": pd.read_csv, "parquet": pd.read_parquet}[fmt](path)
        except Exception as exc:  # a parse error of any reader is bad input, not a crash
            raise DataError("data.path", f"could not read `{cfg.path}`: {exc}") from None
        return map_fields(frame.to_dict("records"), cfg, cfg.path)


class HubDataset(Dataset):
    name = "hf"
    description = "a Hugging Face hub dataset id in `path` (needs a network), `split` to read"

    def records(self, cfg):
        if not cfg.path:
            raise DataError("data.path", "dataset `hf` needs `path` (a hub dataset id such as org/name)")
        import datasets

        try:
            ds = datasets.load_dataset(cfg.path, split=cfg.split)
        except Exception as exc:  # offline, unknown id, unknown split: all bad input here
            raise DataError("data.path", f"could not load hub dataset `{cfg.path}` split `{cfg.split}` "
                            f"(offline or unknown id?): {type(exc).__name__}: {exc}") from None
        return map_fields(ds.to_list(), cfg, cfg.path)


register(LocalFile)
register(HubDataset)
