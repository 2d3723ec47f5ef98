"""Model versions on the local backend: LoRA adapters (PEFT) served next to the base model.

Real model (SmolLM2-135M-Instruct) and random adapters from serving/adapters.py (r=8 on
q_proj/v_proj, seeded, so greedy output is reproducible). About comparing greedy text
alone and inside a batch, see the module docstring of tests/test_local_backend.py: decode
steps over several rows differ from a one-row step by ~1e-5 in the logits (MKL's sgemm
depends on the row count), so texts match unless two candidates tie that closely; in a
mixed batch each adapter's low-rank update is computed over its own rows only, which adds
nothing new to that. The texts compared here are 20 tokens long.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import torch

from serving.adapters import make_random_adapter
from serving.backends.base import BackendError, GenerationRequest, SamplingParams
from serving.backends.local import LocalBackend, VersionBusy
from tests.conftest import wait_for

pytestmark = [
    pytest.mark.slow,
    # transformers 5.23 deprecates an attribute that PEFT 0.21 reads when it wraps a model
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

STORY = "Write a short story about a lighthouse keeper."
STEAM = "Explain how a steam engine works."


def chat(text: str, version: str = "base", max_tokens: int = 20) -> GenerationRequest:
    return GenerationRequest(
        messages=({"role": "user", "content": text},),
        params=SamplingParams(temperature=0.0, max_tokens=max_tokens),
        version=version,
    )


def answer(backend: LocalBackend, text: str, version: str = "base", max_tokens: int = 20) -> str:
    [(out, _)] = backend.submit(chat(text, version, max_tokens)).collect()
    return out


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapters(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_random_adapter(model_dir, root / "a", seed=1),
        "b": make_random_adapter(model_dir, root / "b", seed=3),
    }


@pytest.fixture(scope="module")
def served(model_dir):
    """A backend of this module's own, and the base model's answers taken before any
    adapter was ever loaded on it."""
    backend = LocalBackend(model_dir, max_batch=8)
    reference = {p: answer(backend, p) for p in (STORY, STEAM)}
    yield backend, reference
    backend.close()


@pytest.fixture
def backend(served):
    return served[0]


@pytest.fixture
def reference(served):
    return served[1]


def unload_all(backend: LocalBackend) -> None:
    for v in backend.versions()[1:]:
        backend.unload_adapter(v)


def tampered(src, dst, edit_weights=None, edit_config=None):
    """A copy of adapter ``src`` with its weights and/or config changed."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if edit_weights:
        weights = load_file(str(dst / "adapter_model.safetensors"))
        save_file(edit_weights(weights), str(dst / "adapter_model.safetensors"))
    if edit_config:
        cfg = json.loads((dst / "adapter_config.json").read_text())
        edit_config(cfg)
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------
def test_adapter_serves_and_changes_greedy_output(backend, reference, adapters):
    backend.load_adapter("sft-a", adapters["a"])
    assert backend.versions() == ["base", "sft-a"]
    tuned = answer(backend, STORY, "sft-a")
    assert tuned and tuned != reference[STORY]
    assert answer(backend, STORY, "sft-a") == tuned  # greedy: repeatable

    backend.load_adapter("sft-a", adapters["a"])  # same name, same folder: a no-op
    assert backend.versions() == ["base", "sft-a"]
    with pytest.raises(ValueError, match="immutable"):
        backend.load_adapter("sft-a", adapters["b"])
    with pytest.raises(ValueError, match="reserved"):
        backend.load_adapter("base", adapters["b"])
    assert backend.versions() == ["base", "sft-a"]


def test_base_output_is_unchanged_with_adapters_loaded(backend, reference, adapters):
    backend.load_adapter("sft-a", adapters["a"])
    backend.load_adapter("sft-b", adapters["b"])
    for prompt, text in reference.items():
        assert answer(backend, prompt) == text


