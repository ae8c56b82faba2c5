"""The GPU check's ``exact`` part: every fast path of the forward against the plain path, in the run's dtype.

One batch goes through the plain path of an fp32 copy (the reference) and, in the run's dtype (bf16 on a GPU, fp32
in the CPU dry run), through the plain path and each fast path. Each fast path's error (``e_seq``: the largest
error of a sequence's mean log-prob, in nats; ``e_grad``: the gradients' relative L2 error) must stay within
``max(2 x``, resp. ``1.5 x``, the plain path's own error in that dtype, floor) (gpu-notes.md, part A). Models:

- Llama (the 1b shape with four layers on a GPU, the tiny shape on the CPU): plain, default (block route, shared
  prompts, lean head), dense rows, padding-free rows; the route under SDPA's fused kernels only (CUDA).
- the same model in fp32 under bf16 autocast (what full fine-tuning with ``bf16: true`` runs without ZeRO-3);
- LoRA on every linear layer but the head (trainable adapters over a frozen base), and QLoRA (a 4-bit base,
  CUDA and bitsandbytes only: the head must stay a plain ``nn.Linear``);
- Liger's kernels as the host applies them under ``stage: simpo`` (CUDA only, in a child process: they patch the
  model classes), a sliding-window Mistral on sdpa and eager, and flash-attention 2 if it imports.

``python gpu_exact.py liger OUT.json`` is the Liger child.
"""

import contextlib
import copy
import importlib.util
import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def device_and_dtype(dry_run: bool) -> tuple[Any, Any]:
    import torch

    if torch.cuda.is_available() and not dry_run:
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def model_for(dry_run: bool, device: Any, dtype: Any, seed: int = 0, family: str = "llama", **extra: Any) -> Any:
    """A random-weight model of the check's shape (``family`` llama or mistral), on ``device`` in ``dtype``."""
    import torch
    from bench_setup import SHAPES
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    shape = dict(SHAPES["tiny"] if dry_run else SHAPES["1b"])
    if not dry_run:
        shape["num_hidden_layers"] = 4  # the 1b shape's layers, four of them: exact checks need no depth
    shape.setdefault("attn_implementation", "sdpa")
    shape.update(extra)
    vocab = 1024 if dry_run else 128256
    torch.manual_seed(seed)
    mistral = family == "mistral"
    config_class, model_class = (MistralConfig, MistralForCausalLM) if mistral else (LlamaConfig, LlamaForCausalLM)
    return model_class(config_class(vocab_size=vocab, **shape)).to(device=device, dtype=dtype)


def batch_for(dry_run: bool, vocab: int) -> dict[str, Any]:
    """Right-padded pairs, chosen rows first: 4 pairs of ~24 + 32 tokens on the CPU, 8 of ~256 + 384 on a GPU."""
    from layout_cost import collated

    batch = collated(4, 24, 32) if dry_run else collated(8, 256, 384)
    return {k: v.clamp(max=vocab - 1) if k != "attention_mask" else v for k, v in batch.items()}


def means_and_grads(model: Any, batch: dict[str, Any], config: Any, context: Any = None) -> tuple[Any, Any]:
    """(2B,) mean response log-probs and the flat gradient of their sum over the trainable parameters (fp32, CPU)."""
    import torch

    from simpo_plugin.lean import SequenceLogps

    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    moved = {k: v.to(device) for k, v in batch.items()}
    with context if context is not None else contextlib.nullcontext():
        sums, lengths = SequenceLogps(config)(model, model, moved)
        means = sums / lengths
    means.float().sum().backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])
    return means.detach().float().cpu(), grads.cpu()


def paths() -> dict[str, Any]:
    from simpo_plugin.lean import LeanConfig

    return {
        "plain": LeanConfig(lean_logps=False, prefix_sharing=False, attention_route=False),
        "default (route, shared prompts, lean head)": LeanConfig(),
        "dense rows (route off)": LeanConfig(attention_route=False),
        "padding-free (route off)": LeanConfig(padding_free=True, attention_route=False),
    }


