"""The search space against the job's hyperparameters: which names may be searched, whether each bound and value is
one a job accepts, and the Optuna distributions (and grid) it becomes. Every refusal is a 422 naming its field."""

from __future__ import annotations

import math
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import ValidationError

from app.errors import InvalidInput
from app.jobs.schemas import Hyperparameters
from app.sweeps.schemas import ParamSpace, SweepCreate

# Objects, or read-only: not something a sampler can choose.
NOT_SEARCHABLE = {"early_stopping", "adapter", "auto", "expected_memory"}
SEARCHABLE = sorted(set(Hyperparameters.model_fields) - NOT_SEARCHABLE)
MAX_GRID = 100_000


def check_sweep(spec: SweepCreate) -> None:
    """422 for a space a sweep cannot search, naming the field."""
    fixed = spec.hyperparameters.model_fields_set
    for name, space in spec.search_space.items():
        field = f"search_space.{name}"
        if name not in Hyperparameters.model_fields or name in NOT_SEARCHABLE:
            raise InvalidInput(f"{field}: '{name}' is not a hyperparameter a sweep can search; use one of {SEARCHABLE}")
        if name in fixed:
            raise InvalidInput(f"{field}: '{name}' is also fixed in hyperparameters; remove it from one of the two")
        _check_space(name, space, field)
    if spec.sampler == "grid":
        points = grid_size(spec)
        if points > spec.max_trials:
            raise InvalidInput(
                f"search_space: the grid has {points} points, more than max_trials ({spec.max_trials}); raise "
                "max_trials to cover it, narrow the space, or use the tpe or random sampler"
            )
    if spec.parallelism > spec.max_trials:
        raise InvalidInput(f"parallelism: {spec.parallelism} is more than max_trials ({spec.max_trials})")


def _check_space(name: str, space: ParamSpace, field: str) -> None:
    if space.type == "choice":
        if not space.values:
            raise InvalidInput(f"{field}.values: a choice needs a list of values")
        if len({repr(v) for v in space.values}) != len(space.values):
            raise InvalidInput(f"{field}.values: each value may appear once")
        for i, value in enumerate(space.values):
            _check_value(name, value, f"{field}.values[{i}]")
        return
    if space.values is not None:
        raise InvalidInput(f"{field}.values: only a choice has values; give low and high for {space.type}")
    if space.low is None or space.high is None:
        raise InvalidInput(f"{field}: {space.type} needs low and high")
    if not space.low < space.high:
        raise InvalidInput(f"{field}.high: must be more than low ({space.low:g})")
    if space.type == "int" and (space.low != int(space.low) or space.high != int(space.high)):
        raise InvalidInput(f"{field}: int bounds must be whole numbers")
    if space.type == "int" and space.step is not None and space.step != int(space.step):
        raise InvalidInput(f"{field}.step: an int step must be a whole number")
    if (space.type == "log_uniform" or space.log) and space.low <= 0:
        raise InvalidInput(f"{field}.low: a log scale needs low above 0")
    if space.type == "log_uniform" and space.step is not None:
        raise InvalidInput(f"{field}.step: log_uniform takes no step")
    if space.type == "uniform" and space.log:
        raise InvalidInput(f"{field}.log: use type log_uniform for a log scale")
    bound = int if space.type == "int" else float
    _check_value(name, bound(space.low), f"{field}.low")
    _check_value(name, bound(space.high), f"{field}.high")


def _check_value(name: str, value: Any, field: str) -> None:
    """The value must be one a job accepts for `name`, on its own."""
    try:
        Hyperparameters.model_validate({name: value})
    except ValidationError as exc:
        messages = "; ".join(e["msg"] for e in exc.errors())
        raise InvalidInput(f"{field}: {value!r} is not a valid {name} ({messages})") from None


def distributions(spec: SweepCreate) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each searched hyperparameter."""
    result: dict[str, BaseDistribution] = {}
    for name, space in spec.search_space.items():
        if space.type == "choice":
            result[name] = CategoricalDistribution(space.values or [])
        elif space.type == "int":
            step = int(space.step or 1)
            result[name] = IntDistribution(int(space.low or 0), int(space.high or 0), log=space.log, step=step)
        else:
            log = space.type == "log_uniform"
            result[name] = FloatDistribution(space.low or 0.0, space.high or 0.0, log=log, step=space.step)
    return result


def grid(spec: SweepCreate) -> dict[str, list[Any]]:
    """Every value of each searched hyperparameter, for the grid sampler (choices and int ranges only)."""
    values: dict[str, list[Any]] = {}
    for name, space in spec.search_space.items():
        if space.type == "choice":
            values[name] = list(space.values or [])
        elif space.type == "int":
            low, high, step = int(space.low or 0), int(space.high or 0), int(space.step or 1)
            if (high - low) // step + 1 > MAX_GRID:
                raise InvalidInput(f"search_space.{name}: too many grid points; give a larger step")
            values[name] = list(range(low, high + 1, step))
        elif space.type == "uniform" and space.step is not None:
            start, stop = space.low or 0.0, space.high or 0.0
            ratio = (stop - start) / space.step
            if not ratio < MAX_GRID:
                raise InvalidInput(f"search_space.{name}: too many grid points; give a larger step")
            count = math.floor(ratio + 1e-9) + 1
            if count > MAX_GRID:
                raise InvalidInput(f"search_space.{name}: too many grid points; give a larger step")
            values[name] = [round(start + i * space.step, 12) for i in range(count)]
        else:
            raise InvalidInput(
                f"search_space.{name}: the grid sampler needs choice or int spaces (or uniform with a step); "
                "use sampler tpe or random for a continuous range"
            )
    return values


def grid_size(spec: SweepCreate) -> int:
    return math.prod(len(v) for v in grid(spec).values())
