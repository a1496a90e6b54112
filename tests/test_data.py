"""harness.data: datasets, deterministic splits, nested subsets, encoding and packing."""

import json

import pytest

from harness.config import DataCfg, ModelCfg
from harness.data import DATASETS, DataError
from harness.data.base import split, train_subset
from harness.data.tokenize import IGNORE, encode, encode_all, make_collator, prompt_text


@pytest.fixture(scope="module")
def chatterbot():
    return DATASETS.get("chatterbot")().records(DataCfg())


@pytest.fixture(scope="module")
def tiny():
    from harness import models

    model, tokenizer = models.load(ModelCfg(name="tiny-smollm2"), "cpu")
    model.eval()
    return model, tokenizer


def test_chatterbot_records(chatterbot):
    assert len(chatterbot) > 2000
    assert all(r["prompt"] and r["response"] for r in chatterbot)
    assert {"prompt", "response", "topic"} <= set(chatterbot[0])
    assert len({r["topic"] for r in chatterbot}) > 10


def test_split_is_deterministic_and_disjoint_by_prompt(chatterbot):
    cfg = DataCfg(n_val=64, n_test=64)
    a, b = split(chatterbot, cfg), split(list(reversed(chatterbot)), cfg)
    assert [r["prompt"] for r in a.val] == [r["prompt"] for r in b.val]  # independent of record order
    assert len(a.val) == 64 and len(a.test) == 64
    val, test, pool = ({r["prompt"] for r in part} for part in (a.val, a.test, a.train_pool))
    assert not (val & test) and not (val & pool) and not (test & pool)
    # another split_seed gives another validation set
    other = split(chatterbot, DataCfg(n_val=64, n_test=64, split_seed=1))
    assert [r["prompt"] for r in other.val] != [r["prompt"] for r in a.val]


def test_validation_set_does_not_depend_on_n_train(chatterbot):
    a = split(chatterbot, DataCfg(n_train=32, n_val=16, n_test=0))
    b = split(chatterbot, DataCfg(n_train=1024, n_val=16, n_test=0))
    assert a.val == b.val and a.train_pool == b.train_pool


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nested_subsets(chatterbot, seed):
    pool = split(chatterbot, DataCfg(n_val=64, n_test=64)).train_pool
    small, large = train_subset(pool, 64, seed), train_subset(pool, 256, seed)
    assert len(small) == 64 and len(large) == 256
    assert large[:64] == small  # for one seed the 64 are the first 64 of the 256
    assert train_subset(pool, 64, seed) == small  # deterministic


def test_seeds_give_different_subsets(chatterbot):
    pool = split(chatterbot, DataCfg()).train_pool
    assert train_subset(pool, 64, 0) != train_subset(pool, 64, 1)
    assert len(train_subset(pool, None, 0)) == len(pool)


def test_n_train_larger_than_pool(chatterbot):
    with pytest.raises(DataError) as info:
        split(chatterbot, DataCfg(n_train=100000))
    assert info.value.field == "data.n_train"
    assert "larger than the training pool" in str(info.value)


def test_local_jsonl_with_field_mapping(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"q": f"question {i}", "a": f"answer {i}", "id": i}) + "\n" for i in range(20)))
    records = DATASETS.get("file")().records(DataCfg(name="file", path=str(path), prompt_field="q", response_field="a"))
    assert len(records) == 20
    assert records[3] == {"id": 3, "prompt": "question 3", "response": "answer 3"}


def test_local_csv(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("prompt,response\nhi,hello\nbye,goodbye\n")
    records = DATASETS.get("file")().records(DataCfg(name="file", path=str(path)))
    assert [(r["prompt"], r["response"]) for r in records] == [("hi", "hello"), ("bye", "goodbye")]


def test_local_file_errors(tmp_path):
    files = DATASETS.get("file")()
    with pytest.raises(DataError, match="does not exist") as info:
        files.records(DataCfg(name="file", path=str(tmp_path / "nope.jsonl")))
    assert info.value.field == "data.path"
    with pytest.raises(DataError, match="needs `path`"):
        files.records(DataCfg(name="file"))
    with pytest.raises(DataError, match="unsupported extension"):
        files.records(DataCfg(name="file", path=str(tmp_path / "x.txt")))
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"q": "x", "a": "y"}\n')
    with pytest.raises(DataError, match="has no field `prompt`") as info:
        files.records(DataCfg(name="file", path=str(bad)))
    assert info.value.field == "data.prompt_field"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "x", \n')
    with pytest.raises(DataError, match="could not read"):
        files.records(DataCfg(name="file", path=str(broken)))


