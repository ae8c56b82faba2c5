"""Sampling: prompts through the host's loader and template, answers from the policy in-process or from servers.

What ``simpo-plugin pairs``, ``simpo-plugin eval`` and the stage's generation probes share. The path of a prompt:

    settings   the keys both commands share (:class:`GenerationArguments`) and how a config is read
      |        (:func:`parse_args`: the command's keys plus the host's model/data keys, unknown ones named)
    prompts    rows through the host's loader and converter, rendered by its template into the ids training will
      |        see (:func:`load_prompts`, :class:`Prompt`)
    loading    :func:`load_sampler` -> samplers (:class:`HFSampler`: ``generate`` in this process, seeded per
      |        prompt) or server (:class:`ServerSampler`: OpenAI-compatible endpoints, rotated and retried by
      |        endpoints; a ``server_command`` server is started by managed, :class:`ManagedServer`)
    store      resumable parts on disk (:class:`PartStore`, :func:`write_atomic`), sharded per process
    devices    one model on this process's GPU (:func:`one_device`), never spread over a node

A new generation backend is one module here: a class with ``sample(prompts)`` and ``sample_chunks(chunks)``
returning :class:`Sample` lists (seeded per prompt with ``sample_seed``), chosen in :func:`load_sampler`.

This package imports nothing from pairs, evaluation, the stage or the host glue (tests/test_layers.py). Importing
it is cheap; torch and the host load with the first name used.
"""

from ..lazy import lazy_attributes


_LAZY = {
    "GenerationArguments": ".settings",
    "check_keys": ".settings",
    "known_keys": ".settings",
    "parse_args": ".settings",
    "Prompt": ".prompts",
    "PromptSet": ".prompts",
    "ids_digest": ".prompts",
    "instruction_prompts": ".prompts",
    "load_prompts": ".prompts",
    "HFSampler": ".samplers",
    "Sample": ".samplers",
    "Sampler": ".samplers",
    "sample_chunks": ".samplers",
    "ServerSampler": ".server",
    "wait_for_servers": ".server",
    "ManagedServer": ".managed",
    "PartStore": ".store",
    "shard_tag": ".store",
    "write_atomic": ".store",
    "one_device": ".devices",
    "check_server": ".loading",
    "load_sampler": ".loading",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [*_LAZY]
