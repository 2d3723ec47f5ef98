"""The base model and its LoRA adapter, as the training stages load and save them.

Training is incremental: a stage either continues a parent adapter (the production
version's PEFT folder, or the SFT adapter for DPO) or starts a fresh LoRA on the base.
With CUDA and bitsandbytes (``DevicePlan.qlora``) the base weights are loaded in 4-bit NF4
(QLoRA) with bf16 compute; that path cannot run on the CPU machines the tests use.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.trainers.config import DevicePlan
from training.errors import TrainingError

ADAPTER_NAME = "default"


def load_base(model_dir: Path | str, plan: DevicePlan):
    """``(model, tokenizer)`` of the base model in ``model_dir`` (an HF folder, see
    serving.model_store.ensure_hf_model) for training on this machine."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if plan.qlora:  # pragma: no cover - needs CUDA and bitsandbytes
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16 if plan.bf16 else torch.float16)
        from accelerate import PartialState

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=quant,
                                                     device_map={"": PartialState().local_process_index})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        dtype = torch.bfloat16 if plan.bf16 else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, device_map=None)
    model.config.use_cache = False
    return model, tokenizer


def check_adapter_dir(path: Path | str) -> Path:
    path = Path(path).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise TrainingError(f"{path} is not a PEFT adapter folder (no adapter_config.json); pass the parent "
                            f"version's adapter folder (DATA_DIR/models/<version>)")
    return path


def attach_adapter(model, lora_config, parent: Path | str | None = None):
    """A trainable PeftModel: the ``parent`` adapter continued, or a fresh LoRA."""
    from peft import PeftModel, get_peft_model

    if parent is not None:
        parent = check_adapter_dir(parent)
        return PeftModel.from_pretrained(model, str(parent), adapter_name=ADAPTER_NAME, is_trainable=True)
    return get_peft_model(model, lora_config, adapter_name=ADAPTER_NAME)


def save_adapter(model, out_dir: Path | str, meta: dict | None = None) -> Path:
    """Save only the trained adapter (not DPO's frozen "ref" copy) in PEFT format."""
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir), selected_adapters=[ADAPTER_NAME])
    if meta is not None:
        (out_dir / "flywheel-training.json").write_text(json.dumps(meta, indent=2))
    return out_dir


def lora_state(model) -> dict:
    """A copy of the LoRA weights of the trained adapter (for tests: did they change?)."""
    return {k: v.detach().float().cpu().clone() for k, v in model.named_parameters()
            if "lora_" in k and f".{ADAPTER_NAME}." in k}