def test_hub_dataset_offline_is_a_data_error():
    with pytest.raises(DataError) as info:
        DATASETS.get("hf")().records(DataCfg(name="hf", path="someorg/some-dataset-that-is-not-cached"))
    assert info.value.field == "data.path"


def test_encode_labels_only_the_response(tiny):
    _, tok = tiny
    cfg = DataCfg()
    rec = {"prompt": "What is two plus two?", "response": "Four."}
    enc = encode(tok, rec, cfg, seq_len=256)
    prompt_len = len(tok(prompt_text(tok, rec["prompt"], cfg), add_special_tokens=False)["input_ids"])
    assert len(enc["input_ids"]) == len(enc["labels"])
    assert enc["labels"][:prompt_len] == [IGNORE] * prompt_len
    answer = [t for t in enc["labels"] if t != IGNORE]
    assert answer == enc["input_ids"][prompt_len:]
    assert "Four." in tok.decode(answer)


def test_encode_truncation(tiny):
    _, tok = tiny
    rec = {"prompt": "word " * 200, "response": "answer"}
    assert encode(tok, rec, DataCfg(), seq_len=32) is None  # the response is truncated away entirely
    enc = encode(tok, {"prompt": "hi", "response": "long answer " * 100}, DataCfg(), seq_len=32)
    assert len(enc["input_ids"]) == 32


def test_plain_template(tiny):
    _, tok = tiny
    text = prompt_text(tok, "Why?", DataCfg(template="plain", system_prompt="Be brief."))
    assert text == "Be brief.\n\n### Question:\nWhy?\n\n### Answer:\n"


def _summed_loss(model, examples, collator):
    from harness.evaluate import token_loss

    mean, count = token_loss(model, examples, collator, batch_size=len(examples), device="cpu")
    return mean * count, count


def test_packing_loss_equals_padded_loss(tiny, chatterbot):
    """A packed micro-batch must give each example exactly the loss it gets alone (padded): no
    attention across the packed examples. The tiny random model is barely context-sensitive, so
    the tolerance is tight and a negative control checks that contamination would show."""
    import torch

    model, tok = tiny
    cfg = DataCfg(n_val=8, n_test=0)
    examples = encode_all(tok, train_subset(split(chatterbot, cfg).train_pool, 8, 0), cfg, 64)
    assert len(examples) == 8
    packed_collator, padded_collator = make_collator(tok, packing=True), make_collator(tok, packing=False)
    batch = packed_collator(examples)
    assert batch["input_ids"].shape[0] == 1  # one row, no padding
    assert batch["input_ids"].shape[1] == sum(len(e["input_ids"]) for e in examples)
    assert "attention_mask" not in batch
    assert padded_collator(examples)["input_ids"].shape[0] == 8

    packed, n_packed = _summed_loss(model, examples, packed_collator)
    padded, n_padded = _summed_loss(model, examples, padded_collator)
    assert n_packed == n_padded  # the same response tokens are scored (minus each example's first)
    assert packed == pytest.approx(padded, rel=1e-3)
    assert abs(packed - padded) / abs(padded) < 1e-5

    # negative control: one long sequence (positions not restarting) attends across examples
    def contaminated(batch_examples):
        b = packed_collator(batch_examples)
        b["position_ids"] = torch.arange(b["input_ids"].shape[1])[None]
        return b

    leaked, _ = _summed_loss(model, examples, contaminated)
    assert abs(leaked - padded) / abs(padded) > 1e-5
