"""A plain `transformers.Trainer` + `peft` script (LoRA, QLoRA or full fine-tuning), written for `make bench` and using no ftbench code.

It is the baseline ftbench's speed is compared against: what a user would write by hand for the
same job (padded batches, the model's own loss over every position). `benchmarks.run` hands it the
very examples ftbench trained on (token ids and labels, in ftbench's order) so both see the same
tokens; the Trainer's seeded sampler then draws the same batches.

    python benchmarks/plain_trainer.py MODEL_DIR DATA_DIR OUT.json [--steps 20 --micro-batch 4 ...]

DATA_DIR holds train.jsonl and val.jsonl ({"input_ids": [...], "labels": [...]}, -100 = not scored).
OUT.json gets: real tokens/s over the steps after the first `--warmup` (the definition ftbench uses),
step time percentiles, the token-weighted validation loss, wall-clock phase times and, on a GPU, the
peak memory. On a GPU `--dtype bfloat16` loads the weights in bf16 and trains under bf16 autocast
(`bf16=True`), as a user's script for a GPU would; `--max-seconds` stops training early (time-boxed
benchmarks, `benchmarks/gpu_check.py`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

START = time.perf_counter()

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig,  # noqa: E402
                          DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments)

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class CountingCollator:
    """Pads like DataCollatorForSeq2Seq and notes each batch's real (non-padding) tokens."""

    def __init__(self, tokenizer):
        self.inner = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
        self.real: list[int] = []
        self.computed: list[int] = []

    def __call__(self, examples):
        self.real.append(sum(len(e["input_ids"]) for e in examples))
        batch = self.inner(examples)
        self.computed.append(batch["input_ids"].numel())
        return batch


def _now() -> float:
    """perf_counter, after the GPU's queued work (a step's time is when its kernels finished)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class StepTimer(TrainerCallback):
    def __init__(self, max_seconds: float | None = None):
        self.seconds: list[float] = []
        self.first_step_at: float | None = None
        self.max_seconds = max_seconds

    def on_step_begin(self, args, state, control, **kw):
        self._t = _now()
        if self.first_step_at is None:
            self.first_step_at = self._t

    def on_step_end(self, args, state, control, **kw):
        now = _now()
        self.seconds.append(now - self._t)
        if self.max_seconds is not None and now - self.first_step_at > self.max_seconds:
            control.should_training_stop = True


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def eval_loss(model, examples, collator, batch_size: int = 8) -> float:
    """Sum of response-token NLL ÷ response tokens, from the full logits."""
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(examples), batch_size):
            batch = collator(examples[i:i + batch_size])
            labels = batch.pop("labels")
            logits = model(**batch).logits[:, :-1].float()
            target = labels[:, 1:]
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                       ignore_index=-100, reduction="sum").item()
            count += int(target.ne(-100).sum())
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("data_dir")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=["lora", "qlora", "full"], default="lora",
                        help="qlora: LoRA on the NF4 4-bit model (double quantization, compute in --dtype)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16: bf16 weights, and bf16 autocast on a GPU")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of tokens/s and step times")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop training after this many seconds")
    parser.add_argument("--no-eval", action="store_true", help="skip the validation loss")
    args = parser.parse_args()
    imported = time.perf_counter()

    torch.manual_seed(args.seed)
    dtype, cuda = getattr(torch, args.dtype), torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quantized = {}
    if args.method == "qlora":
        quantized = {"device_map": {"": "cuda:0" if torch.cuda.is_available() else "cpu"},
                     "quantization_config": BitsAndBytesConfig(
                         load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                         bnb_4bit_compute_dtype=dtype)}
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype, **quantized)
    if args.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if args.method != "full":
        model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout,
                                                 target_modules=LLAMA_LINEAR, task_type="CAUSAL_LM"))
    loaded = time.perf_counter()
    train, val = read_jsonl(Path(args.data_dir) / "train.jsonl"), read_jsonl(Path(args.data_dir) / "val.jsonl")
    collator, timer = CountingCollator(tokenizer), StepTimer(args.max_seconds)
    training = TrainingArguments(output_dir=str(Path(args.out).parent / "plain-trainer"), max_steps=args.steps,
                                 per_device_train_batch_size=args.micro_batch, learning_rate=args.lr,
                                 lr_scheduler_type="linear", logging_steps=1, save_strategy="no", report_to="none",
                                 seed=args.seed, data_seed=args.seed, use_cpu=not cuda,
                                 bf16=cuda and args.dtype == "bfloat16", dataloader_num_workers=0,
                                 remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=train, data_collator=collator, callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    peak = {}
    if cuda:
        peak = {"peak_mem_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
                "peak_mem_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}
    t0 = time.perf_counter()
    loss = None if args.no_eval else eval_loss(model, val, collator.inner)
    eval_s = time.perf_counter() - t0
    skip = args.warmup if len(timer.seconds) > args.warmup else 0
    steady = timer.seconds[skip:]
    tokens = collator.real[skip:len(timer.seconds)]
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    result = {
        "train_tokens_per_s": sum(tokens) / sum(steady), "step_ms_p50": 1000 * statistics.median(steady),
        "train_timed_steps": len(steady), "train_tokens": sum(collator.real[:len(timer.seconds)]),
        "first_steps_ms": [1000 * s for s in timer.seconds[:skip]],
        "computed_tokens_per_step": statistics.mean(collator.computed[skip:len(timer.seconds)] or [0]),
        "real_tokens_per_step": statistics.mean(tokens or [0]),
        "train_loss_last": statistics.mean(losses[-5:]) if losses else None,
        "eval_loss": loss, "import_s": imported - START, "load_s": loaded - imported,
        "train_s": train_s, "eval_s": eval_s, "startup_to_first_step_s": timer.first_step_at - START,
        "wall_s": time.perf_counter() - START, **peak,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
