"""What a method or an objective may know about the run it is part of (no torch, no config imports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RunContext:
    """One run as the code inside it sees it.

    Attributes:
        spec: the run's validated `RunConfig`.
        run_dir: its directory in the store (None while preflight applies a method to a weightless model).
        device: "cpu", "cuda", or "meta" in preflight.
        total_steps: optimizer steps the run will take (schedules, AdaLoRA's budget).
        refs: a `harness.runrefs.RunRefs`, which turns `run:<slug or id>` into finished runs of the
            store (the sweep's own pinned runs first); None where nothing is read.
    """

    spec: Any
    run_dir: Path | None
    device: str
    total_steps: int
    refs: Any = None

    @property
    def root(self) -> Path | None:
        """The results root (the parent of the experiment's folder)."""
        return self.run_dir.parent.parent if self.run_dir is not None else None

    @property
    def experiment(self) -> str | None:
        return self.run_dir.parent.name if self.run_dir is not None else None
