"""A pretrained part that cannot be loaded is one line naming the model and how to pass a local directory."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError
from transformers import AutoTokenizer

from ser_lightning.nn.pretrained import PretrainedNotFound, pretrained, pretrained_error


def failing(cause: BaseException):
    """A loader that fails like ``transformers``: an ``OSError`` raised from the hub's error."""

    def load(source: str, **kwargs):
        raise OSError(f"We couldn't load {source}") from cause

    return load


def test_offline_miss_names_the_model_and_the_fix():
    with pytest.raises(PretrainedNotFound) as info:
        pretrained(failing(LocalEntryNotFoundError("not cached")), "org/model", what="text encoder")
    assert str(info.value) == (
        "could not load 'org/model' (text encoder): no network here and not in the Hugging Face cache; "
        "pass a local directory holding the model"
    )
    keyed = info.value.with_key("model.init_args.text_encoder.init_args.model")
    assert str(keyed).endswith("pass a local directory instead, e.g. --model.init_args.text_encoder.init_args.model "
                               "/path/to/model")  # fmt: skip
    assert "\n" not in str(keyed)


def test_reasons_from_the_hub_errors():
    response = type("Response", (), {"status_code": 404, "headers": {}, "request": None})()
    missing_repo = RepositoryNotFoundError("404", response=response)
    with pytest.raises(PretrainedNotFound, match=r"\(audio encoder\): no such model on the Hugging Face Hub;"):
        pretrained(failing(missing_repo), "org/typo", what="audio encoder")
    with pytest.raises(PretrainedNotFound, match=r"'/no/such/dir' \(x\): no such directory;"):
        pretrained(failing(HFValidationError("Repo id must be ...")), "/no/such/dir", what="x")


def test_success_passes_arguments_through():
    assert pretrained(lambda s, *a, **k: (s, a, k), "org/model", 1, what="x", local_files_only=True) == (
        "org/model",
        (1,),
        {"local_files_only": True},
    )


def test_a_plain_value_error_is_not_a_missing_model():
    def load(source: str):
        raise ValueError("bad argument")

    with pytest.raises(ValueError, match="bad argument"):
        pretrained(load, "org/model", what="x")


def test_a_local_directory_without_a_model(tmp_path):
    with pytest.raises(PretrainedNotFound, match=r"could not load '.*' \(text tokenizer\): "):
        pretrained(AutoTokenizer.from_pretrained, tmp_path, what="text tokenizer")


def test_a_real_offline_lookup_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    with pytest.raises(PretrainedNotFound, match="no network here and not in the Hugging Face cache"):
        pretrained(AutoTokenizer.from_pretrained, "some/unknown-model", what="text tokenizer")


def test_found_inside_wrapping_exceptions():
    inner = PretrainedNotFound("org/model", "x", "why")
    wrapped = ValueError("Does not validate against any of the Union subtypes")  # jsonargparse's wrapper
    wrapped.__cause__ = inner
    last = RuntimeError("during handling")
    last.__context__ = wrapped
    assert pretrained_error(last) is inner
    assert pretrained_error(ValueError("other")) is None
