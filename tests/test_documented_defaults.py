"""What the documentation says about the parameters is what the code does.

The parameter section of ``SelfLabelingClusterer``'s docstring (numpydoc ``name : type,
default=...`` lines, and every figure in the descriptions: the epochs and steps that
``"auto"`` resolves to, shares, sizes) and the ``fit`` command's ``--help`` are checked
against ``__init__``'s signature, ``_parameter_constraints``, the module constants that the
text describes and the settings that ``"auto"`` resolves to. A figure in a description that no
entry below accounts for fails the test: say where it comes from, or leave it out.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import math
import os
import re
from collections.abc import Callable
from numbers import Integral
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from sklearn_selflabel import SelfLabelingClusterer, _cluster_count, _layout, _offline, cli
from sklearn_selflabel import _settings as settings
from sklearn_selflabel import _starts as starts
from sklearn_selflabel._geometry import MIN_WIDE_FEATURES
from sklearn_selflabel._recipes import RECIPES
from sklearn_selflabel.augment import ImageAugment

REPOSITORY = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------- reading the text

# Figures: numbers (1,000 separators, decimals, percentages as shares) and the fractions that
# prose spells out. A number glued to a word (L2, AVX-512, 2-D) is a name, not a figure, and
# one after "=" (n_init=2) a parameter's value.
_FRACTIONS = {"half": 0.5, "third": 1 / 3, "quarter": 0.25, "fifth": 0.2, "tenth": 0.1}
_FIGURE = re.compile(
    r"(?<![\w.=-])(?P<number>\d(?:[\d,]*\d)?(?:\.\d+)?)(?P<percent>%?)(?![\w-])"
    r"|\b(?P<word>" + "|".join(_FRACTIONS) + r")\b",
    re.IGNORECASE,
)


def figures(text: str) -> list[float]:
    """The figures that ``text`` states, in order."""
    found = []
    for match in _FIGURE.finditer(text):
        if match["word"]:
            found.append(_FRACTIONS[match["word"].lower()])
        else:
            value = float(match["number"].replace(",", ""))
            found.append(value / 100 if match["percent"] else value)
    return found


def assert_same_figures(stated: list[float], expected: list[float], where: str) -> None:
    """The same figures, in any order (each as often as the other lists it)."""
    unmatched = list(expected)
    extra = []
    for value in stated:
        match = next((e for e in unmatched if math.isclose(value, e, rel_tol=1e-9)), None)
        if match is None:
            extra.append(value)
        else:
            unmatched.remove(match)
    assert not extra and not unmatched, (
        f"{where}: states {extra} that the code does not give, and leaves out {unmatched} "
        "that it does"
    )


def documented_parameters(doc: str | None = None) -> dict[str, tuple[str, str, str]]:
    """``{name: (type, default, description)}`` of the docstring's Parameters section."""
    doc = inspect.cleandoc(doc if doc is not None else SelfLabelingClusterer.__doc__)
    section = doc.split("Parameters\n----------\n", 1)[1].split("\n\nAttributes\n", 1)[0]
    parameters: dict[str, tuple[str, str, list[str]]] = {}
    name = None
    for line in section.splitlines():
        if line and not line.startswith(" "):
            header = re.fullmatch(r"(?P<name>\w+) : (?P<type>.+), default=(?P<default>.+)", line)
            assert header, f"not a 'name : type, default=...' line: {line!r}"
            name = header["name"]
            parameters[name] = (header["type"], header["default"], [])
        else:
            assert name is not None, line
            parameters[name][2].append(line.strip())
    return {
        name: (type_, default, " ".join(lines))
        for name, (type_, default, lines) in parameters.items()
    }


def signature_defaults() -> dict[str, object]:
    parameters = inspect.signature(SelfLabelingClusterer.__init__).parameters
    return {name: p.default for name, p in parameters.items() if name != "self"}


# ------------------------------------------------------------------------ what the code does


def resolved(X: np.ndarray, **params) -> settings.Settings:
    """The settings that ``fit`` would resolve for these parameters and rows."""
    estimator = SelfLabelingClusterer(**params)
    return settings.resolve_settings(estimator, X, n_clusters=estimator.n_clusters)


def rows(n_samples: int, n_features: int = 4) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n_samples, n_features)).astype(np.float32)


def largest_auto_epochs() -> int:
    """The most epochs that ``max_epochs="auto"`` gives, where the steps would need more."""
    with mock.patch.object(settings, "_MIN_FLAT_STEPS", 10**9):
        return resolved(rows(64), n_clusters=2, init="random").max_epochs


def auto_batch_size(label_mode: str) -> int:
    return resolved(rows(64), n_clusters=2, label_mode=label_mode).batch_size


def repeated_image_fits() -> int:
    """``n_init="auto"`` for a small image fit from the random split."""
    short = resolved(rows(64, 16), n_clusters=2, image_shape=(4, 4), init="random")
    return len(short.seeds)


