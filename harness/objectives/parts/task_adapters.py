"""Task adapters of a multitask run: one peft adapter per task (or a shared one plus one per task),
switched per micro-batch by its task, and the Trainer that batches one task at a time."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import Trainer

SHARED = "default"


def adapter_name(task: str) -> str:
    return f"task_{task}"


def extended_tasks(spec, refs) -> tuple[list[str], Path | None]:
    """(the tasks of the run that `extend` names, its directory), or ([], None) without `extend`.

    Raises:
        ValueError: the run is missing, not `ok` or kept no weights.
    """
    if not spec.objective.extend:
        return [], None
    _, directory, config, why = refs.finished(spec.objective.extend)
    if directory is None:
        raise ValueError(why)
    old, _ = extended_tasks(config, refs)  # an extension of an extension keeps every task
    return old + config.objective.sources(), directory


def add_task_adapters(model, spec, refs=None):
    """Give a peft model its architecture's adapters and make the new ones trainable; with `extend`,
    the extended run's adapters are loaded first, frozen. Returns `activate(task name)`, or None for
    `shared` (nothing to switch).

    Raises:
        ValueError: the method did not build a peft model (only peft adapters can be switched).
    """
    objective = spec.objective
    if objective.architecture == "shared":
        return None
    if not hasattr(model, "peft_config") or SHARED not in model.peft_config:
        raise ValueError(f"architecture `{objective.architecture}` switches peft adapters; method "
                         f"`{spec.method.name}` did not build one")
    config = model.peft_config[SHARED]
    old, directory = extended_tasks(spec, refs) if objective.extend else ([], None)
    for task in old:  # frozen: an extension trains only what its new tasks need
        model.load_adapter(str(directory / "adapter" / adapter_name(task)), adapter_name=adapter_name(task))
    if directory is not None and objective.architecture == "shared_plus_task":
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(directory / "adapter" / "adapter_model.safetensors")),
                                  adapter_name=SHARED)
    names = [adapter_name(t.name) for t in objective.tasks]
    for name in names:
        own = copy.deepcopy(config)
        if objective.architecture == "shared_plus_task":  # small, at the shared adapter's alpha/r scale
            own.lora_alpha, own.r = config.lora_alpha * objective.task_r / config.r, objective.task_r
        model.add_adapter(name, own)
    if objective.architecture == "per_task":
        model.set_adapter(names[0])
        model.delete_adapter(SHARED)
    trained = names + ([SHARED] if objective.architecture == "shared_plus_task" and not old else [])
    # the optimizer is built once over every trained adapter; switching then only decides which get gradients
    for param_name, param in model.named_parameters():
        param.requires_grad_(any(f".{name}." in param_name for name in trained))

    def activate(task: str) -> None:
        active = [adapter_name(task)] + ([SHARED] if objective.architecture == "shared_plus_task" else [])
        # peft freezes the inactive adapters; the optimizer keeps them and skips them while they get no gradient
        model.base_model.set_adapter(active if len(active) > 1 else active[0])

    return activate


class TaskCollator:
    """The run's collator, with each micro-batch's `task_id` kept beside it."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features):
        ids = [f["task_id"] for f in features]
        batch = self.inner([{k: v for k, v in f.items() if k != "task_id"} for f in features])
        batch["task_id"] = torch.tensor(ids)
        return batch


class MultitaskTrainer(Trainer):
    """Trains on the schedule in order; each batch's loss × its task's weight, with its task's adapters."""

    def __init__(self, *args, tasks: list[str], weights: list[float], activate=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tasks, self.weights, self.activate = tasks, weights, activate

    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.SequentialSampler(self.train_dataset)  # the schedule already drew the order

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        task_ids = inputs.pop("task_id")
        task = int(task_ids[0])
        if self.activate is not None:
            self.activate(self.tasks[task])
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        loss = loss * self.weights[task]
        return (loss, outputs) if return_outputs else loss
