"""The LoRA family through peft: LoRA, QLoRA, rsLoRA, DoRA, QDoRA and LoRA+ as thin variants."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.methods.base import register
from harness.methods.peft_base import PeftMethod, TargetedOptions, resolve_targets


class LoraOptions(TargetedOptions):
    r: int = Field(8, gt=0, description="rank; higher: more capacity, more memory")
    alpha: float = Field(16, gt=0, description="scale numerator (scale = alpha / r); may be an expression of r")
    dropout: float = Field(0.05, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"


class Lora(PeftMethod):
    name = "lora"
    description = "low-rank update B·A added to each target linear layer (Hu et al. 2021)"
    Options = LoraOptions
    slug_fields = (("r", "r"), ("alpha", "a"))
    merges = True
    #: extra LoraConfig arguments a variant sets (DoRA, rsLoRA, ...)
    variant_kwargs: dict = {}

    def peft_config(self, model, ctx):
        from peft import LoraConfig, TaskType

        o = self.options
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout,
            target_modules=resolve_targets(o.target_modules, model.config.model_type), bias=o.bias,
            **self.variant_kwargs,
        )


class QLora(Lora):
    name = "qlora"
    description = "LoRA on a 4-bit NF4 base with double quantization (Dettmers et al. 2023)"
    requires_4bit = True


class RsLora(Lora):
    name = "rslora"
    description = "LoRA scaled by alpha/sqrt(r), stable at high rank (Kalajdzievski 2023)"
    variant_kwargs = {"use_rslora": True}


class Dora(Lora):
    name = "dora"
    description = "LoRA on the direction plus a trained magnitude vector (Liu et al. 2024)"
    variant_kwargs = {"use_dora": True}


class QDora(Dora):
    name = "qdora"
    description = "DoRA on a 4-bit NF4 base"
    requires_4bit = True


class LoraPlusOptions(LoraOptions):
    lr_ratio: float = Field(16, gt=0, description="B matrices train at lr × lr_ratio (paper default 16)")


class LoraPlus(Lora):
    name = "loraplus"
    description = "LoRA with a larger learning rate for B than for A (Hayou et al. 2024), peft's optimizer helper"
    Options = LoraPlusOptions

    def optimizer(self, model, train_cfg):
        import torch
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(model=model, optimizer_cls=torch.optim.AdamW, lr=train_cfg.lr,
                                         loraplus_lr_ratio=self.options.lr_ratio,
                                         weight_decay=train_cfg.weight_decay)


for _cls in (Lora, QLora, RsLora, Dora, QDora, LoraPlus):
    register(_cls)
