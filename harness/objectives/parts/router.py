"""Automatic domain routing: a multinomial logistic regression on the base model's mean-pooled last
hidden state picks which domain adapter serves each input."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

__all__ = ["Router", "pooled_features", "train_router"]


def _base_view(model):
    """(backbone to call, context that disables adapters) for a plain or peft-wrapped model."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is optional for plain models
        PeftModel = ()
    if isinstance(model, PeftModel):
        base, context = model.get_base_model(), model.disable_adapter()
    else:
        base, context = model, contextlib.nullcontext()
    # the transformer body without the LM head: no [batch, seq, vocab] logits to compute and drop
    return getattr(base, "base_model", base), context


@contextlib.contextmanager
def _right_padding(tokenizer):
    """Right padding and a pad token (eos when missing) for the duration, restored after."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "right"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


def pooled_features(model, tokenizer, texts: list[str], batch_size: int, device: str,
                    max_length: int = 128) -> torch.Tensor:
    """Mean over non-padding tokens of the last hidden state of the *base* model, one row per text.

    A peft model is run with its adapters disabled, so every domain adapter is routed on the same
    features. The model's training mode and the tokenizer's padding settings are restored after.

    Args:
        texts: the inputs, each truncated to `max_length` tokens.
        batch_size: texts per forward pass.
        device: where the model lives ("cpu", "cuda").

    Returns:
        float32 tensor of shape [len(texts), hidden_size], on the CPU.

    Raises:
        ValueError: `batch_size` or `max_length` is not positive.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, but got batch_size={batch_size}")
    if max_length < 1:
        raise ValueError(f"max_length must be ≥ 1, but got max_length={max_length}")
    backbone, adapters_off = _base_view(model)
    rows = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), adapters_off, _right_padding(tokenizer):
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                                  truncation=True, max_length=max_length).to(device)
                out = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               output_hidden_states=True, use_cache=False)
                hidden = out.hidden_states[-1].float()
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                # clamp: an empty text has no tokens and pools to the zero vector rather than NaN
                rows.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).cpu())
    finally:
        model.train(was_training)
    if not rows:
        return torch.empty(0, model.config.hidden_size)
    return torch.cat(rows)


class Router:
    """Standardized features → linear layer → softmax over `domains` (multinomial logistic regression).

    Lives on the CPU: a few hundred pooled vectors train in well under a second there.
    """

    def __init__(self, domains: Sequence[str]):
        if len(domains) < 1 or len(set(domains)) != len(domains):
            raise ValueError(f"domains must be distinct and at least one, but got domains={list(domains)}")
        self.domains = list(domains)
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.linear: torch.nn.Linear | None = None
        #: accuracy on the prompts `train_router` fitted it on
        self.train_accuracy: float | None = None

    def fit(self, features: torch.Tensor, labels: Sequence[str], *, epochs: int = 100, lr: float = 1.0,
            weight_decay: float = 1e-3, seed: int = 0) -> Router:
        """Train on `features` [n, hidden] labelled with domain names; returns self.

        Full-batch L-BFGS on cross-entropy + `weight_decay`/2 · ‖W‖²: the problem is convex, so the
        result is deterministic for a seed and, with weight decay, barely depends on it.

        Args:
            epochs: L-BFGS iterations.
            lr: L-BFGS step size (the strong-Wolfe line search adapts it).
            seed: seeds the initial weights.

        Raises:
            ValueError: mismatched lengths, a label outside `domains`, or a bad hyperparameter.
        """
        x = self._check(features)
        if len(labels) != len(x):
            raise ValueError(f"labels must have one entry per feature row, but got {len(labels)} labels "
                             f"for {len(x)} rows")
        if len(x) == 0:
            raise ValueError("fit needs at least one feature row, but got none")
        unknown = sorted(set(labels) - set(self.domains))
        if unknown:
            raise ValueError(f"labels must be among domains {self.domains}, but got {unknown}")
        if epochs < 1:
            raise ValueError(f"epochs must be ≥ 1, but got epochs={epochs}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, but got lr={lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, but got weight_decay={weight_decay}")
        index = {d: i for i, d in enumerate(self.domains)}
        y = torch.tensor([index[label] for label in labels])
        self.mean = x.mean(0)
        # floor: a constant feature (e.g. a dead unit) would otherwise divide by zero
        self.std = x.std(0, correction=0).clamp(min=1e-6)
        z = (x - self.mean) / self.std
        generator = torch.Generator().manual_seed(seed)
        self.linear = torch.nn.Linear(x.shape[1], len(self.domains))
        with torch.no_grad():
            self.linear.weight.copy_(0.01 * torch.randn(self.linear.weight.shape, generator=generator))
            self.linear.bias.zero_()
        optimizer = torch.optim.LBFGS(self.linear.parameters(), lr=lr, max_iter=epochs,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.linear(z), y)
            loss = loss + 0.5 * weight_decay * self.linear.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        self.linear.requires_grad_(False)
        return self

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Unnormalized scores [n, len(domains)], columns in `domains` order."""
        if self.linear is None:
            raise RuntimeError("the router is not trained: call fit first")
        x = self._check(features)
        with torch.no_grad():
            return self.linear((x - self.mean) / self.std)

    def predict(self, features: torch.Tensor) -> list[str]:
        """The most likely domain name for each row."""
        return [self.domains[i] for i in self.logits(features).argmax(-1).tolist()]

    def accuracy(self, features: torch.Tensor, labels: Sequence[str]) -> float:
        """Fraction of rows whose predicted domain equals its label."""
        if len(labels) != len(features):
            raise ValueError(f"labels must have one entry per feature row, but got {len(labels)} labels "
                             f"for {len(features)} rows")
        if not len(labels):
            raise ValueError("accuracy needs at least one row, but got none")
        return sum(p == t for p, t in zip(self.predict(features), labels)) / len(labels)

    @staticmethod
    def _check(features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2:
            raise ValueError(f"features must be 2-D [n, hidden], but got shape={tuple(features.shape)}")
        return features.detach().float().cpu()


def train_router(model, tokenizer, prompts_by_domain: dict[str, list[str]], batch_size: int, device: str,
                 seed: int = 0, max_length: int = 128) -> Router:
    """Pool every domain's prompts with `pooled_features` and fit a `Router` on them.

    Raises:
        ValueError: no domains, or a domain without prompts.
    """
    if not prompts_by_domain:
        raise ValueError("prompts_by_domain must name at least one domain, but got none")
    empty = [d for d, prompts in prompts_by_domain.items() if not prompts]
    if empty:
        raise ValueError(f"every domain needs prompts, but got none for {empty}")
    texts = [p for prompts in prompts_by_domain.values() for p in prompts]
    labels = [d for d, prompts in prompts_by_domain.items() for _ in prompts]
    features = pooled_features(model, tokenizer, texts, batch_size, device, max_length=max_length)
    router = Router(list(prompts_by_domain)).fit(features, labels, seed=seed)
    router.train_accuracy = router.accuracy(features, labels)
    return router
