"""Host keys that older llamafactory versions took, and host values its parser passes on unchecked: one line each."""

from importlib import metadata

import pytest

from simpo_plugin.errors import PairsConfigError, SimPOArgumentError
from simpo_plugin.host_keys import REMOVED, RENAMED, check_values, moved_key


pytestmark = pytest.mark.host  # the host's dataclasses: `make test-lowest` runs it too


def release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3])


HOST = release(metadata.version("llamafactory"))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("new_special_tokens", "`new_special_tokens` was renamed `add_special_tokens` in llamafactory 0.9.3; write "
                               "`add_special_tokens` instead (the same comma-separated tokens; `init_special_tokens`"),
        ("image_dir", "`image_dir` was renamed `media_dir` in llamafactory 0.9.2"),
        ("video_resolution", "`video_resolution` was renamed `video_max_pixels` in llamafactory 0.9.2"),
        ("train_mm_proj_only", "`train_mm_proj_only` was removed in llamafactory 0.9.2; to train only the multimodal "
                               "projector set `freeze_language_model: true`"),
        pytest.param("ray_storage_path",
                     "`ray_storage_path` was removed in llamafactory 0.9.5; Ray training now starts",
                     marks=pytest.mark.skipif(HOST < (0, 9, 5), reason="llamafactory 0.9.4 still takes the key")),
        ("visual_inputs", "`visual_inputs` was removed in llamafactory 0.9.0; a multimodal model is recognised"),
    ],
)  # fmt: skip
def test_training_names_what_became_of_an_old_key_before_any_spelling_match(key, message) -> None:
    from simpo_plugin.host.config_keys import check_keys
    from simpo_plugin.train.hparams import SimPOArguments

    with pytest.raises(SimPOArgumentError) as error:
        check_keys({"stage": "simpo", key: "x", "simpo_gama": 1.0}, SimPOArguments, "simpo")
    text = str(error.value)
    assert text.startswith(message) and "\n" not in text and "did you mean `init_special_tokens`" not in text
    assert text.endswith("(in the command line); unknown too: `simpo_gama` (did you mean `simpo_gamma`?).")


def test_the_table_names_no_key_the_installed_host_takes() -> None:
    """Keys renamed or removed up to the installed host are unknown to it; those removed later it still takes."""
    from simpo_plugin.host.config_keys import host_train_classes, known_keys

    known = known_keys(*host_train_classes())
    gone = {key for key, (_, version, _) in RENAMED.items() if release(version) <= HOST}
    gone |= {key for key, (version, _) in REMOVED.items() if release(version) <= HOST}
    later = {key for key, (version, _) in REMOVED.items() if release(version) > HOST}
    assert gone and not gone & known and later <= known
    assert {new for new, version, _ in RENAMED.values() if release(version) <= HOST} <= known  # keys of the host
    assert moved_key("learning_rate") is None


def test_pairs_and_eval_name_an_old_host_key_too() -> None:
    from simpo_plugin.evaluation.args import EvalArguments
    from simpo_plugin.pairs.args import PairsArguments
    from simpo_plugin.sampling.settings import check_keys

    with pytest.raises(PairsConfigError, match=r"^`new_special_tokens` was renamed `add_special_tokens` .* "
                                               r"\(in the config of `simpo-plugin pairs`\)\.$"):  # fmt: skip
        check_keys({"new_special_tokens": "<x>"}, PairsArguments)
    with pytest.raises(PairsConfigError, match=r"^`image_resolution` was renamed `image_max_pixels`"):
        check_keys({"image_resolution": 512}, EvalArguments)


def _train_classes() -> list[type]:
    from simpo_plugin.host.config_keys import host_train_classes

    return host_train_classes()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_samples", "12,4", "`max_samples` must be an integer, got '12,4'."),
        ("max_samples", [12, 4], "`max_samples` takes one value, an integer, got a list: [12, 4]."),
        ("cutoff_len", 1.5, "`cutoff_len` must be an integer, got 1.5."),
        ("learning_rate", "fast", "`learning_rate` must be a number, got 'fast'."),
        ("do_train", "maybe", "`do_train` must be true or false, got 'maybe'."),
        ("num_train_epochs", {"a": 1}, "`num_train_epochs` takes one value, a number, got a mapping: {'a': 1}."),
    ],
)
def test_a_host_value_of_the_wrong_type_is_one_line(key, value, message) -> None:
    with pytest.raises(SimPOArgumentError) as error:
        check_values({key: value}, _train_classes())
    assert str(error.value) == message


def test_a_quoted_value_that_reads_as_the_type_is_passed_on_as_that_type() -> None:
    raw = {"max_samples": "12", "learning_rate": "1e-5", "do_train": "false", "dataset": "a,b", "max_steps": None}
    check_values(raw, _train_classes())
    assert raw == {"max_samples": 12, "learning_rate": 1e-5, "do_train": False, "dataset": "a,b", "max_steps": None}


def test_pairs_checks_the_host_values_before_the_host_reads_them() -> None:
    from simpo_plugin.pairs.args import PairsArguments
    from simpo_plugin.sampling.settings import parse_args

    raw = {
        "model_name_or_path": "m",
        "dataset": "d",
        "output_dir": "o",
        "reward_function": "m:f",
        "max_samples": "12,4",
    }
    with pytest.raises(PairsConfigError, match=r"^`max_samples` must be an integer, got '12,4'\.$"):
        parse_args(raw, PairsArguments)
