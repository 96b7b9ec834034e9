"""The machine-learning tasks the service knows."""

from enum import StrEnum


class TaskType(StrEnum):
    image_classification = "image_classification"
    text_classification = "text_classification"
