"""Trainers: the training job (`job.py`: SFT, then DPO) run in its own process by
`runner.py`; TRL configs from YAML (`config.py`, `configs/`), LoRA set-up (`lora.py`)."""
