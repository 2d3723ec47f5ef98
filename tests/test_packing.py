"""Shared-prefix packing (training/trainers/packing.py): rows laid out as documented, and a
packed row's loss equal to its examples' loss computed one by one, on the real model
through the job's SFT path (TRL's tokenization, our collator, TRL's loss)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import MODEL_CACHE
from training.datasets.snapshot import load_snapshot, write_snapshot
from training.trainers.config import load_stage_config
from training.trainers.packing import IGNORE, SharedPrefixCollator, pack_shared_prefix, real_tokens

PREFIX = list(range(100, 140))  # 40 shared prompt tokens


def example(rest: list[int], answer: list[int]) -> dict:
    ids = PREFIX + rest + answer
    return {"input_ids": ids, "labels": [IGNORE] * (len(PREFIX) + len(rest)) + answer}


def test_rows_share_the_prefix_and_keep_a_token_before_each_answer():
    examples = [example([7, 8], [1, 2, 3]), example([7, 9], [4, 5]), example([], [6, 6]), example([5], [9])]
    rows, stats = pack_shared_prefix(examples, max_length=1000, max_examples=8, min_shared=16)
    assert len(rows) == 1 and stats.examples == 4 and stats.rows == 1
    row = rows[0]
    prefix, *parts = row["seq_lengths"]
    # example([], ...) has its first answer token right after the prefix: the prefix stops one
    # token early so that the token predicting it belongs to the example.
    assert prefix == len(PREFIX) - 1
    assert sum(parts) + prefix == len(row["input_ids"]) == stats.tokens_after
    assert stats.tokens_before == sum(len(e["input_ids"]) for e in examples)
    assert stats.tokens_after == stats.tokens_before - 3 * prefix
    # every example's labels survive, in its own part, and nothing in the prefix is a label
    assert all(label == IGNORE for label in row["labels"][:prefix])
    assert sorted(x for x in row["labels"] if x != IGNORE) == sorted([1, 2, 3, 4, 5, 6, 6, 9])


def test_limits_close_a_row():
    examples = [example([i], [1, 2]) for i in range(10)]
    rows, _ = pack_shared_prefix(examples, max_length=1000, max_examples=4, min_shared=16)
    assert [len(r["seq_lengths"]) - 1 for r in rows] == [4, 4, 2]
    rows, _ = pack_shared_prefix(examples, max_length=len(PREFIX) + 3 * 3, max_examples=8, min_shared=16)
    assert all(len(r["input_ids"]) <= len(PREFIX) + 9 for r in rows)
    # too short a shared prefix: nothing shared, the examples side by side after an empty prefix
    rows, stats = pack_shared_prefix(examples, max_length=1000, min_shared=64)
    assert [r["seq_lengths"] for r in rows] == [[0] + [len(PREFIX) + 3] * 8, [0] + [len(PREFIX) + 3] * 2]
    assert stats.saved == 0 and rows[0]["input_ids"] == sum((e["input_ids"] for e in examples[:8]), [])
    rows, _ = pack_shared_prefix(examples, max_length=2 * (len(PREFIX) + 3), min_shared=64)
    assert [len(r["seq_lengths"]) - 1 for r in rows] == [2] * 5
    # side by side, each example is as it was alone: positions from 0, attending only to itself
    batch = SharedPrefixCollator(pad_token_id=0)(rows[:1])
    n = len(PREFIX) + 3
    assert batch["position_ids"][0].tolist() == list(range(n)) * 2
    allowed = batch["attention_mask"][0, 0] == 0
    assert allowed[n:, n:].equal(torch.ones((n, n), dtype=torch.bool).tril()) and not allowed[n:, :n].any()


def test_replay_examples_never_share_a_row_with_app_examples():
    app = [example([i], [1, 2]) for i in range(3)]
    replay = [{**example([i], [3]), "replay": True} for i in range(3)] + [
        {"input_ids": [9, 9, 5], "labels": [IGNORE, 5, 6], "replay": True}]
    rows, stats = pack_shared_prefix(app + replay, max_length=1000, min_shared=16)
    assert stats.examples == 7 and [r["replay"] for r in rows] == [False, True, True]
    assert rows[0]["seq_lengths"][0] == rows[1]["seq_lengths"][0] == len(PREFIX)  # each kind shares its prefix
    assert rows[2]["seq_lengths"] == [0, 3]  # the replay example that shares nothing
    batch = SharedPrefixCollator(pad_token_id=0)(rows)
    assert batch["replay"].tolist() == [False, True, True]
    assert "replay" not in SharedPrefixCollator(pad_token_id=0)(rows[:1])


def test_focal_token_loss_weights_the_tokens_the_model_gets_wrong():
    from training.trainers.sft import focal_token_loss

    log_probs = torch.log(torch.tensor([[0.99, 0.98, 0.2, 1.0]]))  # two format tokens, one decision, a masked one
    mask = torch.tensor([[True, True, True, False]])
    mean = -(log_probs[0, :3]).mean()
    assert focal_token_loss(log_probs, mask, 0.0).item() == pytest.approx(mean.item())
    focal = focal_token_loss(log_probs, mask, 2.0).item()
    assert focal == pytest.approx(-torch.log(torch.tensor(0.2)).item(), rel=0.01)  # ~all the weight on the decision
    lp = log_probs.clone().requires_grad_(True)
    focal_token_loss(lp, mask, 2.0).backward()
    assert lp.grad[0, 2] < 0 and abs(lp.grad[0, 0]) < 1e-3 * abs(lp.grad[0, 2]) and lp.grad[0, 3] == 0


def test_collator_mask_positions_and_padding():
    rows, _ = pack_shared_prefix([example([7], [1, 2]), example([8], [3])], max_length=1000, min_shared=16)
    single = {"input_ids": [5, 6, 7], "labels": [IGNORE, 1, 2], "seq_lengths": [0, 3]}
    batch = SharedPrefixCollator(pad_token_id=0)([rows[0], single])
    mask, pos = batch["attention_mask"], batch["position_ids"]
    prefix, a, b = rows[0]["seq_lengths"]
    allowed = mask[:, 0] == 0
    first_b = prefix + a
    assert pos[0, first_b].item() == prefix == pos[0, prefix].item()  # both examples continue the prefix
    assert allowed[0, first_b, :prefix].all() and not allowed[0, first_b, prefix:first_b].any()
    assert allowed[0, prefix + 1, prefix] and not allowed[0, prefix, prefix + 1]  # causal inside an example
    assert real_tokens(batch) == len(rows[0]["input_ids"]) + 3
    assert (batch["labels"][1, 3:] == IGNORE).all()


def chart_snapshot(folder, n: int = 6, replay: int = 0):
    from flywheel.simulate.charts import build_prompt, dump_config, generate_request
    import random

    rng = random.Random(3)
    sft = []
    for i in range(n):
        req = generate_request(rng)
        sft.append({"messages": [{"role": "user", "content": build_prompt(req.schema, req.text)},
                                 {"role": "assistant", "content": dump_config(req.truth)}],
                    "task_type": "chart_config", "weight": 1.0, "source_ids": [f"s-{i}"]})
    if replay:
        from training.datasets.builder import REPLAY_TASK, read_general

        sft += [{**rec, "weight": 1.0, "source_ids": []} for rec in read_general()[:replay]]
        assert all(rec["task_type"] == REPLAY_TASK for rec in sft[n:])
    return write_snapshot(folder, version="pack-1", sft=sft, dpo=[], eval=[])


@pytest.mark.slow
def test_packed_loss_equals_the_loss_of_the_examples_one_by_one(tmp_path):
    from serving.model_store import ensure_hf_model
    from training.trainers.sft import build_sft_trainer

    model_dir = ensure_hf_model(MODEL_CACHE)
    snap = load_snapshot(chart_snapshot(tmp_path / "snap"))
    args = {"max_steps": 1, "per_device_train_batch_size": 8, "max_length": 1024, "logging_steps": 1,
            "save_steps": 100, "bf16": False}  # exactness is the point here: fp32 on any CPU
    common = {"args": args, "lora": {"lora_dropout": 0.0}}

    def trainer(packing: bool, **flywheel):
        cfg = load_stage_config("sft", overrides={**common, "flywheel": {"shared_prefix_packing": packing,
                                                                        "per_task_eval": False, **flywheel}})
        tr, _ = build_sft_trainer(snap, tmp_path / f"out-{packing}-{len(flywheel)}", model_dir=model_dir, cfg=cfg)
        tr.model.eval()
        return tr

    plain, packed = trainer(False), trainer(True)
    assert packed.flywheel_packing["rows"] < packed.flywheel_packing["examples"] == 6
    assert packed.flywheel_packing["tokens_after"] < 0.6 * packed.flywheel_packing["tokens_before"]
    with torch.no_grad():
        batch_plain = plain.data_collator(list(plain.train_dataset))
        batch_packed = packed.data_collator(list(packed.train_dataset))
        assert int((batch_plain["labels"] != IGNORE).sum()) == int((batch_packed["labels"] != IGNORE).sum())
        loss_plain = plain.compute_loss(plain.model, dict(batch_plain)).item()
        loss_packed = packed.compute_loss(packed.model, dict(batch_packed)).item()
    assert loss_packed == pytest.approx(loss_plain, rel=1e-3)

    # training computes the LM head only where the answer is (_answer_loss): the same loss
    packed.model.train()
    with torch.no_grad():
        assert packed.compute_loss(packed.model, dict(batch_packed)).item() == pytest.approx(loss_plain, rel=1e-3)
    packed.model.eval()

    # the focal token loss takes the same path: with gamma 0 it is the mean loss, with
    # gamma 2 the tokens the model already predicts weigh less, so the loss is higher
    focal = trainer(True, token_loss="focal", focal_gamma=0.0)
    focal.model.train()  # the focal loss is a training loss (evaluation reports the mean)
    with torch.no_grad():
        assert focal.compute_loss(focal.model, dict(batch_packed)).item() == pytest.approx(loss_plain, rel=1e-3)
        focal.flywheel_focal_gamma = 2.0
        assert focal.compute_loss(focal.model, dict(batch_packed)).item() > loss_plain * 1.05

    # and it trains: one step through Trainer, with the tokens it computed counted right
    packed.model.train()
    packed.train()
    assert packed.state.num_input_tokens_seen == packed.flywheel_packing["tokens_after"]


@pytest.mark.slow
def test_replay_rows_train_on_kl_toward_the_base(tmp_path):
    """``replay_loss: kl``: a replay answer token's loss is KL(base || tuned); zero while the
    adapter changes nothing, positive with gradient once it does; app rows keep their loss,
    and a batch of both sums the two over the batch's answer tokens."""
    from serving.model_store import ensure_hf_model
    from training.trainers.sft import build_sft_trainer

    model_dir = ensure_hf_model(MODEL_CACHE)
    snap = load_snapshot(chart_snapshot(tmp_path / "snap", n=4, replay=4))
    args = {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 1024, "save_steps": 100, "bf16": False}

    def trainer(replay_loss: str):
        cfg = load_stage_config("sft", overrides={"args": args, "lora": {"lora_dropout": 0.0}, "flywheel": {
            "shared_prefix_packing": True, "per_task_eval": False, "replay_loss": replay_loss}})
        tr, _ = build_sft_trainer(snap, tmp_path / f"out-{replay_loss}", model_dir=model_dir, cfg=cfg)
        tr.model.train()
        return tr

    kl, ce = trainer("kl"), trainer("ce")
    rows = list(kl.train_dataset)
    app = [r for r in rows if not r["replay"]]
    replay = [r for r in rows if r["replay"]]
    assert len(replay) == 1 and len(replay[0]["seq_lengths"]) == 5  # the four general records side by side
    assert kl.flywheel_packing["examples"] == 8
    app_batch, replay_batch = kl.data_collator(app[:1]), kl.data_collator(replay)
    both = kl.data_collator([app[0], replay[0]])

    def count(batch) -> int:
        return int((batch["labels"] != IGNORE).sum())

    with torch.no_grad():  # a fresh LoRA changes nothing (B = 0): the KL is zero, the CE is not
        assert kl.compute_loss(kl.model, dict(replay_batch)).item() == pytest.approx(0.0, abs=1e-6)
        assert ce.compute_loss(ce.model, dict(replay_batch)).item() > 0.5
    for name, param in kl.model.named_parameters():
        if "lora_B" in name:
            torch.manual_seed(len(name))
            param.data.normal_(0, 0.02)
    loss = kl.compute_loss(kl.model, dict(replay_batch))
    assert loss.item() > 1e-4
    loss.backward()
    grads = [p.grad for n, p in kl.model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    kl.model.zero_grad()
    with torch.no_grad():
        app_loss = kl.compute_loss(kl.model, dict(app_batch)).item()
        assert app_loss == pytest.approx(ce.compute_loss(kl.model, dict(app_batch)).item(), rel=1e-5)
        mixed = kl.compute_loss(kl.model, dict(both)).item()
    n_app, n_replay = count(app_batch), count(replay_batch)
    assert mixed == pytest.approx((app_loss * n_app + loss.item() * n_replay) / (n_app + n_replay), rel=1e-4)
