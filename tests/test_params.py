"""sktransfer's own parameter validation (no private scikit-learn API)."""

import ast
import os
import pathlib
from numbers import Integral, Real

import numpy as np
import pytest
from sklearn.base import BaseEstimator

import sktransfer
from sktransfer import InvalidParameterError
from sktransfer._params import HasMethods, Interval, Options, validate_params


class Toy(BaseEstimator):
    _param_constraints = {
        "n": [Interval(Integral, 1, None, closed="left")],
        "frac": [Interval("real_not_int", 0, 1, closed="right"), Options({"all"})],
        "rate": [Interval(Real, 0, 1, closed="neither")],
        "path": [None, str, os.PathLike],
        "hook": [None, callable],
        "memory": [None, HasMethods(("cache",))],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self, n=1, frac="all", rate=0.5, path=None, hook=None, memory=None,
        random_state=None, verbose=False,
    ):  # fmt: skip
        self.n, self.frac, self.rate, self.path, self.hook = n, frac, rate, path, hook
        self.memory, self.random_state, self.verbose = memory, random_state, verbose


class WithCache:
    def cache(self, f):
        return f


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"n": 3, "frac": 1.0, "rate": 0.999},
        {"frac": 0.25, "path": pathlib.Path("x")},
        {"hook": len, "memory": WithCache()},
        {"random_state": np.random.RandomState(0), "verbose": 2},
        {"n": np.int64(2), "random_state": np.int32(5)},
    ],
)
def test_valid_parameters_pass(params):
    validate_params(Toy(**params))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n": 0}, r"The 'n' parameter of Toy must be an int in the range \[1, inf\)\. Got 0"),
        ({"n": 2.0}, r"'n' parameter .* Got 2\.0 instead"),
        ({"n": True}, r"'n' parameter"),  # a bool is not a count
        ({"frac": 0}, r"'frac' parameter of Toy must be a float in the range \(0, 1\] or "
                      r"one of \{'all'\}\. Got 0 instead"),
        ({"frac": "half"}, r"'frac' parameter"),
        ({"rate": 1.0}, r"'rate' parameter .* range \(0, 1\)"),
        ({"path": 3}, r"'path' parameter .* None, an instance of 'str' or an instance of "
                      r"'PathLike'"),
        ({"hook": "print"}, r"'hook' parameter .* None or a callable"),
        ({"memory": object()}, r"'memory' parameter .* an object implementing 'cache'"),
        ({"random_state": "0"}, r"'random_state' parameter .* an int, a numpy"),
        ({"verbose": "yes"}, r"'verbose' parameter .* a bool or an int"),
        ({"frac": ["all"]}, r"'frac' parameter"),  # unhashable: not an option, no crash
    ],
)  # fmt: skip
def test_invalid_parameters_name_the_parameter_and_the_accepted_values(params, message):
    with pytest.raises(InvalidParameterError, match=message) as info:
        validate_params(Toy(**params))
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_every_estimator_parameter_has_constraints():
    for estimator in (
        sktransfer.PretrainedFeatureExtractor,
        sktransfer.FineTunedClassifier,
        sktransfer.FineTunedRegressor,
    ):
        assert set(estimator._param_constraints) == set(estimator().get_params(deep=False))


def test_no_private_sklearn_timm_or_skorch_imports():
    """The package, subpackages included, imports no private name (leading underscore)
    of scikit-learn, timm, skorch or torch: they change without deprecation."""
    offenders = []
    paths = sorted(pathlib.Path(sktransfer.__file__).parent.rglob("*.py"))
    assert any(path.parent.name == "_finetuning" for path in paths)
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                root = node.module.split(".")[0]
                if root not in {"sklearn", "timm", "skorch", "torch"}:
                    continue
                parts = node.module.split(".") + [alias.name for alias in node.names]
                if any(part.startswith("_") for part in parts):
                    offenders.append(f"{path.name}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if any(p.startswith("_") for p in alias.name.split(".")):
                        offenders.append(f"{path.name}: import {alias.name}")
    assert not offenders, offenders


@pytest.mark.parametrize(
    "estimator", [sktransfer.PretrainedFeatureExtractor, sktransfer.FineTunedClassifier]
)
def test_a_value_of_no_accepted_type_is_rejected_at_fit_for_every_parameter(estimator):
    """What scikit-learn's ``check_param_validation`` checks for its own estimators."""
    bad = type("BadType", (), {})()
    X, y = np.zeros((4, 8, 8, 3), dtype=np.uint8), np.array([0, 1, 0, 1])
    for name in estimator().get_params(deep=False):
        est = estimator(**{name: bad})  # __init__ stores, never validates
        match = rf"The '{name}' parameter of {estimator.__name__} must be .* Got .* instead\."
        with pytest.raises(InvalidParameterError, match=match):
            est.fit(X, y)