def compare(check: Any, label: str, reference: tuple[Any, Any], model: Any, batch: dict[str, Any],
            chosen: list[str], low_precision: bool, context_factory: Any = None) -> None:  # fmt: skip
    """One row per path of ``chosen`` (plain first): its error against ``reference``, judged against plain's."""
    ref_means, ref_grads = reference
    errors = {}
    for name in ["plain", *chosen]:
        context = context_factory() if context_factory else None
        means, grads = means_and_grads(model, batch, paths()[name], context)
        e_seq = (means - ref_means).abs().max().item()
        e_grad = ((grads - ref_grads).norm() / ref_grads.norm()).item()
        errors[name] = (e_seq, e_grad)
    floor = (0.02, 0.03) if low_precision else (1e-4, 1e-4)
    base = errors["plain"]
    for name in chosen:
        e_seq, e_grad = errors[name]
        ok = e_seq <= max(2 * base[0], floor[0]) and e_grad <= max(1.5 * base[1], floor[1])
        numbers = f"e_seq {e_seq:.2e}, e_grad {e_grad:.2e} (plain: {base[0]:.2e}, {base[1]:.2e})"
        check.add("exact", f"{label}: {name}", "PASS" if ok else "FAIL", numbers)


def with_lora(model: Any, seed: int = 1) -> Any:
    """``model`` with LoRA r=8 on every linear layer but the head, its B matrices random (so every adapter learns)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # the A matrices' initialization: the same model under every launcher
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, lora_dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    return model


def part_exact(check: Any) -> None:
    import torch

    dry = check.dry_run
    device, dtype = device_and_dtype(dry)
    low = dtype != torch.float32
    label = f"llama {str(dtype).split('.')[-1]}"
    reference_model = model_for(dry, device, torch.float32)
    batch = batch_for(dry, reference_model.config.vocab_size)
    reference = means_and_grads(reference_model, batch, paths()["plain"])
    model = copy.deepcopy(reference_model).to(dtype)
    every = [name for name in paths() if name != "plain"]
    compare(check, label, reference, model, batch, every, low)
    _fused_sdpa(check, device, model, batch, reference)
    autocast_dtype = torch.bfloat16
    compare(check, "llama fp32 under bf16 autocast", reference, reference_model, batch,
            ["default (route, shared prompts, lean head)"], True,
            lambda: torch.autocast(device.type, dtype=autocast_dtype))  # fmt: skip
    del model
    _lora(check, dry, device, dtype, batch, reference_model)
    _qlora(check, dry, device)
    _liger(check, dry)
    _sliding_window(check, dry, device, dtype, batch)
    _flash_attention(check, dry, device, batch, reference)


def _fused_sdpa(check: Any, device: Any, model: Any, batch: dict[str, Any], reference: tuple[Any, Any]) -> None:
    name = "route under flash / mem-efficient / cuDNN SDPA only"
    if device.type != "cuda":
        check.add("exact", name, "SKIP", "CUDA only")
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fast = sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])
    try:
        means, _ = means_and_grads(model, batch, paths()["default (route, shared prompts, lean head)"], fast)
        check.add("exact", name, "PASS", f"e_seq {(means - reference[0]).abs().max().item():.2e}")
    except RuntimeError as exc:
        check.add("exact", name, "FINDING", str(exc)[:200])


def _lora(check: Any, dry: bool, device: Any, dtype: Any, batch: dict[str, Any], base: Any) -> None:
    """Adapters in fp32 over a base in the run's dtype, under autocast on a GPU (how the host trains LoRA)."""
    import torch

    reference_model = with_lora(copy.deepcopy(base))
    reference = means_and_grads(reference_model, batch, paths()["plain"])
    model = copy.deepcopy(reference_model)
    for param in model.parameters():
        if not param.requires_grad:
            param.data = param.data.to(dtype)
    context = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 else None
    compare(check, "LoRA (fp32 adapters, base in the run's dtype)", reference, model, batch,
            ["default (route, shared prompts, lean head)"], dtype != torch.float32, context)  # fmt: skip


