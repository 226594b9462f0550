"""Parameter validation: what each estimator parameter accepts, checked at ``fit``.

scikit-learn's own validator (``sklearn.utils._param_validation`` and
``sklearn.base._fit_context``) is private and changes without deprecation, so
sktransfer keeps a small one of its own, as imbalanced-learn does. An estimator lists its
constraints in ``_param_constraints`` (name -> list of accepted kinds) and calls
``validate_params`` at the start of ``fit``. A parameter is valid when it satisfies
any one of its constraints:

- a type (``str``, ``dict``, ``os.PathLike`` ...): an instance of it;
- ``None``: the value ``None``;
- ``callable``: any callable;
- ``Interval``: a number of the given kind within bounds (bools are not numbers);
- ``Options``: one of a set of values;
- ``HasMethods``: an object with the named methods;
- ``"random_state"``: ``None``, an int or a ``numpy.random.RandomState``;
- ``"verbose"``: ``"auto"``, a bool or an int.

Booleans are numbers only where a constraint says so (``"verbose"``): ``True`` is not 1
for an ``Interval`` or a numeric type such as ``Integral``, and a list or tuple holding a
bool (``layer=[True]``) satisfies no ``list`` or ``tuple`` constraint (no parameter takes
a list of flags, so a bool there is a mistake, not a block index or a size).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from numbers import Integral, Number, Real

import numpy as np


class InvalidParameterError(ValueError, TypeError):
    """A parameter of an sktransfer estimator has a value it does not accept.

    A subclass of both ``ValueError`` and ``TypeError``, as scikit-learn's own
    ``InvalidParameterError``, so ``except ValueError`` catches a wrong value and
    ``except TypeError`` a wrong type.
    """


@dataclass(frozen=True)
class Interval:
    """Numbers of ``kind`` (``Integral``, ``Real`` or ``"real_not_int"``) between
    ``left`` and ``right`` (``None``: unbounded); ``closed`` in {"left", "right",
    "both", "neither"}."""

    kind: object
    left: float | None
    right: float | None
    closed: str

    def __contains__(self, value) -> bool:
        if _is_bool(value) or not self._is_kind(value):
            return False
        if self.left is not None:
            if value < self.left or (value == self.left and self.closed in ("right", "neither")):
                return False
        if self.right is not None:
            if value > self.right or (value == self.right and self.closed in ("left", "neither")):
                return False
        return True

    def _is_kind(self, value) -> bool:
        if self.kind == "real_not_int":
            return isinstance(value, Real) and not isinstance(value, Integral)
        return isinstance(value, self.kind)

    def __str__(self) -> str:
        kind = {Integral: "an int", Real: "a float", "real_not_int": "a float"}[self.kind]
        left = "-inf" if self.left is None else self.left
        right = "inf" if self.right is None else self.right
        brackets = {"left": "[)", "right": "(]", "both": "[]", "neither": "()"}[self.closed]
        return f"{kind} in the range {brackets[0]}{left}, {right}{brackets[1]}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: frozenset

    def __init__(self, values):
        object.__setattr__(self, "values", frozenset(values))

    def __contains__(self, value) -> bool:
        try:
            return value in self.values
        except TypeError:  # unhashable
            return False

    def __str__(self) -> str:
        return "one of {" + ", ".join(repr(v) for v in sorted(self.values, key=str)) + "}"


@dataclass(frozen=True)
class HasMethods:
    """Any object with all the named methods (duck typing, e.g. ``joblib.Memory``)."""

    methods: tuple

    def __contains__(self, value) -> bool:
        return all(callable(getattr(value, m, None)) for m in self.methods)

    def __str__(self) -> str:
        return "an object implementing " + ", ".join(repr(m) for m in self.methods)


def _satisfies(constraint, value) -> bool:
    if constraint is None:
        return value is None
    if constraint is callable:
        return callable(value)
    if constraint == "random_state":
        return value is None or _is_int(value) or isinstance(value, np.random.RandomState)
    if constraint == "verbose":
        return (isinstance(value, str) and value == "auto") or _is_bool(value) or _is_int(value)
    if isinstance(constraint, type):
        return isinstance(value, constraint) and not _bool_as_number(value, constraint)
    return value in constraint


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not _is_bool(value)


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _holds_bool(value) -> bool:
    """Whether ``value`` is a bool, or a list or tuple holding one."""
    if isinstance(value, (list, tuple)):
        return any(_is_bool(v) for v in value)
    return _is_bool(value)


def _bool_as_number(value, kind: type) -> bool:
    """Whether ``value``, an instance of ``kind``, is a bool taken for a number (``True``
    for ``Integral``), or a list or tuple holding one."""
    if issubclass(kind, (list, tuple)):
        return _holds_bool(value)
    return _is_bool(value) and issubclass(kind, Number) and not issubclass(kind, bool)


def _describe(constraint) -> str:
    if constraint is None:
        return "None"
    if constraint is callable:
        return "a callable"
    if constraint == "random_state":
        return "an int, a numpy.random.RandomState or None"
    if constraint == "verbose":
        return "'auto', a bool or an int"
    if constraint is Integral:
        return "an int"
    if isinstance(constraint, type):
        return f"an instance of {constraint.__name__!r}"
    return str(constraint)


# What prediction and transform read of the parameters, validated at each call: how a
# call runs (never what it returns), the cache, and ``tta``, a choice of each call. Every
# other parameter is read by ``fit`` only: set after ``fit``, it changes nothing until
# the next fit.
CALL_PARAMETERS = ("batch_size", "num_workers", "verbose", "memory", "cache_key", "tta")


def validate_params(estimator, names=None) -> None:
    """Check every parameter of ``estimator`` (or those of ``names``) against its
    ``_param_constraints``.

    Raises
    ------
    InvalidParameterError
        Naming the parameter, the estimator, what it accepts and the value it got.
    """
    params = estimator.get_params(deep=False)
    for name, constraints in estimator._param_constraints.items():
        if names is not None and name not in names:
            continue
        value = params[name]
        if any(_satisfies(c, value) for c in constraints):
            continue
        accepted = [_describe(c) for c in constraints]
        expected = (
            accepted[0]
            if len(accepted) == 1
            else (", ".join(accepted[:-1]) + " or " + accepted[-1])
        )
        hint = " A bool is not accepted as a number." if _holds_bool(value) else ""
        raise InvalidParameterError(
            f"The {name!r} parameter of {type(estimator).__name__} must be {expected}. "
            f"Got {value!r} instead.{hint}"
        )


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_bytes(value, name: str) -> int:
    """A size in bytes from an int or a string such as ``"500MB"`` or ``"4GiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        number = value.strip().rstrip("bBiIkKmMgGtT ")
        unit = value.strip()[len(number) :].strip().upper()
        try:
            size = float(number)
        except ValueError:
            size = -1.0
        if unit in _UNITS and size >= 0:
            return int(size * _UNITS[unit])
    raise ValueError(
        f"{name}={value!r} is not a size: expected a number of bytes (an int >= 0) or a "
        "string with a unit, such as '500MB' or '4GiB'."
    )


def did_you_mean(word, known) -> str:
    """`` Did you mean 'x'?``, ``x`` the name of ``known`` closest to ``word`` (a value
    or name that is not known), for the end of an error message; empty when none is
    close."""
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
