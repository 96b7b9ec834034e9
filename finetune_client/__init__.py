"""A Python client for the fine-tuning service's REST API (needs only httpx and pydantic).

from finetune_client import Client

client = Client()  # FINETUNE_URL / FINETUNE_API_KEY, or ~/.config/finetune/config.toml
dataset = client.datasets.upload("reviews.csv", task="text_classification")
job = client.jobs.create(dataset.id, "minilm-l6", {"max_length": 64})
job = client.jobs.wait(job.id, on_progress=lambda p: print(p.job.step, p.job.total_steps))
print(client.jobs.report(job.id).accuracy)
print(client.predict(["a joy to watch"], model=job.model_id, top_k=2).predictions)
"""

from finetune_client.client import Aliases, Client, Datasets, Models
from finetune_client.config import config_path
from finetune_client.errors import (
    ApiError,
    BadRequest,
    ConfigError,
    Conflict,
    FinetuneError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    ServiceUnreachable,
    Unauthorized,
    WaitTimeout,
)
from finetune_client.jobs import Jobs
from finetune_client.predictions import Predictions
from finetune_client.sweeps import Sweeps
from finetune_client.types import (
    Alias,
    BestTrial,
    BudgetUsed,
    Checkpoint,
    Dataset,
    Event,
    Importances,
    Job,
    Metric,
    Model,
    Prediction,
    PredictionRun,
    PredictResult,
    Progress,
    Report,
    StreamMessage,
    Sweep,
    Trial,
    Usage,
)

__all__ = [
    "Alias", "Aliases", "ApiError", "BadRequest", "BestTrial", "BudgetUsed", "Checkpoint", "Client", "ConfigError",
    "Conflict", "Dataset", "Datasets", "Event", "FinetuneError", "Forbidden", "Importances", "InvalidRequest", "Job",
    "Jobs", "Metric", "Model", "Models", "NotFound", "PayloadTooLarge", "PredictResult", "Prediction", "PredictionRun",
    "Predictions", "Progress",
    "RateLimited", "Report", "ServerError", "ServiceUnavailable", "ServiceUnreachable", "StreamMessage", "Sweep",
    "Sweeps", "Trial", "Unauthorized", "Usage", "WaitTimeout", "config_path",
]  # fmt: skip