def test_base_and_two_adapters_in_one_batch_answer_as_when_alone(backend, adapters, monkeypatch):
    backend.load_adapter("sft-a", adapters["a"])
    backend.load_adapter("sft-b", adapters["b"])
    cases = [(STORY, "base"), (STORY, "sft-a"), (STORY, "sft-b"), (STEAM, "sft-a"), (STEAM, "base")]
    alone = {case: answer(backend, *case) for case in cases}
    assert len({alone[(STORY, v)] for v in ("base", "sft-a", "sft-b")}) == 3  # three different models

    seen: list[list[str]] = []
    forward_kwargs = backend.adapters.forward_kwargs

    def recording(versions):
        seen.append(list(versions))
        return forward_kwargs(versions)

    monkeypatch.setattr(backend.adapters, "forward_kwargs", recording)
    gens = [backend.submit(chat(*case)) for case in cases]  # all admitted at the same step
    together = {case: g.collect()[0][0] for case, g in zip(cases, gens)}
    assert together == alone
    assert any(len(v) == len(cases) and set(v) == {"base", "sft-a", "sft-b"} for v in seen)


def test_unknown_version_is_503(backend):
    with pytest.raises(BackendError) as exc:
        backend.submit(chat("hi", version="sft-2099-01-01"))
    assert exc.value.status == 503


def test_unload_is_refused_while_busy_then_works_when_idle(backend, reference, adapters):
    backend.load_adapter("sft-b", adapters["b"])
    # queued: a base request fills every row, so one for sft-b has to wait
    full = backend.submit(GenerationRequest(messages=({"role": "user", "content": STORY},),
                                            params=SamplingParams(temperature=0.0, max_tokens=300),
                                            n=backend.max_batch))
    next(iter(full))
    waiting = backend.submit(chat(STORY, "sft-b"))
    with pytest.raises(VersionBusy, match=r"0 running, 1 queued"):
        backend.unload_adapter("sft-b")
    waiting.cancel()
    full.cancel()
    wait_for(lambda: backend.health()["running"] == 0, timeout=10, interval=0.02, what="the rows to drain")

    # running
    g = backend.submit(chat(STORY, "sft-b", max_tokens=300))
    it = iter(g)
    next(it)
    with pytest.raises(VersionBusy) as exc:
        backend.unload_adapter("sft-b")
    assert exc.value.status == 409 and "sft-b" in str(exc.value) and "in use" in str(exc.value)
    assert "sft-b" in backend.versions()

    g.cancel()  # a cancelled request no longer holds its version: no need to wait
    backend.unload_adapter("sft-b")
    assert "sft-b" not in backend.versions()
    with pytest.raises(BackendError) as exc:
        for _ in it:
            pass
    assert exc.value.status == 499
    wait_for(lambda: backend.health()["running"] == 0, timeout=10, interval=0.02, what="the rows to drain")
    with pytest.raises(BackendError) as exc:
        backend.submit(chat("hi", version="sft-b"))
    assert exc.value.status == 503
    backend.unload_adapter("sft-b")  # not loaded: a no-op
    with pytest.raises(ValueError):
        backend.unload_adapter("base")

    # the last adapter gone, the plain transformers model serves again (the fast path)
    unload_all(backend)
    assert backend.versions() == ["base"] and backend.adapters.peft is None and backend.adapters.model is backend.adapters.base_model
    assert answer(backend, STORY) == reference[STORY]
    # and the name can be loaded again later
    backend.load_adapter("sft-b", adapters["b"])
    assert answer(backend, STORY, "sft-b") != reference[STORY]


def test_unload_waits_for_nothing_while_other_versions_run(backend, adapters):
    """Unloading an idle adapter happens between two steps of another version's rows."""
    backend.load_adapter("sft-a", adapters["a"])
    backend.load_adapter("sft-b", adapters["b"])
    g = backend.submit(chat(STORY, "sft-a", max_tokens=40))
    next(iter(g))
    backend.unload_adapter("sft-b")
    [(text, reason)] = g.collect()
    assert reason == "length" and text
    assert backend.versions() == ["base", "sft-a"]


