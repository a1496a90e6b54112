"""Distillation building blocks (issue 8): each loss on hand-made tensors against torch's own
definitions, the top-k teacher cache's approximation, the weight schedule, and the depth-pruned
student built from the tiny model's layers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.objectives.parts.distill_losses import (distill_weight, feature_mse, pooled, projection_layers, relation_loss,
                                               response_kl, response_kl_topk, teacher_topk)
from harness.objectives.parts.student import decoder_layers, depth_pruned_copy, keep_layers


def logits(seed: int, shape=(2, 5, 11)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


MASK = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_response_kl_is_torch_kl_div_over_masked_tokens_times_t_squared(temperature):
    student, teacher = logits(0), logits(1)
    keep = MASK.bool()
    expected = F.kl_div(F.log_softmax(student[keep] / temperature, -1), F.log_softmax(teacher[keep] / temperature, -1),
                        log_target=True, reduction="batchmean") * temperature ** 2
    assert response_kl(student, teacher, MASK, temperature).item() == pytest.approx(expected.item(), rel=1e-5)
    assert response_kl(teacher, teacher, MASK, temperature).item() == pytest.approx(0.0, abs=1e-6)
    # masked tokens do not count: changing them changes nothing
    moved = student.clone()
    moved[0, 3:] += 100
    assert response_kl(moved, teacher, MASK, temperature).item() == pytest.approx(expected.item(), rel=1e-5)


def test_top_k_cache_matches_full_kl_at_full_k_and_approaches_it_as_k_grows():
    student, teacher = logits(2), logits(3)
    full = response_kl(student, teacher, MASK, 2.0).item()
    values, ids = teacher_topk(teacher, k=11, temperature=2.0)
    assert ids.shape == (2, 5, 11)
    assert response_kl_topk(student, values, ids, MASK, 2.0).item() == pytest.approx(full, rel=1e-4)
    approx = [response_kl_topk(student, *teacher_topk(teacher, k, 2.0), MASK, 2.0).item() for k in (2, 5, 8, 11)]
    # the coarsened KL is a lower bound (data processing inequality) that tightens as k grows
    assert all(a <= full + 1e-6 for a in approx) and approx == sorted(approx)
    # a student equal to the teacher has no KL at any k
    assert response_kl_topk(teacher, *teacher_topk(teacher, 3, 2.0), MASK, 2.0).item() == pytest.approx(0, abs=1e-5)


def test_feature_mse_with_and_without_projection():
    torch.manual_seed(0)
    teacher_hidden = [torch.randn(2, 5, 8) for _ in range(4)]
    # a 3-layer student mapped onto a 4-layer teacher: its layer 2 learns the teacher's layer 3
    student_hidden = [teacher_hidden[0] + 0.5, teacher_hidden[1] + 0.5, teacher_hidden[3] + 0.5]
    # same width: each pair's masked MSE is 0.25 (every element off by 0.5)
    assert feature_mse(student_hidden, teacher_hidden, [(1, 1), (2, 3)], MASK).item() == pytest.approx(0.25)
    assert feature_mse(teacher_hidden, teacher_hidden, [(1, 1), (3, 3)], MASK).item() == 0.0
    assert feature_mse(student_hidden, teacher_hidden, [(2, 2)], MASK).item() > 1.0  # the wrong layer
    # relative: each pair's MSE over its teacher layer's mean square — the same at any scale
    scaled_s, scaled_t = [100 * h for h in student_hidden], [100 * h for h in teacher_hidden]
    rel = feature_mse(student_hidden, teacher_hidden, [(1, 1)], MASK, relative=True).item()
    keep = MASK.bool()
    assert rel == pytest.approx(0.25 / teacher_hidden[1][keep].pow(2).mean().item(), rel=1e-5)
    assert feature_mse(scaled_s, scaled_t, [(1, 1)], MASK, relative=True).item() == pytest.approx(rel, rel=1e-5)
    # narrower student: a learned projection per pair; an identity-like one recovers the teacher exactly
    narrow = [h[..., :4] for h in teacher_hidden]
    projections = projection_layers(4, 8, n=1)
    with torch.no_grad():
        projections[0].weight.zero_()
        projections[0].weight[:4, :4] = torch.eye(4)
    target = [torch.cat([h[..., :4], torch.zeros(2, 5, 4)], -1) for h in teacher_hidden]
    assert feature_mse(narrow, target, [(2, 2)], MASK, projections).item() == pytest.approx(0.0, abs=1e-7)
    assert projection_layers(8, 8, n=2) is None


def test_relation_loss_is_zero_for_the_same_relations_and_positive_otherwise():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 8)
    mask = torch.ones(3, 5)
    teacher = pooled(hidden, mask)
    assert relation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    # scaled or rotated students relate the examples the same way, even at another width
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    assert relation_loss(3 * teacher @ rotation, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert relation_loss(torch.cat([teacher, teacher], -1), teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert relation_loss(torch.randn(3, 8), teacher).item() > 1e-3
    # pooled: the mean over each sequence's masked tokens only
    assert torch.allclose(pooled(hidden, MASK[:1].expand(3, 5).float())[0], hidden[0, :3].mean(0))


def test_distill_weight_schedules():
    assert [distill_weight(s, 5, 0.8) for s in range(5)] == [0.8] * 5
    assert [distill_weight(s, 5, 0.8, "linear") for s in range(5)] == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])
    with pytest.raises(ValueError, match="constant or linear"):
        distill_weight(0, 5, 0.8, "cosine")


# --- the depth-pruned student ----------------------------------------------------------------------

def test_keep_layers_resolves_shorthands_and_refuses_bad_indices():
    assert keep_layers("every_2nd", 30) == list(range(0, 30, 2))
    assert keep_layers("every_3rd", 7) == [0, 3, 6]
    assert keep_layers([0, 5, 29], 30) == [0, 5, 29]
    for bad, needle in ((["x"], "indices must be in [0, 29]"), ([30], "(the teacher has 30 layers)"),
                        ([1, 1], "repeats"), ([], "at least one"), ("every_5th", "every_2nd")):
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            keep_layers(bad, 30)


def test_a_depth_pruned_student_holds_the_chosen_teacher_layers_and_generates():
    from harness import models
    from harness.config import ModelCfg

    teacher, tok = models.load(ModelCfg(name="tiny-smollm2"), "cpu")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = depth_pruned_copy(teacher, [1])
    assert len(decoder_layers(student)) == 1 and student.config.num_hidden_layers == 1
    assert len(decoder_layers(teacher)) == 2 and teacher.config.num_hidden_layers == 2  # untouched
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for name, value in student_state.items():
        source = name.replace("layers.0.", "layers.1.")  # student layer 0 is teacher layer 1
        assert torch.equal(value, teacher_state[source]), name
    assert all(torch.equal(before[k], v) for k, v in teacher_state.items())
    student_params = sum(p.numel() for p in student.parameters())
    layer_params = sum(p.numel() for p in decoder_layers(teacher)[0].parameters())
    assert student_params == sum(p.numel() for p in teacher.parameters()) - layer_params
    assert student.get_decoder().layers[0].self_attn.layer_idx == 0
    enc = tok(["Hello there"], return_tensors="pt")
    with torch.no_grad():
        out = student.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        loss = student(**enc, labels=enc["input_ids"]).loss
    assert out.shape[1] == enc["input_ids"].shape[1] + 3 and math.isfinite(loss.item())


# --- the `distill` objective ------------------------------------------------------------------------

def test_packed_rows_pool_each_example_apart():
    from harness.objectives.parts.distillation import pooled_examples, segments

    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])  # three examples packed in one row
    seg = segments({"position_ids": positions, "input_ids": positions}, positions.shape)
    assert seg.tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2]]
    hidden = torch.arange(9, dtype=torch.float).view(1, 9, 1)
    mask = torch.tensor([[0, 1, 1, 1, 1, 0, 0, 1, 1]])
    assert pooled_examples(hidden, mask, seg).flatten().tolist() == [1.5, 3.5, 7.5]
    padded = segments({"input_ids": torch.zeros(2, 3)}, torch.Size([2, 3]))
    assert padded.tolist() == [[0, 0, 0], [1, 1, 1]]


def test_sft_runs_keep_their_spec_and_run_id():
    from harness.config import build_run_config
    from harness.grid import spec_hash

    plain = build_run_config({"model": "tiny-smollm2", "method": "lora"}, file="t")
    explicit = build_run_config({"model": "tiny-smollm2", "method": "lora", "objective": "sft"}, file="t")
    assert "objective" not in plain.as_dict() and spec_hash(plain) == spec_hash(explicit)
    distill = build_run_config({"model": "tiny-smollm2", "method": "lora",
                                "objective": {"name": "distill", "teacher": "tiny-smollm2"}}, file="t")
    assert distill.as_dict()["objective"]["teacher"] == "tiny-smollm2" and spec_hash(distill) != spec_hash(plain)


@pytest.mark.parametrize("objective, field, needle", [
    ({"name": "distill"}, "objective", "needs a `teacher`"),
    ({"name": "sft", "temperature": 3}, "objective", "applies to objective `distill`"),
    ({"name": "distill", "teacher": "tiny-smollm2", "losses": {"kl": -1}}, "objective.losses.kl", "greater than or equal to 0"),
    ({"name": "distill", "teacher": "tiny-smollm2", "student": {"keep_layers": [0, 7]}},
     "objective.student.keep_layers", "(the teacher has 2 layers)"),
    ({"name": "distill", "teacher": "tiny-smollm2", "student": {"keep_layers": [1]}, "losses": {"feature": 1},
      "feature_layers": [[1, 9]]}, "objective.feature_layers", "out of range"),
    ({"name": "distill", "teacher": "smollm-135m"}, "objective.teacher", "Did you mean `smollm2-135m`?"),
    ({"name": "distil", "teacher": "tiny-smollm2"}, "objective.name", "distill"),
])
def test_bad_objectives_are_one_clear_message_before_any_run(tmp_path, objective, field, needle):
    from conftest import run_cli, tiny_base, write_experiment

    path = write_experiment(tmp_path, "badkd", base=tiny_base(method="full", objective=objective), grid={})
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2 and "Traceback" not in res.err, res.err
    assert field in res.err and needle in res.err, res.err
    assert not (tmp_path / "results").exists()


def test_a_distill_run_moves_the_student_toward_its_teacher(tmp_path):
    """Half-depth student of the tiny model, packed batches, all three distillation losses."""
    from conftest import read_result, run_cli, run_dirs, tiny_base, write_experiment

    objective = {"name": "distill", "teacher": "tiny-smollm2", "student": {"keep_layers": [1]}, "temperature": 2.0,
                 "losses": {"ce": 0.0, "kl": 1.0, "feature": 1.0, "relation": 1.0}}
    path = write_experiment(tmp_path, "kd", grid={}, base=tiny_base(
        method="full", objective=objective, train={"max_steps": 12, "micro_batch": 4, "lr": 3.0e-3, "seq_len": 64}))
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 0, res.out + res.err
    (directory,) = run_dirs(tmp_path / "results", "kd")
    result = read_result(directory)
    assert result["slug"].startswith("distill-keep1-kl+feat+rel-full-")
    m = result["metrics"]
    assert m["distill_kl"] < 0.8 * m["distill_kl_before"], (m["distill_kl_before"], m["distill_kl"])
    assert m["teacher_params"] > m["student_params"] == m["total_params"]
    layer = (m["teacher_params"] - m["student_params"])
    assert m["compression_ratio"] == pytest.approx(m["teacher_params"] / m["student_params"]) and layer > 0
    assert m["quality_retention_pct"] == pytest.approx(100 * m["teacher_eval_ppl"] / m["eval_ppl"])
    assert math.isfinite(m["train_loss"])


def test_a_teacher_run_that_is_not_in_the_store_is_refused(tmp_path):
    """`teacher: run:<id>` must name a finished `ok` run with weights (the stages test loads real ones)."""
    from conftest import run_cli, tiny_base, write_experiment

    objective = {"name": "distill", "teacher": "run:lora-nope-s0-deadbeef", "student": {"keep_layers": [0]}}
    path = write_experiment(tmp_path, "orphan", grid={}, base=tiny_base(method="full", objective=objective))
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 2 and "objective.teacher" in res.err and str(path) in res.err
    assert "no finished run `lora-nope-s0-deadbeef`" in res.err and "nor a run of this grid" in res.err


def test_stages_in_one_grid_run_teacher_first_and_chain_through_the_store(tmp_path):
    """SFT teacher → distilled student (full, weights kept) → a student of that student, in one grid
    with two workers: each stage waits for its teacher's record."""
    from conftest import expand_file, read_result, run_cli, tiny_base, write_experiment

    stage = lambda teacher, keep: {"method": "full", "train.save_weights": "all",  # noqa: E731
                                   "objective": {"name": "distill", "teacher": f"run:{teacher}",
                                                 "student": {"keep_layers": keep}}}
    grid = {"stage": [stage("lora-r4-a8-n16-s0", [0, 1]), {"method": "lora"},
                      stage("distill-keep2-kl-full-n16-save_weightsall-s0", [0])]}
    path = write_experiment(tmp_path, "stages", base=tiny_base(), grid=grid)
    specs = expand_file(path)
    slugs = [s.slug for s in specs]
    assert "lora-r4-a8-n16-s0" in slugs, slugs
    results = tmp_path / "results"
    res = run_cli("run", str(path), "--results", str(results), "--workers", "2")
    assert res.code == 0, res.out + res.err
    records = {s.slug: read_result(results / "stages" / s.run_id) for s in specs}
    sft, mid, small = (records[k] for k in ("lora-r4-a8-n16-s0", "distill-keep2-kl-full-n16-save_weightsall-s0",
                                            "distill-keep1-kl-full-n16-save_weightsall-s0"))
    assert all(r["status"] == "ok" for r in records.values()), {k: r["error"] for k, r in records.items()}
    assert sft["finished_at"] <= mid["started_at"] and mid["finished_at"] <= small["started_at"]
    # each student was scored against the stage before it: the teacher figures are that run's own
    assert mid["metrics"]["teacher_eval_loss"] == pytest.approx(sft["metrics"]["eval_loss"], rel=1e-4)
    assert small["metrics"]["teacher_eval_loss"] == pytest.approx(mid["metrics"]["eval_loss"], rel=1e-4)
    assert small["metrics"]["teacher_params"] == mid["metrics"]["total_params"] > small["metrics"]["student_params"]


