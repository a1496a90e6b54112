"""`file` (local jsonl/csv/parquet) and `hf` (a Hugging Face dataset id) with a field mapping."""

from __future__ import annotations

import json
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
        if path.suffix.lower() == ".jsonl":
            return map_fields(read_jsonl(path, cfg), cfg, cfg.path)
        import pandas as pd

        try:
            frame = {"json": pd.read_json, "csv": pd.read_csv, "parquet": pd.read_parquet}[fmt](path)
        except Exception as exc:  # a parse error of any reader is bad input, not a crash
            raise DataError("data.path", f"could not read `{cfg.path}`: {exc}") from None
        return map_fields(frame.to_dict("records"), cfg, cfg.path)


def read_jsonl(path: Path, cfg) -> list[dict]:
    """The records of a JSON Lines file: one JSON object per line holding the prompt and response fields
    (blank lines skipped).

    Raises:
        DataError: the first line that is not UTF-8, not JSON, not an object, or lacks a field, by number.
    """
    rows = []
    try:
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                where = f"could not read `{cfg.path}`: line {number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError("data.path", f"{where} is not UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:  # json.JSONDecodeError; RecursionError is not a ValueError
                    raise DataError("data.path", f"{where} is not valid JSON: {getattr(exc, 'msg', exc)} "
                                    f"(column {getattr(exc, 'colno', '?')})") from None
                except RecursionError:
                    raise DataError("data.path", f"{where} is nested too deeply") from None
                if not isinstance(row, dict):
                    raise DataError("data.path", f"{where} must be a JSON object, but holds a {type(row).__name__}")
                missing = [f"`{f}`" for f in (cfg.prompt_field, cfg.response_field) if f not in row]
                if missing:
                    raise DataError(f"data.{'prompt_field' if cfg.prompt_field not in row else 'response_field'}",
                                    f"`{cfg.path}` line {number} has no field {' or '.join(missing)}; its fields "
                                    f"are {sorted(row)}")
                rows.append(row)
    except OSError as exc:
        raise DataError("data.path", f"could not read `{cfg.path}`: {exc.strerror or exc}") from None
    return rows


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
