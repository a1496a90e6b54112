"""Prompt formatting (chat template or plain), response-only labels, and batch collation."""

from __future__ import annotations

IGNORE = -100
PLAIN_PROMPT = "### Question:\n{prompt}\n\n### Answer:\n"


def use_chat(tokenizer, template: str) -> bool:
    """Whether to format with the tokenizer's chat template (`auto`: when it has one)."""
    if template == "plain":
        return False
    has = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has:
        raise ValueError("data.template is `chat` but the tokenizer has no chat template; use `plain` or `auto`")
    return has


def prompt_text(tokenizer, prompt: str, cfg) -> str:
    """The text the model sees before it must answer (used for training and generation)."""
    if use_chat(tokenizer, cfg.template):
        messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else [])
        messages.append({"role": "user", "content": prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    head = f"{cfg.system_prompt}\n\n" if cfg.system_prompt else ""
    return head + PLAIN_PROMPT.format(prompt=prompt)


def answer_text(tokenizer, prompt: str, response: str, cfg) -> str:
    """What follows `prompt_text`: the chat template's assistant turn, or the response and EOS."""
    if not use_chat(tokenizer, cfg.template):
        return response + (tokenizer.eos_token or "")
    head = prompt_text(tokenizer, prompt, cfg)
    messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else [])
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(head):
        raise ValueError("the chat template does not render the prompt as a prefix of the full conversation")
    return full[len(head):]


def encode(tokenizer, record: dict, cfg, seq_len: int) -> dict | None:
    """Token ids with labels on the response only; None when truncation leaves no response token."""
    prompt = prompt_text(tokenizer, record["prompt"], cfg)
    answer = answer_text(tokenizer, record["prompt"], record["response"], cfg)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + answer_ids)[:seq_len]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:seq_len]
    if all(label == IGNORE for label in labels[1:]):
        return None
    return {"input_ids": ids, "labels": labels}


def encode_all(tokenizer, records: list[dict], cfg, seq_len: int) -> list[dict]:
    """Encode every record, dropping those whose response is truncated away entirely."""
    return [e for e in (encode(tokenizer, r, cfg, seq_len) for r in records) if e is not None]


def make_collator(tokenizer, packing: bool):
    """Packing: the micro-batch becomes one row without padding, position ids restart per example,
    and transformers keeps attention inside each example. Otherwise: pad to the longest."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if packing:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE, return_tensors="pt")
