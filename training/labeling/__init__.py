"""Labeling: better answers for curated prompts.

The teacher (an OpenAI-compatible endpoint, or the local model with few-shot examples and
schema-constrained decoding), and the verifiers that decide whether an answer is
acceptable (the domain's, plus generic checks)."""
