"""Local lm-eval tasks: each writes its data (jsonl) and an lm-eval task YAML into a versioned
folder under the ftbench cache, which `lm_eval.tasks.TaskManager(include_path=...)` then reads."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

import yaml

from harness.data.corpora import stable_shuffle
from harness.metrics import declare
from harness.registry import Registry

__all__ = ["LOCAL_TASKS", "LocalTask", "build_all", "function_ref", "register", "stable_shuffle", "task_dir", "task_key", "versions"]


class LocalTask:
    """One built-in task. Subclasses set the class attributes and implement `documents` and `spec`."""

    name: ClassVar[str]
    #: bump when the documents or the YAML change: cached scores of the old version are not reused
    version: ClassVar[int] = 1
    description: ClassVar[str] = ""
    #: the metric reports lead with, and whether higher is better
    primary_metric: ClassVar[str] = "acc"
    higher_is_better: ClassVar[bool] = True

    def documents(self) -> list[dict]:
        """The evaluation documents, deterministic."""
        raise NotImplementedError

    def spec(self, data_file: Path) -> dict:
        """The lm-eval task YAML as a dict (without `task`, `dataset_*` and `metadata`)."""
        raise NotImplementedError

    def extra_files(self) -> dict[str, str]:
        """Other files the YAML refers to (e.g. a `utils.py` for `!function`), name → text."""
        return {}

    def build(self, out_dir: Path) -> None:
        """Write `<name>.jsonl`, `<name>.yaml` and any extra files into `out_dir`."""
        data_file = out_dir / f"{self.name}.jsonl"
        with data_file.open("w") as fh:
            for doc in self.documents():
                fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
        doc = {"task": self.name, "dataset_path": "json",
               "dataset_kwargs": {"data_files": {"test": str(data_file)}}, "test_split": "test",
               **self.spec(data_file), "metadata": {"version": float(self.version)}}
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        # lm-eval resolves `!function module.fn` relative to the YAML file; safe_dump would quote it
        text = text.replace("'!function ", "!function ").replace("__FUNCTION_END__'", "")
        (out_dir / f"{self.name}.yaml").write_text(text)
        for name, content in self.extra_files().items():
            (out_dir / name).write_text(content)


LOCAL_TASKS: Registry[type[LocalTask]] = Registry("task")


def register(cls: type[LocalTask]) -> type[LocalTask]:
    """Register a LocalTask subclass under its `name` (call at the end of its module), and declare its
    primary metric's direction (its other metrics take lm-eval's own)."""
    declare(f"task.{cls.name}.{cls.primary_metric}", "", cls.higher_is_better,
            f"`{cls.name}`'s primary score ({cls.description})", group="tasks", task_score=True)
    return LOCAL_TASKS.register(cls.name, cls)


def function_ref(ref: str) -> str:
    """A YAML value that becomes `!function ref` in the written file."""
    return f"!function {ref}__FUNCTION_END__"


def task_dir(name: str) -> Path:
    """The folder holding a built task (built on first use; a concurrent builder is harmless)."""
    from harness.models import cache_dir

    cls = LOCAL_TASKS.get(name)
    out = cache_dir() / "tasks" / f"{name}-v{cls.version}"
    if not (out / f"{name}.yaml").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
        try:
            cls().build(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # data_files point into the folder: rewrite the tmp path to the final one before the rename
        yaml_file = tmp / f"{name}.yaml"
        yaml_file.write_text(yaml_file.read_text().replace(str(tmp), str(out)))
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first: its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_all(names: list[str]) -> list[str]:
    """Build the named local tasks; returns their folders (for TaskManager's include_path)."""
    return [str(task_dir(n)) for n in names if n in LOCAL_TASKS]


def task_key(task: str, limit, num_fewshot) -> dict:
    """What a task score depends on besides the run (recorded in result.json's `task_meta`)."""
    return {"version": versions([task])[task], "limit": limit, "num_fewshot": num_fewshot}


def versions(names: list[str]) -> dict[str, int | None]:
    """Task name → version of our local tasks (None for lm-eval's own tasks: their YAML carries it)."""
    return {n: (LOCAL_TASKS.get(n).version if n in LOCAL_TASKS else None) for n in names}