def test_an_ensemble_softens_to_the_weighted_mixture_of_its_members():
    from harness import models
    from harness.config import ModelCfg
    from harness.objectives.parts.distillation import TeacherEnsemble, freeze, softened

    a, _ = models.load(ModelCfg(name="tiny-smollm2"), "cpu")
    b, _ = models.load(ModelCfg(name="tiny-smollm2"), "cpu")
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    ensemble = TeacherEnsemble([freeze(a), freeze(b)], [1.0, 3.0])
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad(), softened(ensemble, 2.0):
        mixed = ensemble(input_ids=ids).logits
        za, zb = a(input_ids=ids).logits, b(input_ids=ids).logits
    expected = 0.25 * F.softmax(za / 2, -1) + 0.75 * F.softmax(zb / 2, -1)
    assert torch.allclose(F.softmax(mixed / 2, -1), expected, atol=1e-6)
    assert ensemble.temperature == 1.0  # back to T = 1 for eval loss and KL figures
    from harness.measure import count_params

    assert count_params(ensemble)[1] == 2 * count_params(a)[1]


def test_the_teacher_cache_gives_the_on_the_fly_kl_at_full_k(tmp_path, monkeypatch):
    """Examples cached one by one, looked up from a packed batch in another order, give the KL the
    teacher computes on the fly (k = vocabulary: no approximation; smaller k is the top-k test above).
    The tiny random model's near-uniform distributions would make any smaller k a meaningless case."""
    k, tolerance = 49152, 1e-4
    from harness import models
    from harness.config import DataCfg, ModelCfg
    from harness.data import DATASETS
    from harness.data.tokenize import encode_all, make_collator
    from harness.objectives.parts import teacher_cache

    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "cache"))
    teacher, tokenizer = models.load(ModelCfg(name="tiny-smollm2"), "cpu")
    student, _ = models.load(ModelCfg(name="tiny-smollm2"), "cpu")
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    examples = encode_all(tokenizer, DATASETS.get("chatterbot")().records(DataCfg())[:6], DataCfg(), 64)
    cache, seconds = teacher_cache.load_or_build(teacher, [["tiny", 1.0]], examples, make_collator(tokenizer, False),
                                                 "cpu", 2.0, k)
    again, seconds_again = teacher_cache.load_or_build(teacher, [["tiny", 1.0]], examples,
                                                       make_collator(tokenizer, False), "cpu", 2.0, k)
    assert seconds_again < seconds and len(list((tmp_path / "cache").glob("teacher-topk-*"))) == 1
    batch = make_collator(tokenizer, True)([examples[i] for i in (4, 1, 3)])
    labels = batch.pop("labels")
    mask = labels[:, 1:] != -100
    with torch.no_grad():
        s_logits = student(**batch).logits[:, :-1]
        full = response_kl(s_logits, teacher(**batch).logits[:, :-1], mask, 2.0).item()
        values, ids = again.lookup(batch, labels)
        cached = response_kl_topk(s_logits[mask][None], values[None], ids[None], torch.ones(1, len(values)), 2.0).item()
    assert len(values) == int(mask.sum())
    assert cached == pytest.approx(full, rel=tolerance)


