"""What the service answers, as pydantic models that mirror its JSON. Fields the service adds later are kept
(`extra="allow"`: `model.model_extra`), never an error."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "pruned"})
SWEEP_TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Dataset(ApiModel):
    id: str
    name: str
    task: str
    filename: str = ""
    labels: list[str] = []
    counts: dict[str, dict[str, int]] = {}  # split -> label -> examples
    warnings: list[str] = []
    num_examples: int = 0
    size_bytes: int = 0
    splits_given: bool = False
    created_at: datetime | None = None


class Job(ApiModel):
    id: str
    dataset_id: str | None = None
    task: str = ""
    base_model: str = ""
    hyperparameters: dict[str, Any] = {}
    status: str
    progress: float = 0.0
    epoch: int = 0
    step: int = 0
    total_steps: int | None = None
    best_metric_name: str | None = None
    best_metric: float | None = None
    error: str | None = None
    attempt: int = 0
    model_id: str | None = None
    below_baseline: bool = False
    cancel_requested: bool = False
    priority: str = "normal"
    resources: dict[str, Any] = {}
    queue_position: int | None = None  # queued: 1 if next in its pool
    waiting_for: str | None = None  # queued: claim, free_worker, turn, cap or worker
    waiting_detail: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        """Succeeded, failed or cancelled: nothing will change any more."""
        return self.status in TERMINAL_STATUSES


class Metric(ApiModel):
    name: str
    step: int
    epoch: float
    value: float
    at: datetime | None = None


class Event(ApiModel):
    id: int
    kind: str
    message: str
    attempt: int = 0
    at: datetime | None = None


class Checkpoint(ApiModel):
    id: str
    step: int
    epoch: int
    kind: str
    storage_key: str = ""
    metric_name: str | None = None
    metric_value: float | None = None
    is_best: bool = False
    created_at: datetime | None = None


class ClassScores(ApiModel):
    precision: float
    recall: float
    f1: float
    support: int


class ConfusionMatrix(ApiModel):
    labels: list[str]
    matrix: list[list[int]]  # rows: true label, columns: predicted label


class Calibration(ApiModel):
    """Expected calibration error over 15 confidence bins (reliability diagram), before and after dividing the
    logits by the temperature fitted on the validation split (what predict(calibrated=True) applies)."""

    ece: float | None = None
    bins: list[dict[str, Any]] = []  # lower, upper, count, confidence, accuracy
    temperature: float | None = None
    ece_calibrated: float | None = None
    bins_calibrated: list[dict[str, Any]] | None = None


class ConfusedPair(ApiModel):
    true_label: str
    predicted_label: str
    count: int


class Mistake(ApiModel):
    """A misclassified test example: its position in the split, the labels and their scores, and a `text` snippet
    or an `image_url` (GET it with the client's key)."""

    index: int
    true_label: str
    predicted_label: str
    score: float
    true_label_score: float
    text: str | None = None
    image: str | None = None
    image_url: str | None = None


class Report(ApiModel):
    """The evaluation of the best checkpoint on the test split, with the baselines on the same splits."""

    split: str = "test"
    num_examples: int = 0
    loss: float | None = None
    accuracy: float | None = None
    per_class: dict[str, ClassScores] = {}
    macro_avg: ClassScores | None = None
    weighted_avg: ClassScores | None = None
    confusion_matrix: ConfusionMatrix | None = None
    best_step: int | None = None
    steps_trained: int | None = None
    strategy: str | None = None
    baselines: dict[str, dict[str, Any]] = {}  # majority_class, linear_probe: accuracy, macro_f1, ...
    compared_to_baselines: dict[str, float] = {}  # accuracy_over_majority_class, accuracy_over_linear_probe, ...
    below_baseline: bool = False
    calibration: Calibration | None = None
    confused_pairs: list[ConfusedPair] = []  # the most frequent mistakes, most frequent first
    misclassified: list[Mistake] = []  # the most confident mistakes first
    thresholds: dict[str, Any] | None = None  # two classes: positive_label, points (threshold, precision, recall)
    checkpoint: dict[str, Any] | None = None  # a checkpoint's report: id, step, epoch, is_best


class Model(ApiModel):
    id: str
    name: str = ""
    task: str = ""
    base_model: str = ""
    job_id: str | None = None
    labels: list[str] = []
    metrics: dict[str, Any] = {}  # test_accuracy, test_macro_f1, best_step, baselines' accuracies
    below_baseline: bool = False
    runtimes: dict[str, Any] = {}  # runtime -> its conversion: test_accuracy beside torch_test_accuracy, ...
    created_at: datetime | None = None


class Route(ApiModel):
    model_id: str
    weight: int  # percent of the alias's requests


class Alias(ApiModel):
    name: str
    model_id: str  # the model taking the most traffic
    routes: list[Route] = []  # the split by weight ([model_id at 100] without one)
    shadow_model_id: str | None = None
    runtime: str = "torch"  # how its models run: torch, onnx or int8
    updated_at: datetime | None = None


class ModelTraffic(ApiModel):
    model_id: str
    role: str  # "route" or "shadow"
    requests: int
    inputs: int
    errors: int
    mean_latency_ms: float | None = None
    compared: int = 0  # shadow: inputs whose top label was compared with the served model's
    agreed: int = 0
    agreement: float | None = None


class AliasStats(ApiModel):
    alias: Alias
    models: list[ModelTraffic]


class PredictionRun(ApiModel):
    """A batch prediction run (POST /predictions): a dataset scored by a model on a worker."""

    id: str
    status: str
    model_id: str | None = None
    model_ref: str
    dataset_id: str | None = None
    uploaded: bool = False
    split: str | None = None
    top_k: int
    rows_total: int
    rows_done: int
    error: str | None = None
    size_bytes: int = 0  # stored (an uploaded file, the results), counted in the team's storage
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class Prediction(ApiModel):
    label: str
    score: float


class PredictResult(ApiModel):
    model_id: str
    runtime: str = "torch"  # how the model ran (the alias's runtime)
    predictions: list[list[Prediction]]  # one top-k list per input, best first
    temperature: float | None = None  # the temperature that scaled the logits (calibrated requests)


class Amount(ApiModel):
    used: int
    limit: int


class StorageUsage(Amount):
    datasets: int = 0
    models: int = 0
    checkpoints: int = 0
    predictions: int = 0


class Usage(ApiModel):
    team: str
    active_jobs: Amount
    storage_bytes: StorageUsage


@dataclass(frozen=True)
class StreamMessage:
    """One message of GET /jobs/{id}/stream: `event` is status, metric, event or end (heartbeat only when asked
    for); `data` is a Job (status, end), a Metric or an Event, or the decoded JSON of an event kind this client does
    not know; `id` is the resume point the server gave ("<metric_id>-<event_id>")."""

    event: str
    data: Any
    id: str | None = None


@dataclass
class Progress:
    """What `jobs.wait()` hands its `on_progress` callback: the job as last seen, the newest row of each metric
    name, and the newest event."""

    job: Job
    metrics: dict[str, Metric] = field(default_factory=dict)
    last_event: Event | None = None


class BestTrial(ApiModel):
    number: int
    job_id: str | None = None
    model_id: str | None = None
    hyperparameters: dict[str, Any] = {}
    objective: float


class BudgetUsed(ApiModel):
    steps: int = 0
    steps_limit: int | None = None
    seconds: float = 0.0
    seconds_limit: float | None = None


class Sweep(ApiModel):
    id: str
    status: str
    dataset_id: str | None = None
    base_model: str = ""
    spec: dict[str, Any] = {}  # the spec as the service holds it: search_space, objective, max_trials, budget, ...
    trials_started: int = 0
    counts: dict[str, int] = {}  # trials by state: queued, running, succeeded, pruned, failed, rejected, ...
    best_trial: BestTrial | None = None
    budget_used: BudgetUsed = BudgetUsed()
    stop_reason: str | None = None
    promoted_model_id: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        """Succeeded, failed or cancelled: no trial will start or end any more."""
        return self.status in SWEEP_TERMINAL_STATUSES


class Trial(ApiModel):
    number: int
    job_id: str | None = None
    status: str  # the job's status; rejected: the service refused the trial's spec (see error)
    hyperparameters: dict[str, Any] = {}
    objective: float | None = None
    told: str | None = None  # what the study was told: complete, pruned or fail; None while it runs
    steps: int = 0
    model_id: str | None = None
    error: str | None = None
    created_at: datetime | None = None


class Importances(ApiModel):
    completed_trials: int
    importances: dict[str, float] = {}  # fANOVA importance of each searched hyperparameter, summing to 1
