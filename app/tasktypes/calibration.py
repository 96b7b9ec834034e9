"""The temperature fitted on a model's validation split, saved beside its weights as plain JSON.

POST /predict with `calibrated: true` divides the logits by it before the softmax (temperature scaling, Guo et al.
2017): the predicted classes stay the same, the scores say more honestly how often they are right."""

from __future__ import annotations

import json
import math
from pathlib import Path

CALIBRATION_FILE = "calibration.json"


def save_temperature(
    folder: Path, temperature: float, fitted_on: str, ece: float | None, ece_after: float | None
) -> None:
    """Write calibration.json: the temperature and the test ECE before and after applying it."""
    record = {"temperature": temperature, "fitted_on": fitted_on, "test_ece": ece, "test_ece_calibrated": ece_after}
    (Path(folder) / CALIBRATION_FILE).write_text(json.dumps(record, indent=2))


def load_temperature(folder: Path) -> float | None:
    """The model's temperature; None for a model without one (trained before calibration, or without a validation
    split) or whose file does not hold a positive number."""
    try:
        value = json.loads((Path(folder) / CALIBRATION_FILE).read_text())["temperature"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)
