"""The prefix cache of the local backend (serving/backends/local/prefix_cache.py).

First the cache on its own, with small synthetic tensors whose values name their token and
position (so a lookup that glued blocks in the wrong order, or served another version's
KV, shows): block matching, the last prompt token never served, versions kept apart, the
memory bound and LRU eviction from the tails of chains, copies rather than views.

Then the real model (SmolLM2-135M-Instruct) on the chart app's prompts
(flywheel.domains.chart.build_prompt), against the same backend with the cache turned off:
greedy answers must be the same, and the cache's counters must show the prefixes were
actually reused. About comparing greedy text: a cached prefix's KV was computed inside
another prompt's prefill, and MKL's products differ by ~1e-5 with the row count (module
docstring of tests/test_local_backend.py), so texts match unless two candidates tie that
closely; the answers compared here are 20 tokens.
"""

from __future__ import annotations

import pytest
import torch

from flywheel.domains.chart import PromptLists, build_prompt
from serving.adapters import make_random_adapter
from serving.backends.base import GenerationRequest, SamplingParams
from serving.backends.local import LocalBackend
from serving.backends.local.prefix_cache import PrefixCache

B = 4  # block size of the synthetic tests
LAYERS = 2


def kv_of(ids: list[int], owner_tag: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Synthetic per-layer KV ``[1, 1, len, 2]``: keys hold (token, position), values the
    same plus the layer and an owner tag, so any mix-up is visible."""
    t = torch.tensor(ids, dtype=torch.float32)
    pos = torch.arange(len(ids), dtype=torch.float32)
    out = []
    for layer in range(LAYERS):
        k = torch.stack((t, pos), dim=-1).view(1, 1, len(ids), 2)
        out.append((k.clone(), k + 1000 * (layer + 1) + owner_tag))
    return out


def block_bytes() -> int:
    return LAYERS * 2 * 1 * B * 2 * 4  # layers x (k, v) x heads x tokens x head_dim x fp32


# --------------------------------------------------------------------------------------
# the cache alone
# --------------------------------------------------------------------------------------
def test_lookup_reuses_whole_blocks_in_order_and_never_the_last_token():
    cache = PrefixCache(max_bytes=1 << 20, block_tokens=B)
    a = list(range(100, 111))  # 11 tokens: 2 whole blocks
    assert cache.lookup("base", a) == (0, None)
    assert cache.insert("base", a, kv_of(a)) == 2

    b = a[:8] + [7, 7, 7, 7, 7]  # shares the 2 blocks, then differs
    cached, layers = cache.lookup("base", b)
    assert cached == 8
    assert len(layers) == LAYERS
    for layer, (k, v) in enumerate(layers):
        assert k.shape == (1, 1, 8, 2)
        assert torch.equal(k, kv_of(a)[layer][0][:, :, :8])
        assert torch.equal(v, kv_of(a)[layer][1][:, :, :8])

    # a prompt that is exactly the cached blocks: the last token is run, so one block less
    assert cache.lookup("base", a[:8])[0] == 4
    # a block that differs in one token breaks the chain from there on
    c = a[:4] + [0] + a[5:]
    assert cache.lookup("base", c)[0] == 4
    # a strict extension reuses everything the shorter prompt stored
    assert cache.insert("base", b, kv_of(b)) == 1  # b's third block (its first 2 are a's)
    cached, layers = cache.lookup("base", b + [1, 2, 3])
    assert cached == 12
    assert torch.equal(layers[1][0], kv_of(b)[1][0][:, :, :12])
    s = cache.stats()
    assert s["blocks"] == 3 and s["inserted"] == 3 and s["bytes"] == 3 * block_bytes()
    assert s["lookups"] == 5 and s["hits"] == 4 and s["hit_tokens"] == 8 + 4 + 4 + 12


def test_versions_never_share_kv():
    cache = PrefixCache(max_bytes=1 << 20, block_tokens=B)
    ids = list(range(20))
    cache.insert("__base__", ids, kv_of(ids))
    assert cache.lookup("v1", ids) == (0, None)
    cache.insert("v1", ids, kv_of(ids, owner_tag=0.5))
    _, base_layers = cache.lookup("__base__", ids)
    _, v1_layers = cache.lookup("v1", ids)
    assert torch.equal(base_layers[0][1], kv_of(ids)[0][1][:, :, :16])
    assert torch.equal(v1_layers[0][1], kv_of(ids, owner_tag=0.5)[0][1][:, :, :16])
    assert cache.drop("v1") == 5
    assert cache.lookup("v1", ids) == (0, None)
    assert cache.lookup("__base__", ids)[0] == 16


def test_stored_kv_is_a_copy_both_ways():
    cache = PrefixCache(max_bytes=1 << 20, block_tokens=B)
    ids = list(range(9))
    source = kv_of(ids)
    cache.insert("base", ids, source)
    source[0][0].fill_(-1)  # the prompt's own cache changes afterwards
    _, layers = cache.lookup("base", ids)
    layers[0][0].fill_(-2)  # a request writes into what it got
    layers[1][1].add_(5)
    _, again = cache.lookup("base", ids)
    assert torch.equal(again[0][0], kv_of(ids)[0][0][:, :, :8])
    assert torch.equal(again[1][1], kv_of(ids)[1][1][:, :, :8])


def test_memory_bound_evicts_least_recently_used_tails_first():
    cache = PrefixCache(max_bytes=6 * block_bytes(), block_tokens=B)
    shared = list(range(8))  # 2 blocks every prompt starts with
    p1 = shared + [11] * 8 + [0]  # 4 blocks
    p2 = shared + [22] * 8 + [0]  # 2 more blocks: 6 in all, the bound
    cache.insert("base", p1, kv_of(p1))
    cache.insert("base", p2, kv_of(p2))
    assert cache.stats()["blocks"] == 6 and cache.stats()["evictions"] == 0
    cache.lookup("base", p1)  # p1 is now more recent than p2

    p3 = shared + [33] * 4 + [0]  # needs one block: p2's tail goes (p2's LRU leaf)
    cache.insert("base", p3, kv_of(p3))
    s = cache.stats()
    assert s["evictions"] == 1 and s["blocks"] == 6 and s["bytes"] <= s["max_bytes"]
    assert cache.lookup("base", p1)[0] == 16  # untouched
    assert cache.lookup("base", p2)[0] == 12  # lost its last block only
    assert cache.lookup("base", p3)[0] == 12

    # a prompt of other tokens entirely: eviction walks tails up, the shared root stays
    # longest; never more than the bound
    other = [90 + i for i in range(17)]
    cache.insert("base", other, kv_of(other))
    s = cache.stats()
    assert s["bytes"] <= s["max_bytes"] and s["evictions"] == 5
    assert cache.lookup("base", other)[0] == 16
    assert cache.lookup("base", p1)[0] == 8  # the shared root blocks survived the tails
    # a prompt longer than the whole bound stores what fits, never evicting its own chain
    long = [500 + i for i in range(40)]
    cache.insert("base", long, kv_of(long))
    assert cache.stats()["bytes"] <= cache.stats()["max_bytes"]
    assert cache.lookup("base", long)[0] == 24


def test_zero_bytes_turns_it_off():
    cache = PrefixCache(max_bytes=0, block_tokens=B)
    ids = list(range(20))
    assert cache.insert("base", ids, kv_of(ids)) == 0
    assert cache.lookup("base", ids) == (0, None)
    assert cache.stats()["enabled"] is False and cache.stats()["lookups"] == 0


# --------------------------------------------------------------------------------------
# the real model on chart prompts
# --------------------------------------------------------------------------------------
RETAIL = PromptLists("retail", "Order date", ("Region", "Category", "Product", "Channel"),
                     ("Revenue", "Profit", "Profit margin", "Units sold"))
SUPPORT = PromptLists("support", "Created at", ("Team", "Priority", "Product area"),
                      ("Tickets", "Resolution time", "Satisfaction score"))
MAX_TOKENS = 20


def chart(schema: PromptLists, words: str) -> list[dict]:
    return [{"role": "user", "content": build_prompt(schema, words)}]


def request(messages: list[dict], version: str = "base") -> GenerationRequest:
    return GenerationRequest(messages=tuple(messages), version=version,
                             params=SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))


def answer(backend: LocalBackend, messages: list[dict], version: str = "base") -> str:
    [(text, _)] = backend.submit(request(messages, version)).collect()
    return text


def stats(backend: LocalBackend) -> dict:
    return backend.health()["prefix_cache"]


def reused(backend: LocalBackend, messages: list[dict], version: str = "base") -> tuple[str, int]:
    """The answer, and how many prompt tokens came out of the prefix cache for it."""
    before = stats(backend)["hit_tokens"]
    text = answer(backend, messages, version)
    return text, stats(backend)["hit_tokens"] - before


@pytest.fixture(scope="module")
def backend(model_dir):
    b = LocalBackend(model_dir, max_batch=4)
    yield b
    b.close()


def use(backend: LocalBackend, cache: PrefixCache) -> PrefixCache:
    """Swap the backend's prefix cache (on the worker, between two steps); returns the old one."""
    engine = backend.engine
    old = engine.prefix_cache
    engine.call(lambda: setattr(engine, "prefix_cache", cache))
    return old


def fresh(backend: LocalBackend, max_bytes: int = 256 << 20) -> PrefixCache:
    """Give the backend an empty prefix cache."""
    cache = PrefixCache(max_bytes)
    use(backend, cache)
    return cache


def uncached(backend: LocalBackend, messages: list[dict], version: str = "base") -> str:
    """The answer with prefix caching off (the path before it existed), on the same backend."""
    cache = use(backend, PrefixCache(0))
    try:
        return answer(backend, messages, version)
    finally:
        use(backend, cache)


def ids_of(backend: LocalBackend, messages: list[dict]) -> list[int]:
    return backend._encode(messages)


@pytest.mark.slow
def test_chart_answers_with_cached_prefixes_equal_the_uncached_ones(backend):
    first = chart(RETAIL, "monthly revenue by region for the last half year")
    prompts = [
        first,
        chart(RETAIL, "top 5 products by profit margin"),  # same instructions and lists
        chart(SUPPORT, "tickets by team, highest first"),  # same instructions only
    ]
    expected = [uncached(backend, p) for p in prompts]
    # a follow-up turn: its prompt extends the first conversation's prompt token for token
    followup = first + [{"role": "assistant", "content": expected[0]},
                        {"role": "user", "content": "Update the chart configuration.\n"
                                                    "Request: make it a bar chart\nJSON:"}]
    first_ids, followup_ids = ids_of(backend, first), ids_of(backend, followup)
    assert followup_ids[: len(first_ids)] == first_ids and len(followup_ids) > len(first_ids)
    expected_followup = uncached(backend, followup)

    cache = fresh(backend)
    got, hits = zip(*(reused(backend, p) for p in prompts))
    assert list(got) == expected
    assert hits[0] == 0  # an empty cache
    assert all(h >= 300 for h in hits[1:]), hits  # the ~350-token instruction block at least
    assert hits[1] > hits[2]  # the retail lists are shared too
    got_followup, hit = reused(backend, followup)
    assert got_followup == expected_followup
    assert hit == len(first_ids) // 16 * 16  # all of the first conversation's whole blocks
    s = cache.stats()
    assert s["blocks"] > 0 and s["bytes"] <= s["max_bytes"] and s["evictions"] == 0

    # concurrently (prefills interleave with decode steps), answers are still the same, and
    # the rows attend to one copy of their shared instructions (kv_cache.py's shared prefix)
    # as they do to their own copies
    fresh(backend)
    kv = backend.engine.kv
    try:
        for share in (True, False):
            backend.engine.call(lambda: setattr(kv, "share_prefixes", share))
            before = backend.health()["shared_prefix"]["rows"]
            gens = [backend.submit(request(p)) for p in prompts]
            assert [g.collect()[0][0] for g in gens] == expected
            assert (backend.health()["shared_prefix"]["rows"] > before) == share
    finally:
        backend.engine.call(lambda: setattr(kv, "share_prefixes", True))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_a_prefix_belongs_to_the_version_that_computed_it(backend, tmp_path):
    backend.load_adapter("a", make_random_adapter(backend.model_dir, tmp_path / "a", seed=1))
    try:
        p1 = chart(RETAIL, "monthly revenue by region for the last half year")
        p2 = chart(RETAIL, "top 5 products by profit margin")
        base1, base2 = uncached(backend, p1), uncached(backend, p2)
        a1, a2 = uncached(backend, p1, "a"), uncached(backend, p2, "a")
        assert a1 != base1  # the adapter changes the answer: base KV would show

        cache = fresh(backend)
        assert reused(backend, p1) == (base1, 0)
        assert reused(backend, p1, "a") == (a1, 0)  # the base's blocks do not serve "a"
        text, hit = reused(backend, p2, "a")
        assert text == a2 and hit >= 300  # "a"'s own blocks do
        text, hit = reused(backend, p2)
        assert text == base2 and hit >= 300
        assert backend.adapters.kv_owner("a") != backend.adapters.kv_owner("base")
    finally:
        backend.unload_adapter("a")
    # unloading forgets the version's blocks; the base's stay
    assert {blk.owner for blk in cache._blocks.values()} == {backend.adapters.kv_owner("base")}


@pytest.mark.slow
def test_memory_bound_and_eviction_with_the_model(backend, monkeypatch):
    # prompts prefilled in 100-token chunks: a cached prefix (whole 16-token blocks) ends
    # inside a chunk, and the rest of the prompt runs from there in several chunks
    monkeypatch.setattr(backend.engine, "prefill_chunk", 100)
    first = chart(RETAIL, "monthly revenue by region for the last half year")
    short = [{"role": "user", "content": "Name three colours of the rainbow, please."}]
    expected, expected_short = uncached(backend, first), uncached(backend, short)
    first_ids, short_ids = ids_of(backend, first), ids_of(backend, short)
    shared = next(i for i in range(len(short_ids) // 16 + 1) if short_ids[: 16 * (i + 1)] != first_ids[: 16 * (i + 1)])
    new_blocks = len(short_ids) // 16 - shared  # the short prompt's blocks the chart's do not hold
    kv = backend.engine.kv
    one_block = kv.n_layers * 2 * kv.kv_heads * 16 * kv.head_dim * 4  # fp32
    budget = 12  # blocks: less than a chart prompt's ~27
    small = fresh(backend, budget * one_block)
    try:
        assert answer(backend, first) == expected
        assert small.stats()["blocks"] == budget  # the prompt's first blocks, what fits
        assert reused(backend, first) == (expected, budget * 16)
        assert answer(backend, short) == expected_short
        s = small.stats()
        assert 0 < new_blocks < budget and s["evictions"] == new_blocks and s["bytes"] <= s["max_bytes"]
        # the chart prompt lost the tail of its chain, not its shared start
        assert reused(backend, first) == (expected, (budget - new_blocks) * 16)
    finally:
        fresh(backend)