def mixture_views_share() -> float:
    """The strength of noise views from the mixture start, as a share of ``augment_strength``."""
    network = resolved(rows(64), n_clusters=2, init="mixture").network
    return network.augment_strength / SelfLabelingClusterer().augment_strength


def affine_extremes(strength: float) -> dict[str, float]:
    """The largest warp that image views draw at ``strength``: translation as a share of the
    side, rotation in degrees, scale and shear."""
    warp = ImageAugment((1, 8, 8), strength)
    with mock.patch.object(torch, "rand", torch.ones):  # every draw at the end of its range
        theta = warp._random_affine(1, torch.device("cpu"), torch.float64)[0]
    cos_over_scale, sin_over_scale = theta[0, 0].item(), theta[1, 0].item()
    return {
        "translation": theta[0, 2].item() / 2,  # affine_grid's coordinates span 2 per side
        "rotation": math.degrees(math.atan2(sin_over_scale, cos_over_scale)),
        "scale": 1 / math.hypot(cos_over_scale, sin_over_scale) - 1,
        "shear": (theta[0, 1].item() + sin_over_scale) / cos_over_scale,
    }


def _propagation_default(field: str) -> float:
    return settings.PropagationSettings.__dataclass_fields__[field].default


def stated(*values: float) -> list[float]:
    """Figures of the text itself (levels, operators of a formula), with nothing to resolve."""
    return list(values)


# The figures of each parameter's description, from the code. Each entry names what the text
# says; a parameter without an entry states no figure.
FIGURES: dict[str, Callable[[], list[float]]] = {
    # "each of at least 0.5% of the rows and half its equal share"
    "n_clusters": lambda: [_cluster_count._MIN_DENSE_SHARE, _cluster_count._MIN_COUNTED_SHARE],
    # "None: half the number of rows"
    "max_clusters": lambda: [_cluster_count.max_clusters_for(1000, None) / 1000],
    # "auto": epochs from a start; from the random split, the steps of flat rows and images
    # and the range of epochs.
    "max_epochs": lambda: [
        settings._EPOCHS_FROM_START,
        settings._MIN_FLAT_STEPS,
        settings._MIN_IMAGE_STEPS,
        settings._MIN_EPOCHS,
        largest_auto_epochs(),
    ],
    # "auto": offline and online batch sizes
    "batch_size": lambda: [auto_batch_size("offline"), auto_batch_size("online")],
    # the schedule's formula, whose own numbers these are: checked by evaluating it below
    "n_label_steps": lambda: stated(1, 2, 0, 1),
    # the floor on estimated sizes (a fifth of the equal share), and the re-partition at half
    # the epoch of the last scheduled step
    "cluster_sizes": lambda: [starts.MIN_CLUSTER_SHARE, _offline._ESTIMATED_SIZES_FROM],
    "init": lambda: [
        starts.MIXTURE_ROWS,
        starts.MIXTURE_COMPONENTS,
        _layout._PARTS_PER_CLUSTER,  # "2 * n_clusters parts"
        _offline._LEARNED_FIRST_FOR,  # "the first quarter of the epochs"
        1 - RECIPES["tabular"].learned_agreement,  # "disagrees with over 2% of the labels"
        1 - RECIPES["image"].learned_agreement,  # "(10% for images)"
        mixture_views_share(),  # "noise views are half as strong"
        starts.SEPARATED_AGREEMENT,  # "keep 98% of the input rows' neighbour links"
        RECIPES["image"].min_start_rows - 1,  # "of more than 5,000 rows"
    ],
    "augment_strength": lambda: [
        *stated(0.5),  # masking probability: half the noise's (augment.TabularAugment)
        mixture_views_share(),  # "half as many from init='mixture'"
        *stated(2),  # "augment_strength / 2" for sparse rows (_build)
        SelfLabelingClusterer().augment_strength,  # "at 0.5"
        *affine_extremes(SelfLabelingClusterer().augment_strength).values(),
    ],
    # 64 or more features are wide rows, three times
    "input_kind": lambda: [MIN_WIDE_FEATURES] * 3,
    "propagation_contrast": lambda: [
        _propagation_default("temperature"),
        _propagation_default("n_negatives"),
    ],
    "device": lambda: [settings._MIN_CUDA_VALUES],
    # "auto": 2 fits of at most _MAX_RESTART_STEPS steps, else 1, always 1 with ...; "an
    # integer above 1"
    "n_init": lambda: [repeated_image_fits(), settings._MAX_RESTART_STEPS, *stated(1, 1, 1)],
    # the levels 0, 1 and 2
    "verbose": lambda: stated(0, 1, 2),
    # "n_init > 1"
    "on_interrupt": lambda: stated(1),
}


# ---------------------------------------------------------------------------- the docstring


