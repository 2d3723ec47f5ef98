"""Evaluation: candidate against production per task type (`evaluate.py`: reference loss,
verifiers, judge, forgetting check, the gate) and the pairwise judge (`judge.py`)."""
