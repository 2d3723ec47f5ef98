"""Serving backends: ``local`` (transformers, continuous batching), ``openai`` (any
OpenAI-compatible server, e.g. vLLM) and ``scripted`` (tests, benchmarks).
``make_backend`` picks one from the settings."""

from __future__ import annotations


def make_backend(settings):
    kind = settings.model.backend
    if kind == "local":
        from serving.backends.local import LocalBackend
        from serving.model_store import ensure_hf_model

        if settings.model.torch_threads:  # process-wide: the serving process owns its threads
            import torch

            torch.set_num_threads(settings.model.torch_threads)
        model_dir = ensure_hf_model(settings.model_cache_path)
        return LocalBackend(model_dir, max_batch=settings.model.max_batch, max_queue=settings.model.max_queue,
                            prefix_cache_mb=settings.model.prefix_cache_mb)
    if kind == "openai":
        from serving.backends.openai_server import OpenAIServerBackend

        return OpenAIServerBackend.from_settings(settings)
    if kind == "scripted":
        from serving.backends.scripted import ScriptedBackend

        return ScriptedBackend()
    raise ValueError(f"unknown model.backend {kind!r}: use 'local', 'openai' or 'scripted'")
