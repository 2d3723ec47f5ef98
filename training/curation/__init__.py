"""Curation: from landed logs to reviewed candidates.

mine (new interactions since the watermark) -> clean (rules, PII, robustness tags) ->
raters (reliability, cleaned labels) -> task types -> dedup (exact, semantic) -> select
(K-Center-Greedy per type) -> review (auto rules, the operators' queue). `pipeline.py`
runs the stages in that order and writes the funnel."""