def test_adapters_that_do_not_fit_the_base_are_refused_clearly(backend, reference, adapters, tmp_path):
    a = adapters["a"]

    def r4(w):  # consistent rank 4 while the config says 8
        return {k: (v[:4].clone() if ".lora_A." in k else v[:, :4].clone()) for k, v in w.items()}

    def wider(w):  # an adapter made for a model with a 1024-wide hidden state
        return {k: (torch.zeros(v.shape[0], 1024) if ".lora_A." in k else v) for k, v in w.items()}

    def holed(w):  # no weights for layer 3: PEFT would leave its LoRA randomly initialised
        return {k: v for k, v in w.items() if ".layers.3." not in k}

    def renamed(w):
        return {k.replace("q_proj", "nonexistent_proj"): v for k, v in w.items()}

    cases = {
        "bad-rank": tampered(a, tmp_path / "bad-rank", edit_weights=r4),
        "bad-width": tampered(a, tmp_path / "bad-width", edit_weights=wider),
        "bad-holed": tampered(a, tmp_path / "bad-holed", edit_weights=holed),
        "bad-module": tampered(a, tmp_path / "bad-module", edit_weights=renamed),
        "bad-target": tampered(a, tmp_path / "bad-target",
                               edit_config=lambda c: c.update(target_modules=["nonexistent_proj"])),
        "bad-dora": tampered(a, tmp_path / "bad-dora", edit_config=lambda c: c.update(use_dora=True)),
    }
    cases["bad-empty"] = tmp_path / "empty"
    cases["bad-empty"].mkdir()
    expected = {
        "bad-rank": "rank 4",
        "bad-width": "1024",
        "bad-holed": "layers.3.",
        "bad-module": "nonexistent_proj",
        "bad-target": "nonexistent_proj",  # PEFT's own error, after the model was touched
        "bad-dora": "DoRA",
        "bad-empty": "adapter_config.json",
    }

    def check_all(loaded_before):
        for version, path in cases.items():
            with pytest.raises(ValueError) as exc:
                backend.load_adapter(version, path)
            msg = str(exc.value)
            assert repr(version) in msg and str(path) in msg and expected[version] in msg, msg
            assert backend.versions() == loaded_before

    # With no adapter loaded: a failed first load leaves the plain model as it was.
    unload_all(backend)
    check_all(["base"])
    assert backend.adapters.peft is None and backend.adapters.model is backend.adapters.base_model
    assert not any("lora" in n for n, _ in backend.adapters.model.named_modules())
    assert answer(backend, STORY) == reference[STORY]

    # With an adapter loaded: a failed later load removes whatever it had added.
    backend.load_adapter("sft-a", a)
    tuned = answer(backend, STORY, "sft-a")
    check_all(["base", "sft-a"])
    assert set(backend.adapters.peft.peft_config) == {backend.adapters.names["sft-a"]}
    assert answer(backend, STORY, "sft-a") == tuned
    assert answer(backend, STORY) == reference[STORY]


def test_loading_while_rows_decode_does_not_disturb_them(backend, reference, adapters):
    """A load applied between two decode steps: the running base row's text is unchanged."""
    unload_all(backend)
    g = backend.submit(chat(STORY))
    next(iter(g))
    errors = []
    t = threading.Thread(target=lambda: _load(backend, "sft-b", adapters["b"], errors))
    t.start()
    [(text, _)] = g.collect()
    t.join(30)
    assert not errors and "sft-b" in backend.versions()
    assert text == reference[STORY]


def _load(backend, version, path, errors):
    try:
        backend.load_adapter(version, path)
    except Exception as exc:  # pragma: no cover - reported by the test
        errors.append(exc)
