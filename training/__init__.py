"""From landed logs to a better model, one folder per stage of the flow:

curation/   mine -> clean -> raters -> task types -> dedup -> select -> review
labeling/   teacher answers and verifiers
datasets/   versioned SFT/DPO snapshots and their folder format
trainers/   the training job: LoRA SFT, then DPO
evaluation/ candidate vs production, the gate

The flywheel turn that runs them in order lives with the control plane
(services/control/turn.py)."""
