"""The `distill` objective: a frozen teacher, a student (any model, or a depth-pruned copy of the
teacher) trained with CE plus the weighted distillation losses, and the figures that compare them."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from harness import models
from harness.objectives.base import RUN_REF, Objective, ObjectiveOptions, register
from harness.schema import Section

class LossWeights(Section):
    """Weights of the distillation losses; each ≥ 0, combinable."""

    ce: float = Field(1.0, ge=0, description="cross-entropy on the labels (the SFT loss)")
    kl: float = Field(1.0, ge=0, description="response-based: KL to the teacher's softened tokens, × T²")
    feature: float = Field(0.0, ge=0, description="feature-based: MSE between mapped hidden layers")
    relation: float = Field(0.0, ge=0, description="relation-based: in-batch similarity matrices")


class StudentCfg(Section):
    """A student built from the teacher: its layers `keep_layers` (every_2nd | every_3rd | every_4th | [i, …])."""

    keep_layers: str | list[int] = "every_2nd"


class TeacherCfg(Section):
    """One teacher of an ensemble: a model or `run:<id>`, and its weight in the mixture."""

    model: str
    weight: float = Field(1.0, gt=0)


class DistillOptions(ObjectiveOptions):
    """Teacher → student: the student learns the labels and the teacher's outputs."""

    name: Literal["distill"] = "distill"
    teacher: str | None = Field(None, description="a model (alias, folder or hub id), or `run:<run id>`, the "
                                                  "fine-tuned weights of a finished run of the store")
    teachers: list[TeacherCfg] | None = Field(None, description="an ensemble instead of one `teacher`: their "
                                                               "softened distributions mixed by weight")
    student: StudentCfg | None = Field(None, description="a depth-pruned copy of the teacher (of an ensemble's "
                                                         "first); None: the run's `model` is the student")
    temperature: float = Field(2.0, gt=0, description="softening of both distributions (KL × T²)")
    losses: LossWeights = LossWeights()
    feature_layers: Literal["auto"] | list[tuple[int, int]] = Field(
        "auto", description="(student layer, teacher layer) pairs of hidden states (0: embeddings); auto: each "
                            "student layer to the teacher layer at the same relative depth")
    schedule: Literal["constant", "linear"] = Field("constant", description="weight of the distillation losses "
                                                                            "over training (linear: to 0)")
    cache_teacher: bool = Field(False, description="compute the teacher's top-k logits once per (teacher, data) "
                                                   "and reuse them from disk")
    cache_top_k: int = Field(64, gt=0, le=4096, description="logits kept per token in the cache")

    late: ClassVar[dict] = {"teachers": None, "cache_teacher": False, "cache_top_k": 64}

    @model_validator(mode="after")
    def _one_teacher_or_an_ensemble(self):
        if (self.teacher is None) == (self.teachers is None):
            raise ValueError("objective `distill` needs a `teacher` (a model alias, folder, hub id or run:<id>) "
                             "or `teachers` (a list of {model, weight}), not both")
        if self.teachers is not None and not self.teachers:
            raise ValueError("`teachers` must name at least one teacher")
        hidden = [name for name in ("feature", "relation") if getattr(self.losses, name) > 0]
        if hidden and self.teachers is not None:
            raise ValueError(f"an ensemble teaches through its mixed token distribution: `losses.{hidden[0]}` "
                             "needs one `teacher`'s hidden states")
        if hidden and self.cache_teacher:
            raise ValueError(f"`cache_teacher` keeps the teacher's top-k logits, not its hidden states: "
                             f"`losses.{hidden[0]}` needs the teacher on the fly (cache_teacher: false)")
        return self

    def teacher_list(self) -> list[TeacherCfg]:
        """The teachers as one list (a single `teacher` has weight 1)."""
        return list(self.teachers) if self.teachers is not None else [TeacherCfg(model=self.teacher)]

    def run_refs(self) -> list[tuple[str, str]]:
        refs = [("teacher" if self.teachers is None else f"teachers[{i}].model", t.model)
                for i, t in enumerate(self.teacher_list())]
        return [(field, ref) for field, ref in refs if ref.startswith(RUN_REF)]