def test_every_parameter_is_documented_in_the_signatures_order():
    assert list(documented_parameters()) == list(signature_defaults())


@pytest.mark.parametrize("name", list(signature_defaults()))
def test_documented_default_is_the_signatures(name):
    _, default, _ = documented_parameters()[name]
    assert ast.literal_eval(default) == signature_defaults()[name], f"{name}: default={default}"
    assert SelfLabelingClusterer().get_params()[name] == signature_defaults()[name]


def _types_for(constraint) -> list[str]:
    """The words of a numpydoc type that a constraint needs."""
    if isinstance(constraint, StrOptions):
        return [f'"{option}"' for option in sorted(constraint.options)]
    if isinstance(constraint, Interval):
        return ["int"] if constraint.type is Integral else ["float"]
    if constraint is None:
        return ["None"]
    if isinstance(constraint, HasMethods):
        return ["Accelerator"]
    return {
        "boolean": ["bool"],
        "array-like": ["tuple"],
        "random_state": ["int", "RandomState", "None"],
        "verbose": ["int"],
        callable: ["type"],
        dict: ["dict"],
        str: ["str"],
        os.PathLike: ["path-like"],
    }[constraint]


@pytest.mark.parametrize("name", list(signature_defaults()))
def test_documented_type_is_what_the_constraints_accept(name):
    type_, _, _ = documented_parameters()[name]
    constraints = SelfLabelingClusterer._parameter_constraints[name]
    for constraint in constraints:
        if isinstance(constraint, StrOptions) and str in constraints:
            continue  # a str, which the type names, may be any string: these options too
        for word in _types_for(constraint):
            assert word in type_, f"{name} : {type_} does not name {word} ({constraint})"
    options = set().union(*(c.options for c in constraints if isinstance(c, StrOptions)))
    if type_.startswith("{"):  # a set of options is all that the parameter takes
        assert ast.literal_eval(type_) == options, f"{name} : {type_}"
    elif str not in constraints:
        assert set(re.findall(r'"(\w+)"', type_)) == options, f"{name} : {type_}"
    assert ("None" in type_) == (None in constraints or "random_state" in constraints), name


def test_the_defaults_satisfy_the_constraints():
    SelfLabelingClusterer()._validate_params()


@pytest.mark.parametrize("name", list(signature_defaults()))
def test_every_figure_of_a_description_is_the_codes(name):
    _, _, description = documented_parameters()[name]
    expected = FIGURES[name]() if name in FIGURES else []
    assert_same_figures(figures(description), expected, f"the docstring of {name}")


def test_the_documented_label_step_schedule_is_the_codes():
    _, _, description = documented_parameters()["n_label_steps"]
    formula = re.search(r"after epoch ``(?P<formula>[^`]+)``", description)["formula"]
    indices = re.search(r"for ``i = 0 \.\. (?P<last>[^`]+)``", description)["last"]
    for max_epochs, n_label_steps in [(120, 60), (40, 60), (8, 5)]:
        scope = {"max_epochs": max_epochs, "n_label_steps": n_label_steps}
        last = eval(indices, {}, scope)  # the package's own docstring
        placed = [eval(formula, {}, {**scope, "i": i}) for i in range(last + 1)]
        epochs = np.unique(np.round(placed).astype(np.int64))
        np.testing.assert_array_equal(epochs, _offline.label_step_epochs(max_epochs, n_label_steps))


def test_the_resolved_figures_follow_the_constants():
    """The constants mean what the docstring says they do."""
    most = largest_auto_epochs()
    assert settings._MIN_EPOCHS < most
    # "auto" from the random split: enough epochs for the steps, where that is within range
    for steps, image_shape in [
        (settings._MIN_FLAT_STEPS, None),
        (settings._MIN_IMAGE_STEPS, (4, 4)),
    ]:
        n_batches = math.ceil(steps / ((settings._MIN_EPOCHS + most) / 2))
        epochs = math.ceil(steps / n_batches)
        assert settings._MIN_EPOCHS < epochs < most
        X = rows(n_batches * 16, 4 if image_shape is None else 16)
        fit = resolved(X, n_clusters=2, init="random", batch_size=16, image_shape=image_shape)
        assert fit.max_epochs == epochs, (steps, image_shape)
    # from a start that clusters the rows
    assert resolved(rows(64), n_clusters=2, init="kmeans").max_epochs == (
        settings._EPOCHS_FROM_START
    )
    # n_init="auto": two fits up to _MAX_RESTART_STEPS optimizer steps, one above
    image = dict(n_clusters=2, image_shape=(4, 4), init="random", batch_size=64)
    at_most = resolved(rows(64, 16), **image, max_epochs=settings._MAX_RESTART_STEPS)
    above = resolved(rows(64, 16), **image, max_epochs=settings._MAX_RESTART_STEPS + 1)
    assert (len(at_most.seeds), len(above.seeds)) == (2, 1)


