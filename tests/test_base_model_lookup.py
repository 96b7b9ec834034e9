"""Finding base models: what the API checks at submit (no download), and what each tiny model's config says."""

from __future__ import annotations

import pytest

import app.all_tables  # noqa: F401
from app.base_models.resolve import check_base_model, find_base_model, task_of_config
from app.errors import InvalidInput
from app.registry.tables import RegisteredModel
from app.tasktypes.types import TaskType
from app.teams.tables import Team

TEXT, IMAGE = TaskType.text_classification, TaskType.image_classification


def test_family_of_each_tiny_model_decides_its_learning_rate(db, models_dir):
    with db.session() as session:
        families = {
            n: find_base_model(session, models_dir, "t", n).family for n in ("tiny-bert", "tiny-vit", "tiny-timm")
        }
    assert families == {"tiny-bert": "text_encoder", "tiny-vit": "vision_transformer", "tiny-timm": "conv_image"}


def test_task_of_each_tiny_model(models_dir):
    assert task_of_config(models_dir / "tiny-bert") == TEXT
    assert task_of_config(models_dir / "tiny-vit") == IMAGE
    assert task_of_config(models_dir / "tiny-timm") == IMAGE
    assert task_of_config(models_dir / "no-such-folder") is None


def test_the_api_check_never_fetches_a_registered_model(db, models_dir, tmp_path):
    with db.session() as session:
        team = Team(name="lookup")
        session.add(team)
        session.flush()
        session.add(
            RegisteredModel(
                id="m" * 32,
                team_id=team.id,
                job_id=None,
                name="n",
                task=TEXT,
                base_model="tiny-bert",
                labels=["a", "b"],
                metrics={},
                storage_key="models/" + "m" * 32,
            )  # fmt: skip
        )
        session.flush()
        # check_base_model takes no artifact store: it cannot download. The ref says where the worker will look.
        ref = check_base_model(session, models_dir, team.id, "m" * 32, TEXT)
        assert (ref.folder, ref.storage_key, ref.task) == (None, "models/" + "m" * 32, TEXT)
        assert ref.family == "text_encoder"  # from the model it was fine-tuned from
        with pytest.raises(InvalidInput, match="text classification model, but the dataset is for image"):
            check_base_model(session, models_dir, team.id, "m" * 32, IMAGE)
        assert find_base_model(session, models_dir, "another-team", "m" * 32) is None  # team-scoped
        assert find_base_model(session, models_dir, team.id, "tiny-vit").folder == models_dir / "tiny-vit"
        for name in ("../tiny-bert", "/etc", "nothing-here"):
            assert find_base_model(session, models_dir, team.id, name) is None