def primary_metric(task: str) -> tuple[str, bool]:
    """(metric, higher is better) that stands for a task: a built-in task's own, else lm-eval's `acc`."""
    from harness.tasks import LOCAL_TASKS

    if task in LOCAL_TASKS:
        cls = LOCAL_TASKS.get(task)
        return cls.primary_metric, cls.higher_is_better
    return "acc", True


def teacher_task_scores(scores: dict, tasks: list[str]) -> dict:
    """The teacher's primary score per task, as `teacher_task.<task>.<metric>`."""
    out = {}
    for task in tasks:
        metric, _ = primary_metric(task)
        if f"task.{task}.{metric}" in scores:
            out[f"teacher_task.{task}.{metric}"] = scores[f"task.{task}.{metric}"]
    return out


def comparison(metrics: dict) -> dict:
    """compression_ratio, quality_retention_pct (teacher ppl ÷ student ppl, in %: 100 = as good),
    quality_retention_task_pct (the mean over scored tasks of the student's share of the teacher's
    primary score: chance-corrected, (S − chance) ÷ (T − chance), for a multiple-choice accuracy, so a
    student at chance retains 0%; S ÷ T otherwise, inverted for a lower-is-better score) and infer_speedup (teacher decode ms/token ÷ student's), from the
    figures already measured."""
    out = {}
    ratios = []
    for key, teacher in metrics.items():
        if key.startswith("teacher_task.") and teacher and metrics.get(key[len("teacher_"):]):
            student = metrics[key[len("teacher_"):]]
            task, metric = key.split(".")[1], key.split(".")[2]
            chance = metrics.get(f"task.{task}.chance") if metric in ("acc", "acc_norm") else None
            if chance is not None:
                if teacher > chance:  # a teacher at chance has nothing to retain
                    ratios.append((student - chance) / (teacher - chance))
            else:
                ratios.append(student / teacher if primary_metric(task)[1] else teacher / student)
    if ratios:
        out["quality_retention_task_pct"] = 100 * sum(ratios) / len(ratios)
    if metrics.get("teacher_params") and metrics.get("student_params"):
        out["compression_ratio"] = metrics["teacher_params"] / metrics["student_params"]
    if metrics.get("teacher_eval_ppl") and metrics.get("eval_ppl"):
        out["quality_retention_pct"] = 100 * metrics["teacher_eval_ppl"] / metrics["eval_ppl"]
    if metrics.get("teacher_decode_ms_per_token") and metrics.get("infer_decode_ms_per_token"):
        out["infer_speedup"] = metrics["teacher_decode_ms_per_token"] / metrics["infer_decode_ms_per_token"]
    return out


