"""The GPU check's ``zero3`` part: the lean forward on a ZeRO-3-partitioned model, one process (gpu-notes.md, part B).

Run as ``torchrun --nproc_per_node 1 gpu_zero3.py OUT.json [--dry-run]`` by ``gpu_check.py`` (NCCL on a GPU, gloo
and DeepSpeed's CPU accelerator in the dry run). One process still partitions, releases and gathers every
parameter. Per DeepSpeed configuration (the examples' ``ds_z3_config.json`` with ``auto`` filled as the host fills
it, then one variation each: ``overlap_comm`` with a small prefetch bucket, ``stage3_max_reuse_distance: 0``,
``offload_param: cpu``, LoRA over a partitioned frozen base):

- two steps of the default path through the engine; the first step's mean log-probs (``e_seq``) and full
  gradients (``deepspeed.utils.safe_get_full_grad``, ``e_grad``) against the same path without ZeRO;
- the head's weight released (``NOT_AVAILABLE``) after the backward, and on CUDA the allocated memory after the
  step within 64 MiB of before it (nothing the head gathered is kept);
- on the first configuration, greedy generation on the partitioned model against the model gathered once
  (``simpo_plugin.train.gathering.whole_for_generation``, what the probes do): the same answers, and the time
  of each.

Writes a list of rows (part, check, verdict, numbers) to OUT.json.
"""

import copy
import gc
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gpu_exact import batch_for, device_and_dtype, model_for, with_lora


ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
VARIANTS: dict[str, dict[str, Any]] = {
    "examples' ds_z3_config (overlap_comm off)": {},
    "overlap_comm on, prefetch bucket 1e6": {"overlap_comm": True, "stage3_prefetch_bucket_size": 1e6},
    "stage3_max_reuse_distance 0": {"stage3_max_reuse_distance": 0},
    "offload_param cpu": {"offload_param": {"device": "cpu", "pin_memory": True}},
    "LoRA r=8 over a partitioned frozen base": {},
}


def deepspeed_config(variant: dict[str, Any], hidden: int, cuda: bool) -> dict[str, Any]:
    """The examples' ZeRO-3 file with ``auto`` filled as transformers fills it for one process, then ``variant``."""
    config = json.loads((ROOT / "examples" / "deepspeed" / "ds_z3_config.json").read_text())
    config.update(train_batch_size=1, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1,
                  gradient_clipping=1.0, zero_force_ds_cpu_optimizer=False)  # fmt: skip
    config["fp16"] = {"enabled": False}
    config["bf16"] = {"enabled": cuda}
    zero = config["zero_optimization"]
    zero.update(reduce_bucket_size=hidden * hidden, stage3_prefetch_bucket_size=int(0.9 * hidden * hidden),
                stage3_param_persistence_threshold=10 * hidden)  # fmt: skip
    if not cuda:
        variant = {k: v for k, v in variant.items() if k != "offload_param"} | (
            {"offload_param": {"device": "cpu", "pin_memory": False}} if "offload_param" in variant else {}
        )
    zero.update(variant)
    return config


def flat_grads(named: dict[str, Any]) -> Any:
    import torch

    return torch.cat([named[name].float().flatten().cpu() for name in sorted(named)])