def _qlora(check: Any, dry: bool, device: Any) -> None:
    name = "QLoRA (4-bit nf4 base, bf16 compute): default"
    if device.type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
        check.add("exact", name, "SKIP", "CUDA and bitsandbytes only")
        return
    import tempfile

    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        model_for(dry, torch.device("cpu"), torch.bfloat16).save_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, dtype=torch.bfloat16,
                                                     device_map={"": 0})  # fmt: skip
    model = with_lora(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False))
    head = model.get_output_embeddings()
    batch = batch_for(dry, model.config.vocab_size)
    context = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    reference = means_and_grads(model, batch, paths()["plain"], context())
    if type(head) is not torch.nn.Linear:
        check.add("exact", name, "FAIL", f"the head is a {type(head).__name__}, not a plain nn.Linear")
        return
    compare(check, "QLoRA (4-bit nf4 base, bf16 compute, against its own plain path)", reference, model, batch,
            ["default (route, shared prompts, lean head)"], True, context)  # fmt: skip


def _liger(check: Any, dry: bool) -> None:
    name = "Liger (RMSNorm, RoPE, SwiGLU as under stage: simpo): default"
    import torch

    if dry or not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None:
        check.add("exact", name, "SKIP", "CUDA and liger-kernel only (Triton kernels)")
        return
    out = check.out / "liger.json"
    result = subprocess.run([sys.executable, __file__, "liger", str(out)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 or not out.exists():
        check.add("exact", name, "FAIL", f"exit {result.returncode}: {result.stderr[-300:]}")
        return
    for row in json.loads(out.read_text()):
        check.add(**row)


def _sliding_window(check: Any, dry: bool, device: Any, dtype: Any, batch: dict[str, Any]) -> None:
    """Mistral with a window shorter than every segment: the route and dense rows must apply it."""
    import torch

    window = 8 if dry else 128
    for attention in ("sdpa", "eager"):
        reference_model = model_for(dry, device, torch.float32, family="mistral", sliding_window=window,
                                    attn_implementation=attention)  # fmt: skip
        reference = means_and_grads(reference_model, batch, paths()["plain"])
        model = reference_model.to(dtype)
        chosen = ["default (route, shared prompts, lean head)", "dense rows (route off)"]
        compare(check, f"mistral window {window} {attention}", reference, model, batch, chosen, dtype != torch.float32)


def _flash_attention(check: Any, dry: bool, device: Any, batch: dict[str, Any], reference: tuple[Any, Any]) -> None:
    name = "flash-attention 2: padding-free"
    if device.type != "cuda" or importlib.util.find_spec("flash_attn") is None:
        check.add("exact", name, "SKIP", "CUDA and flash-attn only (flash-attn has no wheel on PyPI)")
        return
    import torch

    model = model_for(dry, device, torch.bfloat16, attn_implementation="flash_attention_2")
    compare(check, "llama bf16 flash_attention_2", reference, model, batch, ["padding-free (route off)"], True)


def _liger_child(out: Path) -> None:
    """Apply Liger as the host does under ``stage: simpo`` (no fused linear cross-entropy), then the llama rows."""
    import torch
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=False)  # fmt: skip

    from gpu_check import Check

    rows = Check(out.parent, dry_run=False, deadline=math.inf)
    device = torch.device("cuda")
    reference_model = model_for(False, device, torch.float32)
    batch = batch_for(False, reference_model.config.vocab_size)
    reference = means_and_grads(reference_model, batch, paths()["plain"])
    model = reference_model.to(torch.bfloat16)
    compare(rows, "Liger llama bf16", reference, model, batch, ["default (route, shared prompts, lean head)"], True)
    out.write_text(json.dumps([asdict(row) for row in rows.rows]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["liger"]:
        _liger_child(Path(sys.argv[2]))
