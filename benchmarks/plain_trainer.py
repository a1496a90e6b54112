"""A plain `transformers.Trainer` + `peft` script (LoRA, QLoRA or full fine-tuning), written for `make bench` and using no ftbench code.

It is the baseline ftbench's speed is compared against: what a user would write by hand for the
same job (padded batches, the model's own loss over every position). `benchmarks.run` hands it the
very examples ftbench trained on (token ids and labels, in ftbench's order) so both see the same
tokens; the Trainer's seeded sampler then draws the same batches.

    python benchmarks/plain_trainer.py MODEL_DIR DATA_DIR OUT.json [--steps 20 --micro-batch 4 ...]

DATA_DIR holds train.jsonl and val.jsonl ({"input_ids": [...], "labels": [...]}, -100 = not scored).
OUT.json gets: real tokens/s over the steps after the first (the definition ftbench uses), step
time percentiles, the token-weighted validation loss, and wall-clock phase times.
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

    def __call__(self, examples):
        self.real.append(sum(len(e["input_ids"]) for e in examples))
        return self.inner(examples)


class StepTimer(TrainerCallback):
    def __init__(self):
        self.seconds: list[float] = []
        self.first_step_at: float | None = None

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()
        if self.first_step_at is None:
            self.first_step_at = self._t

    def on_step_end(self, args, state, control, **kw):
        self.seconds.append(time.perf_counter() - self._t)


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
                        help="qlora: LoRA on the NF4 4-bit model (double quantization, fp32 compute)")
    args = parser.parse_args()
    imported = time.perf_counter()

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quantized = {}
    if args.method == "qlora":
        quantized = {"device_map": {"": "cuda:0" if torch.cuda.is_available() else "cpu"},
                     "quantization_config": BitsAndBytesConfig(
                         load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                         bnb_4bit_compute_dtype=torch.float32)}
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, **quantized)
    if args.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if args.method != "full":
        model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout,
                                                 target_modules=LLAMA_LINEAR, task_type="CAUSAL_LM"))
    loaded = time.perf_counter()
    train, val = read_jsonl(Path(args.data_dir) / "train.jsonl"), read_jsonl(Path(args.data_dir) / "val.jsonl")
    collator, timer = CountingCollator(tokenizer), StepTimer()
    training = TrainingArguments(output_dir=str(Path(args.out).parent / "plain-trainer"), max_steps=args.steps,
                                 per_device_train_batch_size=args.micro_batch, learning_rate=args.lr,
                                 lr_scheduler_type="linear", logging_steps=1, save_strategy="no", report_to="none",
                                 seed=args.seed, data_seed=args.seed, use_cpu=not torch.cuda.is_available(),
                                 dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=train, data_collator=collator, callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss = eval_loss(model, val, collator.inner)
    eval_s = time.perf_counter() - t0
    steady = timer.seconds[1:]
    tokens = collator.real[1:len(timer.seconds)]
    result = {
        "train_tokens_per_s": sum(tokens) / sum(steady), "step_ms_p50": 1000 * statistics.median(steady),
        "train_timed_steps": len(steady), "train_tokens": sum(collator.real[:len(timer.seconds)]),
        "eval_loss": loss, "import_s": imported - START, "load_s": loaded - imported,
        "train_s": train_s, "eval_s": eval_s, "startup_to_first_step_s": timer.first_step_at - START,
        "wall_s": time.perf_counter() - START,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