def run(out: Path, dry: bool) -> list[dict[str, str]]:
    import deepspeed
    import torch
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    from deepspeed.utils import safe_get_full_grad
    from gpu_check import Check
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from simpo_plugin.lean import LeanConfig, SequenceLogps
    from simpo_plugin.train.gathering import whole_for_generation

    rows = Check(out.parent, dry, deadline=math.inf)

    def add(check: str, verdict: str, numbers: str = "") -> None:
        rows.add("zero3", check, verdict, numbers)

    device, dtype = device_and_dtype(dry)
    cuda = device.type == "cuda"
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(0)
    folder = out.parent / "zero3-model"
    model_for(dry, torch.device("cpu"), dtype).save_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    batch = {k: v.to(device) for k, v in batch_for(dry, base.config.vocab_size).items()}
    hidden = base.config.hidden_size
    default = LeanConfig()
    floor = (0.02, 0.03) if dtype != torch.float32 else (1e-4, 1e-4)

    def reference(model: Any) -> tuple[Any, Any]:
        model.zero_grad(set_to_none=True)
        sums, lengths = SequenceLogps(default)(model, model, batch)
        means = sums / lengths
        means.float().sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        return means.detach().float().cpu(), flat_grads(grads)

    references = {"whole": reference(base), "lora": reference(with_lora(copy.deepcopy(base)))}
    del base
    for name, variant in VARIANTS.items():
        lora = name.startswith("LoRA")
        config = deepspeed_config(variant, hidden, cuda)
        keep = HfDeepSpeedConfig(config)  # noqa: F841  (transformers reads it through a weak reference)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)  # built inside zero.Init: partitioned
        if lora:
            model = with_lora(model)
        params = [p for p in model.parameters() if p.requires_grad]
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config,
                                          optimizer=torch.optim.AdamW(params, lr=0.0))  # fmt: skip
        forward = SequenceLogps(default)
        head = engine.module.get_output_embeddings().weight
        started = time.perf_counter()
        try:
            for step in range(2):
                before = torch.cuda.memory_allocated() if cuda else 0
                sums, lengths = forward(engine, engine.module, batch)
                means = sums / lengths
                engine.backward(means.float().sum())
                if step == 0:
                    named = {n: safe_get_full_grad(p) for n, p in engine.module.named_parameters() if p.requires_grad}
                    released = head.ds_status == ZeroParamStatus.NOT_AVAILABLE
                engine.step()
                if step == 0:
                    grown = (torch.cuda.memory_allocated() - before) / MIB if cuda else 0.0
                    ref_means, ref_grads = references["lora" if lora else "whole"]
                    e_seq = (means.detach().float().cpu() - ref_means).abs().max().item()
                    grads = flat_grads(named)
                    e_grad = ((grads - ref_grads).norm() / ref_grads.norm()).item()
            seconds = (time.perf_counter() - started) / 2
            ok = e_seq <= floor[0] and e_grad <= floor[1] and released and grown <= 64
            memory = f"memory after step {grown:+.0f} MiB; " if cuda else ""
            add(name, "PASS" if ok else "FAIL",
                f"e_seq {e_seq:.2e}, e_grad {e_grad:.2e} vs no ZeRO; head released after backward: {released}; "
                f"{memory}{seconds * 1e3:.0f} ms/step")  # fmt: skip
            if name == next(iter(VARIANTS)):
                _probe(add, engine, batch, device, dry, whole_for_generation)
        except Exception as exc:  # one configuration's crash is its FAIL; the next still runs
            add(name, "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")
        finally:
            engine.destroy()
            del engine, model, params, keep
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return [asdict(row) for row in rows.rows]


def _probe(add: Any, engine: Any, batch: dict[str, Any], device: Any, dry: bool, whole: Any) -> None:
    """Greedy answers on the partitioned model vs gathered once: equal, and how much faster the gathered one is."""
    import torch

    prompts = batch["input_ids"][:4, :16]
    new = 16 if dry else 64
    module = engine.module
    module.eval()

    def answers() -> tuple[Any, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.no_grad():
            ids = module.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False, pad_token_id=0)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        return ids.cpu(), time.perf_counter() - started

    partitioned, t_partitioned = answers()
    with whole(module, engine, device) as reason:
        gathered, t_gathered = answers()
    module.train()
    same = int((partitioned == gathered).all(dim=1).sum())
    ok = reason is None and same == len(prompts)
    name = f"probe: {len(prompts)} greedy answers of {new} tokens, gathered once vs partitioned"
    add(name, "PASS" if ok else "FAIL",
        f"{t_gathered:.2f} s vs {t_partitioned:.2f} s ({t_partitioned / t_gathered:.1f}x); "
        f"identical answers {same}/{len(prompts)}" + (f"; not gathered: {reason}" if reason else ""))  # fmt: skip


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.write_text(json.dumps(run(target, "--dry-run" in sys.argv[2:]), indent=1))