def test_an_ensemble_with_a_cached_teacher_runs_and_says_what_the_cache_cost(tmp_path):
    from conftest import read_result, run_cli, run_dirs, tiny_base, write_experiment

    objective = {"name": "distill", "teachers": [{"model": "tiny-smollm2"}, {"model": "tiny-smollm2", "weight": 2}],
                 "cache_teacher": True, "losses": {"ce": 0.5, "kl": 1.0}}
    path = write_experiment(tmp_path, "ens", grid={}, base=tiny_base(method="full", objective=objective))
    res = run_cli("run", str(path), "--results", str(tmp_path / "results"))
    assert res.code == 0, res.out + res.err
    (directory,) = run_dirs(tmp_path / "results", "ens")
    result = read_result(directory)
    assert result["status"] == "ok", result["error"]
    assert result["slug"].startswith("distill-ens2-kl-cached-full-")
    m = result["metrics"]
    assert m["teacher_cache_s"] > 0 and m["teacher_params"] == 2 * m["student_params"]
    assert math.isfinite(m["distill_kl"]) and m["compression_ratio"] == pytest.approx(2.0)


def test_task_retention_is_student_over_teacher_inverted_for_perplexity():
    from harness.objectives.distill import comparison, teacher_task_scores

    teacher = teacher_task_scores({"task.chatterbot_mc.acc": 0.8, "task.chatterbot_mc.acc_norm": 0.7,
                                   "task.general_ppl.word_perplexity": 20.0}, ["chatterbot_mc", "general_ppl"])
    assert teacher == {"teacher_task.chatterbot_mc.acc": 0.8, "teacher_task.general_ppl.word_perplexity": 20.0}
    metrics = {**teacher, "task.chatterbot_mc.acc": 0.6, "task.general_ppl.word_perplexity": 40.0,
               "teacher_eval_ppl": 8.0, "eval_ppl": 10.0}
    out = comparison(metrics)
    assert out["quality_retention_task_pct"] == pytest.approx(100 * (0.6 / 0.8 + 20 / 40) / 2)
    assert out["quality_retention_pct"] == pytest.approx(80.0)


def test_task_retention_removes_chance_from_a_multiple_choice_accuracy():
    """A student at chance (25% on 4-way choice) retains nothing of a teacher at 75%; halfway, half."""
    from harness.objectives.distill import comparison

    teacher = {"teacher_task.chatterbot_mc.acc": 0.75, "task.chatterbot_mc.chance": 0.25}
    assert comparison({**teacher, "task.chatterbot_mc.acc": 0.25})["quality_retention_task_pct"] == pytest.approx(0)
    assert comparison({**teacher, "task.chatterbot_mc.acc": 0.5})["quality_retention_task_pct"] == pytest.approx(50)
    at_chance = {"teacher_task.chatterbot_mc.acc": 0.25, "task.chatterbot_mc.chance": 0.25,
                 "task.chatterbot_mc.acc": 0.5}
    assert "quality_retention_task_pct" not in comparison(at_chance)  # a teacher at chance has nothing to retain