# ------------------------------------------------------------------------- the command line


def fit_options() -> dict[str, tuple[argparse.Action, str]]:
    """The ``fit`` command's estimator options: ``{parameter: (action, help as printed)}``."""
    parser = cli._build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    fit = commands.choices["fit"]
    formatter = fit._get_formatter()
    return {
        action.dest: (action, formatter._expand_help(action))
        for action in fit._actions
        if action.dest in cli._ESTIMATOR_OPTIONS
    }


# The figures that explain a default of "auto" in the help, from the code. The command line
# fits offline, on one process, without checkpoints.
CLI_FIGURES: dict[str, Callable[[], list[float]]] = {
    "max_epochs": FIGURES["max_epochs"],
    "batch_size": lambda: [auto_batch_size("offline")],
    "device": FIGURES["device"],
    # 2 fits up to _MAX_RESTART_STEPS optimizer steps, else 1
    "n_init": lambda: [repeated_image_fits(), settings._MAX_RESTART_STEPS, *stated(1)],
}


def _as_help(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def default_clause(text: str) -> str | None:
    """What a help text says in its ``(default: ...)``, nested parentheses included."""
    start = text.find("(default: ")
    if start < 0:
        return None
    depth = 0
    for end in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0:
            return text[start + len("(default: ") : end]
    raise AssertionError(f"unbalanced parentheses: {text!r}")


def test_every_estimator_option_is_in_the_help(capsys):
    options = fit_options()
    assert set(options) == set(cli._ESTIMATOR_OPTIONS)
    # What is checked here is what `sklearn-selflabel fit --help` prints (wrapped).
    assert cli.main(["fit", "--help"]) == 0
    printed = "".join(capsys.readouterr().out.split())
    for _, text in options.values():
        assert "".join(text.split()) in printed, text


@pytest.mark.parametrize("name", cli._ESTIMATOR_OPTIONS)
def test_help_states_the_estimators_default_and_what_auto_gives(name):
    action, text = fit_options()[name]
    clause = default_clause(text)
    if action.required:
        assert clause is None, f"--{name}: required, yet the help names a default: {text!r}"
        assert_same_figures(figures(text), [], f"--{name}'s help")
        return
    # Left out, the option leaves the estimator's default in place: the help must name it.
    assert action.default is None, f"--{name} overrides the estimator's default"
    assert clause is not None, f"--{name}: the help states no '(default: ...)': {text!r}"
    value, separator, explanation = ([*re.split(r"([:;,])", clause, maxsplit=1), "", ""])[:3]
    default = SelfLabelingClusterer().get_params()[name]
    assert value.strip() == _as_help(default), f"--{name}: {text!r}"
    if default == "auto":
        assert separator == ":", f"--{name}: say what auto gives: {text!r}"
    figures_stated = figures(text.replace(f"(default: {clause})", "")) + figures(explanation)
    expected = CLI_FIGURES[name]() if name in CLI_FIGURES else []
    assert_same_figures(figures_stated, expected, f"--{name}'s help")


# ---------------------------------------------------------------------------- design.rst

_COUNTS = {
    word: n
    for n, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}


def regression_test() -> ast.Module:
    return ast.parse((REPOSITORY / "tests" / "test_regression.py").read_text())


def assigned(tree: ast.Module, name: str) -> ast.expr:
    """The value that module ``tree`` assigns to ``name``."""
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            return node.value
    raise AssertionError(f"tests/test_regression.py assigns no {name}")


def recorded_outputs_section() -> str:
    text = (REPOSITORY / "docs" / "design.rst").read_text()
    section = text.split("Recorded outputs\n----------------\n", 1)[1]
    return " ".join(section.split())


def test_design_counts_the_regression_configurations_right_or_not_at_all():
    text = " ".join((REPOSITORY / "docs" / "design.rst").read_text().split())
    counted = re.findall(
        r"\b(\d+|" + "|".join(_COUNTS) + r")\s+(?:(?!of\b)[\w-]+\s+){0,2}configurations\b",
        text,
        re.IGNORECASE,
    )
    configurations = assigned(regression_test(), "CONFIGURATIONS")
    assert isinstance(configurations, ast.Dict)
    n = len(configurations.keys)
    for count in counted:
        value = int(count) if count.isdigit() else _COUNTS[count.lower()]
        assert value == n, f"design.rst counts {count} configurations, the test has {n}"


def test_design_states_the_regression_tests_tolerances():
    tree = regression_test()
    tolerances = [
        ast.literal_eval(assigned(tree, "LABEL_MISMATCH_SHARE")),
        ast.literal_eval(assigned(tree, "TRANSFORM_RTOL")),
    ]
    assert_same_figures(figures(recorded_outputs_section()), tolerances, "design.rst")
