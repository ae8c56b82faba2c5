"""Scorers: one float per (prompt, response), unrounded. Exactly one is configured per run.

- :class:`FunctionScorer`: ``reward_function: package.module:function`` (or ``path/file.py:function``), called
  as ``function(prompt_messages, response_text)``; verifiable rewards (format, length, correctness).
- :class:`ClassifierScorer`: a Hugging Face sequence-classification reward model (ArmoRM-style models that
  return ``score``, else the first logit), on the conversation rendered with the reward model's own chat template.
- :class:`ValueHeadScorer`: a LLaMA-Factory ``stage: rm`` output (a model or LoRA adapter plus
  ``value_head.safetensors``), loaded through the host and scored, as the host's reward trainer does, by the
  value at the last token of the template-encoded conversation.
"""

import importlib
import importlib.util
import json
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..errors import PairsConfigError


if TYPE_CHECKING:
    from ..sampling import Prompt


Item = tuple["Prompt", str]


class Scorer(Protocol):
    def score(self, items: list[Item]) -> list[float]: ...


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def import_callable(spec: str, key: str = "reward_function") -> Callable[..., Any]:
    """Resolve ``package.module:function`` (the current directory is importable) or ``path/file.py:function``."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise PairsConfigError(f"`{key}` must look like `package.module:function` or `file.py:function`: `{spec}`.")
    try:
        if target.endswith(".py") or os.sep in target:
            path = Path(target).resolve()
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or not path.is_file():
                raise FileNotFoundError(f"no file {path}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(target)
        function = getattr(module, name)
    except Exception as exc:  # noqa: BLE001 - any import failure is a config error to report in one line
        raise PairsConfigError(f"`{key}: {spec}` cannot be imported: {exc!r}.") from exc
    if not callable(function):
        raise PairsConfigError(f"`{key}: {spec}` is not callable.")
    return function


class FunctionScorer:
    """``function(messages, response) -> float``; an exception or a non-number is one line naming the function, the
    prompt and the cause (the traceback chained to it)."""

    def __init__(self, spec: str, key: str = "reward_function") -> None:
        self.spec, self.key, self.function = spec, key, import_callable(spec, key)

    def score(self, items: list[Item]) -> list[float]:
        scores = []
        for prompt, response in items:
            try:
                value = self.function(prompt.chat(), response)
            except Exception as exc:  # noqa: BLE001 - the user's code: named with the prompt, one line
                raise PairsConfigError(
                    f"`{self.key}: {self.spec}` failed on prompt {prompt.source}: {exc!r}; fix the function and run "
                    "again (the finished samples and answers are kept)."
                ) from exc
            if not isinstance(value, numbers.Real):
                raise PairsConfigError(
                    f"`{self.key}: {self.spec}` returned {value!r} ({type(value).__name__}) for prompt "
                    f"{prompt.source}; it must return a number. The samples are saved: fix it and run again."
                )
            scores.append(float(value))
        return scores


def _device_and_dtype(device: Any = None) -> tuple[torch.device, torch.dtype]:
    """``device`` (default: the current CUDA device, else the CPU) and the dtype a reward model runs in there."""
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


class ClassifierScorer:
    def __init__(self, path: str, batch_size: int, trust_remote_code: bool, device: Any = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path, self.batch_size = path, batch_size
        self.device, dtype = _device_and_dtype(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, trust_remote_code=trust_remote_code, dtype=dtype, output_loading_info=True
            )
        except (OSError, ValueError, KeyError) as exc:
            raise PairsConfigError(
                f"`reward_model: {path}` could not be loaded as a sequence-classification reward model: {exc}"
            ) from exc
        if info.get("missing_keys"):
            missing = ", ".join(sorted(info["missing_keys"])[:3])
            raise PairsConfigError(
                f"`reward_model: {path}` is not a sequence-classification reward model: its checkpoint lacks "
                f"{missing}, which would be random. Give a reward model (e.g. ArmoRM) or a `stage: rm` output dir."
            )
        if not self.tokenizer.chat_template:
            raise PairsConfigError(
                f"`reward_model: {path}`: its tokenizer has no chat template, which a classifier reward model needs "
                "to see the conversation as it was trained; add `chat_template` to its tokenizer_config.json."
            )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(self.device).eval()

    def score(self, items: list[Item]) -> list[float]:
        texts = [
            self.tokenizer.apply_chat_template(
                prompt.chat() + [{"role": "assistant", "content": response}], tokenize=False
            )
            for prompt, response in items
        ]
        scores: list[float] = []
        for batch in batches(texts, self.batch_size):
            inputs = self.tokenizer(batch, add_special_tokens=False, padding=True, return_tensors="pt")
            with torch.inference_mode():
                output = self.model(**inputs.to(self.device))
            values = getattr(output, "score", None)
            values = output.logits if values is None else values
            scores += values.float().reshape(len(batch), -1)[:, 0].tolist()
        return scores


def value_head_checkpoint(path: str) -> bool:
    from llamafactory.extras.constants import V_HEAD_SAFE_WEIGHTS_NAME, V_HEAD_WEIGHTS_NAME

    return any(os.path.isfile(os.path.join(path, name)) for name in (V_HEAD_SAFE_WEIGHTS_NAME, V_HEAD_WEIGHTS_NAME))


class ValueHeadScorer:
    def __init__(self, path: str, template: str | None, batch_size: int, model_args: Any, device: Any = None) -> None:
        from llamafactory.data import get_template_and_fix_tokenizer
        from llamafactory.hparams import FinetuningArguments, get_infer_args
        from llamafactory.model import load_model, load_tokenizer

        self.batch_size = batch_size
        keys: dict[str, Any] = {"model_name_or_path": path, "template": template}
        adapter_config = Path(path) / "adapter_config.json"
        if adapter_config.is_file():  # a LoRA reward model: base model + adapter + value head
            base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
            keys = {"model_name_or_path": base, "adapter_name_or_path": path, "template": template}
        keys.update(trust_remote_code=model_args.trust_remote_code, infer_dtype=model_args.infer_dtype)
        rm_model_args, rm_data_args, _, _ = get_infer_args({k: v for k, v in keys.items() if v is not None})
        if device is not None or not torch.cuda.is_available():
            rm_model_args.device_map = None  # TRL's value-head wrapper refuses a device map that names the CPU
        else:
            from ..sampling import one_device

            one_device(rm_model_args)
        self.tokenizer = load_tokenizer(rm_model_args)["tokenizer"]
        self.template = get_template_and_fix_tokenizer(self.tokenizer, rm_data_args)
        self.model = load_model(self.tokenizer, rm_model_args, FinetuningArguments(), False, add_valuehead=True)
        self.model.eval()
        if device is not None:
            self.model.to(device)
        self.pad_id = self.tokenizer.pad_token_id or 0

    def encode(self, prompt: "Prompt", response: str) -> list[int]:
        messages = prompt.messages + [{"role": "assistant", "content": response}]
        prompt_ids, response_ids = self.template.encode_oneturn(self.tokenizer, messages, prompt.system, prompt.tools)
        if self.template.efficient_eos:
            response_ids = response_ids + [self.tokenizer.eos_token_id]
        return prompt_ids + response_ids

    def score(self, items: list[Item]) -> list[float]:
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for batch in batches([self.encode(prompt, response) for prompt, response in items], self.batch_size):
            width = max(len(ids) for ids in batch)
            input_ids = torch.tensor([ids + [self.pad_id] * (width - len(ids)) for ids in batch], device=device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch], device=device)
            with torch.inference_mode():
                _, _, values = self.model(input_ids=input_ids, attention_mask=mask, return_dict=True, use_cache=False)
            last = (mask.sum(dim=-1, keepdim=True) - 1).to(values.device)
            scores += values.float().gather(dim=-1, index=last).squeeze(-1).tolist()
        return scores


def check_scorer(settings: Any, model_args: Any) -> None:
    """Catch a wrong scorer before hours of sampling: import the function, or look at the reward model's config."""
    if settings.reward_function:
        import_callable(settings.reward_function)
        return
    path = settings.reward_model
    if os.path.isdir(path) and value_head_checkpoint(path):
        return
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise PairsConfigError(f"`reward_model: {path}` cannot be read: {exc}") from exc
    architectures = getattr(config, "architectures", None) or []
    heads = ("Classification", "Reward", "Score", "Regression")
    if architectures and not any(word in arch for arch in architectures for word in heads):
        raise PairsConfigError(
            f"`reward_model: {path}` is a {', '.join(architectures)}, not a reward model: give a sequence-"
            "classification reward model (e.g. ArmoRM) or the output dir of a LLaMA-Factory `stage: rm` run."
        )


def load_scorer(settings: Any, model_args: Any, template_name: str | None, device: Any = None) -> Scorer:
    """The configured scorer (``reward_model`` with or without a value head, or ``reward_function``).

    ``device``: where a reward model lives, whole (a training rank's own device); None: this process's GPU
    (``sampling/devices.py``), else the CPU.
    """
    if settings.reward_function:
        return FunctionScorer(settings.reward_function)
    path, template = settings.reward_model, settings.reward_template or template_name
    if os.path.isdir(path) and value_head_checkpoint(path):
        return ValueHeadScorer(path, template, settings.reward_batch_size, model_args, device=device)
    return ClassifierScorer(path, settings.reward_batch_size, model_args.trust_remote_code, device=device)


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
