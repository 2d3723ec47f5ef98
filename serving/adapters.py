"""LoRA adapters for tests and benchmarks.

:func:`make_random_adapter` writes a fresh, *random* LoRA adapter in PEFT format (an
``adapter_config.json`` and an ``adapter_model.safetensors``) for the base model in
``model_dir``. It exists so that tests and benchmarks can exercise multi-version serving
(:meth:`serving.backends.local.LocalBackend.load_adapter`) without a training run: its
output is the base model's, perturbed, not anything useful. Real adapters come from the
training stages, in the same format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

#: The default target modules (attention query and value projections, as in the LoRA paper).
DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "v_proj")


def make_random_adapter(
    model_dir: Path | str,
    out_dir: Path | str,
    *,
    r: int = 8,
    seed: int = 0,
    scale: float = 0.2,
    target_modules: Sequence[str] | str = DEFAULT_TARGETS,
    lora_alpha: int | None = None,
) -> Path:
    """Create a random LoRA adapter for the model in ``model_dir`` and save it in ``out_dir``.

    For tests and benchmarks only (real adapters come from training). Each targeted linear
    layer ``W`` gets ``A`` and ``B`` drawn from a normal distribution with a generator seeded
    by ``seed`` (so the same arguments always give the same adapter, and the global torch
    RNG is left alone), then ``B`` is rescaled so that the update ``ΔW = B @ A * alpha / r``
    has a Frobenius norm of ``scale * ||W||``. The default ``scale`` (0.2 on ``q_proj`` and
    ``v_proj``) visibly changes SmolLM2's greedy output while it still writes words;
    ``scale=0`` gives an adapter that is a no-op.

    ``target_modules`` is a list of module names or ``"all-linear"``. Returns ``out_dir``.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    if r < 1:
        raise ValueError("r must be >= 1")
    if scale < 0:
        raise ValueError("scale must be >= 0")
    out_dir = Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, device_map=None)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha if lora_alpha is not None else r,
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,  # B is not zero: the adapter changes the output
    )
    with torch.random.fork_rng(devices=[]):  # PEFT's module init uses the global RNG
        peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in sorted(peft_model.named_modules(), key=lambda kv: kv[0]):
            if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
                continue
            a = module.lora_A["default"].weight
            b = module.lora_B["default"].weight
            a.copy_(torch.randn(a.shape, generator=gen, dtype=a.dtype))
            b.copy_(torch.randn(b.shape, generator=gen, dtype=b.dtype))
            w = module.get_base_layer().weight
            delta = (b @ a) * module.scaling["default"]
            norm = float(delta.norm())
            b.mul_(scale * float(w.norm()) / norm if norm > 0 else 0.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


__all__ = ["make_random_adapter", "DEFAULT_TARGETS"]