class Distill(Objective):
    """The student learns the labels (CE) and its teacher's outputs: response KL, hidden-state
    features, in-batch relations; the teacher is a model, a finished run, or an ensemble."""

    name = "distill"
    Options = DistillOptions
    description = "knowledge distillation: a frozen teacher (a model, a finished run or an ensemble) → a student"
    report_sections = ("distillation",)
    metrics = ("teacher_params", "teacher_eval_loss", "distill_kl_before", "distill_kl", "compression_ratio",
               "quality_retention_pct")

    def held_models(self, config) -> list[str]:
        o = self.options
        if o.cache_teacher:  # the cache is computed before training; the teacher is not held while it trains
            return []
        return [o.teacher] if o.teacher else [t.model for t in o.teachers or []]

    def __init__(self, options: DistillOptions):
        super().__init__(options)
        self.teacher = None

    def slug_prefix(self) -> str:  # `distill-every_2nd-kl-…`; `distill-ens2-…` for an ensemble
        o = self.options
        keep = o.student.keep_layers if o.student is not None else None
        mix = "+".join(short for short, weight in (("kl", o.losses.kl), ("feat", o.losses.feature),
                                                    ("rel", o.losses.relation)) if weight > 0) or "ce"
        who = (f"-ens{len(o.teachers)}" if o.teachers is not None else "" if keep is None
               else f"-keep{len(keep)}" if isinstance(keep, list) else f"-{keep}")
        return f"distill{who}-{mix}" + ("-cached" if o.cache_teacher else "")

    def single_model(self, config) -> str | None:
        if self.options.student is not None and not config.method.cls.saves_full_model:
            return "its base is a depth-pruned copy of the teacher, which the run does not keep"
        return None

    # --- preflight ---

    def check(self, spec, plan) -> list[tuple[str, str, str]]:
        """The teacher exists (a model, or a run that finished `ok` with its weights), `keep_layers` and
        `feature_layers` fit the teacher's and the student's depths, and they share a vocabulary."""
        from harness.errors import ConfigError
        from harness.objectives.parts.student import keep_layers, layer_pairs

        o, where = self.options, "objective"
        if o.teachers is not None:
            return self._check_ensemble(spec, plan)
        teacher_model, n_teacher = o.teacher, None
        if teacher_model.startswith(RUN_REF):
            in_grid, config, found = plan.resolve(spec, teacher_model, "teacher")
            if config is None:
                return found
            teacher_model, n_teacher = config.model.name, depth(in_grid, plan) if in_grid is not None else None
        try:
            models.check(teacher_model, file=plan.file, field=f"[{spec.slug}] {where}.teacher")
        except ConfigError as exc:
            return list(exc.problems)
        teacher = plan.model_config(teacher_model, spec.config.model)
        if teacher is None:  # a hub id offline: the run itself reports that
            return []
        student = teacher if o.student is not None else plan.model_config(spec.config.model.name, spec.config.model)
        n_teacher = n_teacher or teacher.num_hidden_layers
        n_student = student.num_hidden_layers if student is not None else None
        problems = []
        if o.student is not None:
            try:
                n_student = len(keep_layers(o.student.keep_layers, n_teacher))
            except ValueError as exc:
                return [plan.problem(spec, f"{where}.student.keep_layers", str(exc))]
        elif student is not None and student.vocab_size != teacher.vocab_size:
            problems.append(plan.problem(spec, f"{where}.teacher", f"student `{spec.config.model.name}` (vocabulary "
                                         f"{student.vocab_size}) and teacher `{o.teacher}` (vocabulary "
                                         f"{teacher.vocab_size}) must share a tokenizer"))
        if n_student is not None and o.losses.feature > 0:
            for s_layer, t_layer in layer_pairs(o.feature_layers, n_student, n_teacher):
                if not (0 <= s_layer <= n_student and 0 <= t_layer <= n_teacher):
                    problems.append(plan.problem(spec, f"{where}.feature_layers", f"pair ({s_layer}, {t_layer}) is "
                                                 f"out of range: student hidden states 0..{n_student}, teacher "
                                                 f"0..{n_teacher} (0: embeddings)"))
                    break
        return problems

    def _check_ensemble(self, spec, plan) -> list[tuple[str, str, str]]:
        """Each teacher of `teachers:` exists (a model, a run of the grid, or a finished run) and shares
        the student's vocabulary."""
        from harness.errors import ConfigError
        from harness.objectives.parts.student import keep_layers

        problems, o = [], self.options
        pruned = o.student is not None  # a copy of the first teacher: it shares that one's vocabulary
        student = None if pruned else plan.model_config(spec.config.model.name, spec.config.model)
        for i, teacher in enumerate(o.teachers):
            field, name = f"objective.teachers[{i}].model", teacher.model
            if name.startswith(RUN_REF):
                _, config, found = plan.resolve(spec, name, f"teachers[{i}].model")
                if config is None:
                    problems.extend(found)
                    continue
                name = config.model.name
            try:
                models.check(name, file=plan.file, field=f"[{spec.slug}] {field}")
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            config = plan.model_config(name, spec.config.model)
            if i == 0 and pruned and config is not None:
                student = config
                try:
                    keep_layers(o.student.keep_layers, config.num_hidden_layers)
                except ValueError as exc:
                    problems.append(plan.problem(spec, "objective.student.keep_layers", str(exc)))
            elif config is not None and student is not None and config.vocab_size != student.vocab_size:
                problems.append(plan.problem(spec, field, f"teacher `{teacher.model}` (vocabulary {config.vocab_size}) "
                                             f"and the student (vocabulary {student.vocab_size}) must share a tokenizer"))
        return problems

    # --- the run ---

    def load(self, ctx):
        from harness.objectives.parts.distillation import load_teacher, pruned_student

        spec = ctx.spec
        self.teacher, tokenizer = load_teacher(self.options, spec.model, ctx.device, ctx.refs)
        if self.options.student is not None:  # a depth-pruned copy of the teacher
            return pruned_student(self.options, self.teacher), tokenizer
        return super().load(ctx)

    def before_training(self, model, tokenizer, ctx, val_set, collator, prompts, metrics) -> None:
        """The teacher's size, validation loss and decode speed, and the student's KL to it before training."""
        from harness.evaluate import perplexity, token_loss
        from harness.measure import count_params, latency
        from harness.objectives.parts.distillation import val_kl

        spec, teacher, device = ctx.spec, self.teacher, ctx.device
        loss, _ = token_loss(teacher, val_set, collator, spec.eval.batch_size, device)
        metrics.update(teacher_params=count_params(teacher)[1], teacher_eval_loss=loss,
                       teacher_eval_ppl=perplexity(loss), student_params=metrics["total_params"],
                       distill_kl_before=val_kl(model, teacher, val_set, collator, spec.eval.batch_size, device))
        if spec.eval.tasks and not hasattr(teacher, "members"):  # for quality_retention_task_pct
            from harness.lmeval import score

            scores, _ = score(teacher, tokenizer, spec.eval.tasks, limit=spec.eval.limit,
                              num_fewshot=spec.eval.num_fewshot, batch_size=spec.eval.batch_size, seed=spec.seed)
            metrics.update(teacher_task_scores(scores, spec.eval.tasks))
        if spec.eval.latency:  # an ensemble decodes with every member
            members = getattr(teacher, "members", [teacher])
            metrics["teacher_decode_ms_per_token"] = sum(
                latency(m, tokenizer, prompts, spec.eval.latency_new_tokens, device,
                        spec.eval.latency_repeats)["infer_decode_ms_per_token"] for m in members)

    def trainer_parts(self, model, tokenizer, ctx, train_set, train_records, collator, metrics) -> dict:
        from harness.objectives.parts.distillation import DistillTrainer

        return {"trainer_cls": DistillTrainer, "teacher": self.teacher, "objective": self.options,
                "cache": self._cache(ctx, train_set, tokenizer, metrics)}

    def _cache(self, ctx, train_set, tokenizer, metrics: dict):
        """`cache_teacher: true`: the teacher's top-k over the training examples, from the model cache or
        computed now (`teacher_cache_s`: the seconds it cost this run)."""
        o = self.options
        if not o.cache_teacher:
            return None
        from harness.data.tokenize import make_collator
        from harness.objectives.parts import teacher_cache
        from harness.objectives.parts.distillation import softened, teacher_identity

        with softened(self.teacher, o.temperature):
            cache, seconds = teacher_cache.load_or_build(self.teacher, teacher_identity(o, ctx.refs), train_set,
                                                         make_collator(tokenizer, False), ctx.device, o.temperature,
                                                         o.cache_top_k)
        metrics["teacher_cache_s"] = round(seconds, 3)
        return cache

    def after_training(self, trainer, model, tokenizer, ctx, train_records, val_records, val_set, collator,
                       metrics) -> None:
        from harness.objectives.parts.distillation import val_kl

        metrics["distill_kl"] = val_kl(model, self.teacher, val_set, collator, ctx.spec.eval.batch_size, ctx.device)

    def finish(self, metrics: dict) -> None:
        metrics.update(comparison(metrics))


def depth(spec, plan, hops: int = 0) -> int | None:
    """Layers of the model a run of the grid trains: its `model`'s, or its `keep_layers` of its teacher's."""
    from harness.errors import ConfigError
    from harness.objectives.parts.student import keep_layers

    o = spec.config.objective
    if not isinstance(o, DistillOptions) or o.student is None or hops > len(plan.specs):
        config = plan.model_config(spec.config.model.name, spec.config.model)
        return config.num_hidden_layers if config is not None else None
    refs = o.run_refs() if o.teachers is None else []
    try:
        teacher = plan.in_grid(spec, refs[0][1], refs[0][0]) if refs else None
    except ConfigError:  # said where that run's own objective is checked
        return None
    if teacher is not None:
        n_teacher = depth(teacher, plan, hops + 1)
    else:
        config = plan.model_config(o.teacher, spec.config.model) if not o.teacher.startswith(RUN_REF) else None
        n_teacher = config.num_hidden_layers if config is not None else None
    try:
        return len(keep_layers(o.student.keep_layers, n_teacher)) if n_teacher else None
    except ValueError:
        return None


register(Distill)
