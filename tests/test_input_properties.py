"""Property-based tests of the experiment loader and the grid expansion (issue 19): whatever an experiment file
holds — random text, random bytes, random nested mappings with plausible and implausible keys and values,
YAML aliases, hostile names — reading and expanding it ends in a ConfigError (the CLI's exit 2 with a message)
or a valid grid, never another exception, and never writes a file outside the test's folders.

Profiles: `input` (the default, 500 examples a test) and `input-quick` (50): FTBENCH_HYPOTHESIS=input-quick."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import PROJECT_ROOT, run_cli
from harness.config import EXPERIMENT_KEYS, SECTIONS, load_experiment
from harness.errors import ConfigError
from harness.grid import expand_all
from harness.inputs import MAX_RUNS, inside, name_problem

# no example database: nothing is written into the project folder, and CI explores afresh each time
settings.register_profile("input", max_examples=500, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("input-quick", parent=settings.get_profile("input"), max_examples=50)
PROFILE = settings.get_profile(os.environ.get("FTBENCH_HYPOTHESIS", "input"))

# --- what files hold --------------------------------------------------------------------------------------

NAMES = st.one_of(
    st.sampled_from(["exp", "tiny_1", "a.b-c", "..", ".", "", "../x", "../../../tmp/evil", "/abs/path", "a/b",
                     "a\\b", "~", "-dash", ".hidden", "x" * 300, "nul\0byte", "sp ace", "é"]),
    st.text(min_size=0, max_size=20),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["2*r", "four", "r/0", "2**999", "sqrt(-1)", "lora", "full", "tiny-smollm2", "chatterbot",
                     "none", "file", "../x", "/etc/passwd", "1e3", "null", "nan", "[]", "{}", "*a", "&a", ""]),
    st.text(max_size=12),
)
TRAIN_KEYS = list(SECTIONS["train"].model_fields)
PLAUSIBLE_KEYS = sorted({*EXPERIMENT_KEYS, *SECTIONS, "method", "objective", "seed", "seeds", "repeats", "repeat",
                         "r", "alpha", "name", "values", "when", "path", "n_train", *TRAIN_KEYS, "method.r",
                         "train.lr", "data.n_train", "lr_rate", "grdi"})
KEYS = st.one_of(st.sampled_from(PLAUSIBLE_KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(KEYS, inner, max_size=4)), max_leaves=20)
TINY = {"model": "tiny-smollm2", "data": {"name": "chatterbot", "n_train": 8, "n_val": 4, "n_test": 0},
        "tracking": "none", "train": {"max_steps": 1}}


@st.composite
def experiments(draw) -> dict:
    """A mapping shaped like an experiment, each part plausible or not."""
    doc: dict = {}
    if draw(st.booleans()):
        doc["name"] = draw(NAMES)
    base = dict(TINY) if draw(st.booleans()) else {}
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "method", "objective", "seed", "bogus"]), max_size=4)):
        base[section] = draw(st.one_of(VALUES, st.dictionaries(st.sampled_from([*TRAIN_KEYS, "r", "name", "x"]),
                                                                 SCALARS, max_size=4)))
    doc["base"] = draw(st.one_of(st.just(base), VALUES))
    if draw(st.booleans()):
        doc["grid"] = draw(st.one_of(
            st.dictionaries(st.sampled_from(["method", "seeds", "method.r", "train.lr", "repeats", "pair", "repeat",
                                             "data.n_train", "zzz"]),
                            st.one_of(st.lists(SCALARS, max_size=4), SCALARS, VALUES), max_size=3),
            VALUES))
    for key in draw(st.lists(KEYS, max_size=2)):
        doc[key] = draw(VALUES)
    return doc


def mostly(good: list, bad: list) -> st.SearchStrategy:
    """One of `good` about four times in five, else one of `bad`."""
    return st.integers(0, 4).flatmap(lambda k: st.sampled_from(bad if k == 4 else good))


AXES = {"method": st.lists(mostly(["lora", "full", "ia3"], ["nosuch", ""]), min_size=1, max_size=3),
        "seeds": st.lists(mostly([0, 1, 2], [-1, "x"]), max_size=3),
        "method.r": st.lists(mostly([1, 2, 4], [-1, "2*alfa", 0]), min_size=1, max_size=3),
        "train.lr": st.lists(mostly([1e-3, 1e-4, "1e-3"], [0, "fast"]), min_size=1, max_size=2),
        "repeats": mostly([1, 2], [0, -1, True]),
        "data.n_train": st.lists(mostly([4, 8], [100000, -2]), min_size=1, max_size=2)}


@st.composite
def plausible_experiments(draw) -> dict:
    """The tiny experiment with a few options and axes changed: mostly valid, with a bad value here and there."""
    base = {**TINY, "method": draw(mostly(["lora", "full", {"name": "lora", "r": 2, "alpha": "2*r"}, ["lora", "ia3"]],
                                          [{"name": "lora", "alfa": 2}, "nosuch", {"name": "ia3", "r": 2}]))}
    base["train"] = {**TINY["train"], **draw(st.dictionaries(
        mostly(["lr", "micro_batch", "warmup_ratio", "diverge_factor"], ["lr_rate"]),
        mostly([2, 0.5, "2*max_steps"], ["four", -1, None]), max_size=1))}
    grid = {key: draw(AXES[key]) for key in draw(st.lists(st.sampled_from(sorted(AXES)), unique=True, max_size=3))}
    doc = {"name": draw(mostly(["plausible"], ["../plausible", "a/b", ""])), "base": base}
    return {**doc, "grid": grid} if grid else doc


@st.composite
def alias_files(draw) -> str:
    """YAML text whose anchors and aliases nest (billion laughs, recursive, merge keys), under any key."""
    width, depth = draw(st.integers(1, 12)), draw(st.integers(1, 10))
    lines = ["name: bomb", "description:", '  a0: &a0 ["lol", "lol"]']
    for level in range(1, depth + 1):
        lines.append(f"  a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    where = draw(st.sampled_from(["description", "grid", "base", "merge", "recursive"]))
    if where == "grid":
        lines.append(f"grid:\n  seeds: *a{depth}")
    elif where == "base":
        lines.append(f"base:\n  train: {{lr: *a{depth}}}")
    elif where == "merge":
        lines.append("base:\n  train: &t {max_steps: 1}\n  eval:\n    <<: *t")
    else:
        lines.append("base: &r\n  x: *r")
    return "\n".join(lines) + "\n"


YAMLISH = st.text(alphabet=string.ascii_letters[:6] + string.digits[:3] + ":-[]{},&*!|>'\"#\n .?%@`\\\t", max_size=200)


# --- the properties ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("input-properties")


def _write(folder: Path, content: str | bytes) -> Path:
    path = folder / "exp.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


def _check_expansion(path: Path, root: Path) -> None:
    """ConfigError with a message, or a valid grid whose every run folder stays under `root`."""
    try:
        experiment = load_experiment(path, strict=False)
        expansion = expand_all(experiment, max_runs=MAX_RUNS)
    except ConfigError as exc:
        assert exc.problems and exc.render().strip()
        event("refused on reading")
        return
    if expansion.problems:
        assert all(isinstance(m, str) and m for _, _, m in expansion.problems)
        event("refused on expanding")
        return
    event(f"a valid grid of {min(len(expansion.specs), 3)}{'+' if len(expansion.specs) > 3 else ''} runs")
    assert name_problem(experiment.name) is None
    for spec in expansion.specs:
        directory = inside(inside(root, spec.experiment), spec.run_id)
        assert Path(os.path.abspath(directory)).is_relative_to(os.path.abspath(root))


def _files(*folders: Path) -> set[Path]:
    return {p for f in folders for p in f.rglob("*")}


@PROFILE
@given(doc=st.one_of(experiments(), plausible_experiments()))
def test_random_experiments_expand_or_are_refused(folder, doc):
    try:
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:  # a key YAML cannot write: no file to read
        return
    _check_expansion(_write(folder, text), folder / "results")


@PROFILE
@given(content=st.one_of(YAMLISH, alias_files(), st.binary(max_size=64)))
def test_random_text_bytes_and_aliases_expand_or_are_refused(folder, content):
    _check_expansion(_write(folder, content), folder / "results")


@settings(PROFILE, max_examples=max(20, PROFILE.max_examples // 5))
@given(content=st.one_of(st.one_of(experiments(), plausible_experiments(), plausible_experiments())
                         .map(lambda d: yaml.safe_dump(d, sort_keys=False)), alias_files(), YAMLISH, st.binary(max_size=32)))
def test_the_cli_dry_run_exits_0_or_2_and_writes_nothing(folder, content):
    """`ftbench run FILE --dry-run`: exit 0 with the grid or exit 2 with `error:`; no traceback; no file
    written anywhere (results, reports, the project folder)."""
    path = _write(folder, content)
    before = _files(folder, PROJECT_ROOT / "results", PROJECT_ROOT / "reports")
    cli = run_cli("run", str(path), "--dry-run", "--results", str(folder / "results"))
    assert cli.code in (0, 2), cli.out + cli.err
    assert "Traceback" not in cli.out + cli.err
    event(f"exit {cli.code}")
    if cli.code == 2:
        assert cli.err.startswith("error: "), cli.err
    else:
        assert "dry run: nothing started" in cli.out
    assert _files(folder, PROJECT_ROOT / "results", PROJECT_ROOT / "reports") == before
