"""A reward model — the run's language model with a scalar head — and what the `reward` objective and the
RL objectives (`grpo`, `rloo`) do with one: build it, train its head with the method, score texts and
pairs, and load a finished `reward` run, frozen.

The head is `AutoModelForSequenceClassification` with one label on the language model's own backbone (the
causal LM's transformer, shared, not copied; a 4-bit backbone stays 4-bit); it reads the hidden state of
the last token that is not padding. The pairwise loss is Bradley–Terry's, −log σ(r_chosen − r_rejected).
"""

from __future__ import annotations

from harness.data.tokenize import prompt_text
from harness.objectives.parts.preference import completion_text

#: the head's module name in transformers' sequence-classification models
HEAD = "score"


def as_reward_model(lm, tokenizer):
    """A one-label sequence-classification model on `lm`'s backbone (shared) with a fresh head.

    Args:
        lm: a causal LM as `harness.models.load` returns it (any dtype, 4-bit included).
        tokenizer: its tokenizer; its pad token becomes the model's (where the reward is read).
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    config = lm.config
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    with torch.device("meta"):  # the backbone is lm's: build nothing twice
        model = AutoModelForSequenceClassification.from_config(config)
    prefix = model.base_model_prefix
    setattr(model, prefix, getattr(lm, lm.base_model_prefix))
    dtype = next(p for p in lm.parameters() if p.is_floating_point()).dtype
    device = next(lm.parameters()).device
    head = torch.nn.Linear(config.hidden_size, 1, bias=False, dtype=dtype if dtype.is_floating_point else None,
                           device=device)
    torch.nn.init.normal_(head.weight, std=getattr(config, "initializer_range", 0.02))
    setattr(model, HEAD, head)
    model.scalar_head = HEAD  # read by peft methods: task type SEQ_CLS, the head in `modules_to_save`
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "quantization_method", "hf_quantizer", "is_quantized"):
        if attr in vars(lm):
            setattr(model, attr, getattr(lm, attr))
    model.config.architectures = [type(model).__name__]
    return model


def train_head(model) -> None:
    """Make the scalar head trainable where the method left it frozen (freeze; a peft method already trains
    and saves it: peft's `modules_to_save`, task type SEQ_CLS, see `harness.methods.peft_base`)."""
    if hasattr(model, "peft_config"):
        return
    for param in getattr(model, HEAD).parameters():
        param.requires_grad_(True)


def pair_rows(tokenizer, records: list[dict], data_cfg, seq_len: int) -> list[dict]:
    """(chosen_ids, rejected_ids) token ids — prompt and answer as the policy writes them — of the pairs whose
    both sides fit in `seq_len` (TRL RewardTrainer's pre-tokenized form)."""
    rows = []
    for rec in records:
        head = prompt_text(tokenizer, rec["prompt"], data_cfg)
        ids = [tokenizer(head + completion_text(tokenizer, rec["prompt"], rec[side], data_cfg),
                         add_special_tokens=False)["input_ids"] for side in ("response", "rejected")]
        if all(len(x) <= seq_len for x in ids):
            rows.append({"chosen_ids": ids[0], "rejected_ids": ids[1]})
    return rows


def pairwise_loss(r_chosen, r_rejected):
    """Bradley–Terry's −log σ(r_chosen − r_rejected), averaged over the pairs (TRL RewardTrainer's loss)."""
    import torch.nn.functional as F

    return -F.logsigmoid(r_chosen - r_rejected).mean()


def score_ids(model, sequences: list[list[int]], pad_id: int, batch_size: int, device: str):
    """The scalar reward of each token sequence (right-padded, read at its last real token), as a float
    tensor."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(sequences), batch_size):
            chunk = sequences[i:i + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(chunk):
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            out.append(logits[:, 0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def score_pairs(model, rows: list[dict], pad_id: int, batch_size: int, device: str):
    """(r_chosen, r_rejected) of `pair_rows` rows."""
    return (score_ids(model, [r["chosen_ids"] for r in rows], pad_id, batch_size, device),
            score_ids(model, [r["rejected_ids"] for r in rows], pad_id, batch_size, device))


def pair_figures(r_chosen, r_rejected, suffix: str = "") -> dict:
    """reward_accuracy (a tie is not a win), reward_margin and reward_pairs, keys with `suffix`."""
    n = len(r_chosen)
    if not n:
        return {f"reward_accuracy{suffix}": None, f"reward_margin{suffix}": None}
    return {f"reward_accuracy{suffix}": (r_chosen > r_rejected).float().mean().item(),
            f"reward_margin{suffix}": (r_chosen - r_rejected).mean().item()}


class RewardScorer:
    """A frozen reward model as TRL's reward function: `scorer(prompts, completions) -> [float]`, each prompt
    and completion scored as one text in the reward model's own tokenizer."""

    __name__ = "reward_model"

    def __init__(self, model, tokenizer, device: str, batch_size: int = 8):
        self.model, self.tokenizer, self.device, self.batch_size = model.eval(), tokenizer, device, batch_size
        for param in model.parameters():
            param.requires_grad_(False)

    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        ids = [self.tokenizer(p + c, add_special_tokens=False)["input_ids"] for p, c in zip(prompts, completions)]
        return score_ids(self.model, ids, self.tokenizer.pad_token_id, self.batch_size, self.device).tolist()


def load_reward_run(refs, ref: str, device: str):
    """(model, tokenizer) of a finished `reward` run: its base (or the run it started from) with the scalar
    head and the trained weights, frozen.

    Raises:
        ValueError: the run is missing, unfinished, not a `reward` run, or kept no weights.
    """
    from transformers import AutoModelForSequenceClassification

    from harness import models
    from harness.context import RunContext
    from harness.methods.base import TRAINED_WEIGHTS, copy_saved

    result, directory, config, why = refs.finished(ref)
    if result is None:
        raise ValueError(why)
    if config.objective.name != "reward":
        raise ValueError(f"run `{ref}` is a `{config.objective.name}` run, not a `reward` run")
    method = config.method.build()
    artifact = directory / "adapter"
    base_cfg, why = type(refs)(refs.root, result["experiment"], refs.pinned).base_model_cfg(config)  # a RunRefs
    if base_cfg is None:
        raise ValueError(f"run `{ref}` cannot be rebuilt: {why}")
    if method.saves_full_model:  # the whole reward model, head included
        dtype = models.pick_dtype(config.model.dtype, device)
        model = AutoModelForSequenceClassification.from_pretrained(artifact, dtype=dtype).to(device)
        tokenizer = _tokenizer(base_cfg)
    else:
        lm, tokenizer = models.load(base_cfg, device)
        ctx = RunContext(spec=config, run_dir=directory, device=device, total_steps=1, refs=refs)
        if (artifact / TRAINED_WEIGHTS).is_file():  # freeze: its trained parameters by name, the head among them
            model = method.apply(as_reward_model(lm, tokenizer), ctx)
            train_head(model)
            copy_saved({n: p for n, p in model.named_parameters() if p.requires_grad}, artifact / TRAINED_WEIGHTS)
        else:  # a peft adapter with the head in its modules_to_save
            model = method.load(as_reward_model(lm, tokenizer), artifact, ctx)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, tokenizer


def _tokenizer(model_cfg):
    from transformers import AutoTokenizer

    from harness import models

    return AutoTokenizer.from_pretrained(models.resolve(model_cfg.name), trust_remote_code=model_cfg.trust_remote_code,
                                         revision=model_cfg.revision)
