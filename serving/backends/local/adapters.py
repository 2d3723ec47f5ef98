"""Model versions: LoRA adapters (PEFT format) served next to the base model.

Each row carries its model ``version``: ``"base"`` or the name an adapter was loaded under.
There is one copy of the base weights. On the first adapter the model is wrapped in a
``PeftModel`` (until then, and again after the last adapter is unloaded, the plain
transformers model runs: the base-only path has no PEFT overhead); adapters are added to
it and deleted from it by name. Rows of different versions share every forward: the model
gets ``adapter_names=[...]``, one per row (``"__base__"`` for the base), and PEFT's
mixed-batch LoRA forward (``LoraLayer._mixed_batch_forward``) runs each linear layer's base
weight over the whole batch, then adds each adapter's low-rank update to its own rows only.
A row's output therefore does not depend on which versions share its batch (up to the
~1e-5 float noise of batch size discussed in tests/test_local_backend.py).

PEFT's limits for mixed batches apply: no DoRA, no merged adapters, no adapters that
change base weights (``bias`` other than ``"none"``, PiSSA/OLoRA/CorDA/LoftQ
initialisations), no ``modules_to_save``/trainable tokens (full copies of base modules),
aLoRA or ``layer_replication``. :meth:`Adapters.read` refuses those, and checks every
tensor's shape against the base, on the caller's thread and before the model is touched,
so a bad adapter is a clear ``ValueError`` rather than a half-changed model.
:meth:`Adapters.install` and :meth:`Adapters.remove` change the model; the worker runs
them between two decode steps (see ``engine.py``), so a forward never sees a half-loaded
adapter and the decode loop needs no lock.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path

import torch

from serving.backends.base import BackendError

BASE_VERSION = "base"
_PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in ``adapter_names``


class VersionBusy(BackendError):
    """An adapter cannot be unloaded while requests of its version run or wait (HTTP 409)."""

    def __init__(self, message: str):
        super().__init__(message, status=409)


@dataclasses.dataclass(frozen=True)
class AdapterFiles:
    """An adapter read from disk and checked against the base, ready to be installed."""

    version: str
    path: Path
    config: object  # peft.LoraConfig
    weights: dict  # PEFT state dict (keys without the adapter name)


class Adapters:
    """The model that runs, with the LoRA adapters installed in it.

    ``model`` is what the worker calls: ``base_model`` itself while no adapter is loaded,
    else ``peft``, the ``PeftModel`` wrapping it. ``names`` maps a version to its PEFT
    adapter name. Everything but :meth:`read` runs on the worker thread.
    """

    def __init__(self, base_model, model_name: str):
        self.base_model = base_model  # the transformers model
        self.model = base_model  # what runs
        self.peft = None  # the PeftModel wrapping ``base_model`` while any adapter is loaded
        self.names: dict[str, str] = {}  # version -> PEFT adapter name
        self._model_name = model_name  # for error messages
        self._ids = itertools.count(1)
        self._base_requires_grad: dict[str, bool] = {}
        # Shapes of the base's linear layers, for checking adapters without touching the model.
        self._linear_shapes = {
            name: (m.in_features, m.out_features)
            for name, m in base_model.named_modules()
            if isinstance(m, torch.nn.Linear)
        }

    # -- reading (any thread) ----------------------------------------------------------------
    def read(self, version: str, path: Path) -> AdapterFiles:
        """Read an adapter folder and check it against the base (no model change)."""
        from peft import LoraConfig, load_peft_weights

        def bad(why: str) -> ValueError:
            return ValueError(f"adapter {version!r} at {path} cannot be served on {self._model_name}: {why}")

        config_file = path / "adapter_config.json"
        if not config_file.is_file():
            raise bad("no adapter_config.json (not a PEFT adapter folder)")
        if not any((path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            raise bad("no adapter_model.safetensors or adapter_model.bin")
        try:
            raw = json.loads(config_file.read_text())
        except ValueError as exc:
            raise bad(f"adapter_config.json is not valid JSON ({exc})") from None
        if raw.get("peft_type") != "LORA":
            raise bad(f"only LoRA adapters are supported, this one is {raw.get('peft_type')!r}")
        try:
            config = LoraConfig.from_pretrained(str(path))
            weights = load_peft_weights(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - whatever PEFT or safetensors say
            raise bad(f"cannot read it ({type(exc).__name__}: {exc})") from exc

        # What PEFT's mixed-batch forward cannot serve next to other versions.
        init = config.init_lora_weights
        if config.use_dora:
            raise bad("DoRA adapters cannot be served in mixed batches (PEFT limitation)")
        if config.bias != "none":
            raise bad(f"bias={config.bias!r} trains base-model biases, which all versions share")
        if isinstance(init, str) and init.lower().startswith(("pissa", "olora", "corda", "loftq")):
            raise bad(f"init_lora_weights={init!r} changes the base weights; convert it to a plain LoRA first")
        for field, why in (
            ("modules_to_save", "full copies of base modules"),
            ("trainable_token_indices", "trainable token embeddings"),
            ("layer_replication", "layer replication"),
            ("alora_invocation_tokens", "activated LoRA"),
            ("target_parameters", "LoRA on parameters"),
        ):
            if getattr(config, field, None):
                raise bad(f"{field} ({why}) is not supported for serving")

        # Shapes against the base's linear layers: a clear error before the model is touched.
        pattern = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight$")
        shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        for key, tensor in weights.items():
            m = pattern.match(key)
            if m is None:
                if "lora_embedding_" in key or key.endswith(".lora_B.bias"):
                    continue  # embeddings and lora_bias: left to PEFT's own checks
                raise bad(f"unexpected tensor {key!r} in the adapter weights")
            shapes.setdefault(m.group(1), {})[m.group(2)] = tuple(tensor.shape)
        if not shapes:
            raise bad("the adapter has no LoRA weights")
        for module, ab in sorted(shapes.items()):
            if module not in self._linear_shapes:
                raise bad(f"it adapts module {module!r}, which the base model does not have (or is not linear)")
            in_f, out_f = self._linear_shapes[module]
            a, b = ab.get("A"), ab.get("B")
            if a is None or b is None:
                raise bad(f"module {module!r} has lora_{'A' if a is None else 'B'} missing")
            if len(a) != 2 or len(b) != 2 or a[1] != in_f or b[0] != out_f or a[0] != b[1]:
                raise bad(
                    f"module {module!r} is [{out_f} x {in_f}] in the base, but the adapter has lora_A {list(a)} "
                    f"and lora_B {list(b)} (expected [r, {in_f}] and [{out_f}, r])"
                )
            if not config.rank_pattern and a[0] != config.r:  # (per-module ranks: PEFT checks)
                raise bad(f"module {module!r} has rank {a[0]} in the weights but r={config.r} in the config")
        config.inference_mode = True
        config.init_lora_weights = False  # the weights are loaded below; skip PEFT's init
        return AdapterFiles(version, path, config, weights)

    # -- changing the model (worker) ---------------------------------------------------------
    def install(self, files: AdapterFiles) -> None:
        """Add an adapter to the model as ``files.version``; on any failure the model is left
        as it was and a ``ValueError`` says why."""
        from peft import PeftModel, set_peft_model_state_dict

        version, path = files.version, files.path
        name = f"v{next(self._ids)}"  # PEFT names become module keys: no dots, no clashes
        first = self.peft is None
        try:
            if first:
                # PEFT freezes the base parameters; they are restored when the last adapter goes.
                self._base_requires_grad = {n: p.requires_grad for n, p in self.base_model.named_parameters()}
                self.peft = PeftModel(self.base_model, files.config, adapter_name=name)
            else:
                self.peft.add_adapter(name, files.config)
            result = set_peft_model_state_dict(self.peft, files.weights, adapter_name=name)
            missing = [k for k in result.missing_keys if f".{name}." in k or k.endswith(f".{name}")]
            if missing:
                raise ValueError(f"no weights for {len(missing)} LoRA tensors the config asks for, e.g. {missing[0]}")
            if result.unexpected_keys:
                raise ValueError(
                    f"{len(result.unexpected_keys)} tensors match no module the config targets, "
                    f"e.g. {result.unexpected_keys[0]}"
                )
            self.peft.eval()  # new LoRA modules are created in training mode
        except Exception as exc:
            self._drop_modules(name, everything=first)
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            why = " ".join(line.strip() for line in lines[:2])
            if len(lines) > 2:
                why += f" (and {len(lines) - 2} more)"
            raise ValueError(
                f"adapter {version!r} at {path} does not fit the base model {self._model_name}: {why}"
            ) from exc
        self.names[version] = name
        self.model = self.peft

    def remove(self, version: str) -> None:
        """Delete adapter ``version`` from the model; after the last one, the plain
        transformers model runs again."""
        name = self.names.pop(version)
        if self.names:
            if self.peft.active_adapter == name:  # PEFT wants an active adapter; rows never use it
                self.peft.set_adapter(next(iter(self.names.values())), inference_mode=True)
            self.peft.delete_adapter(name)
        else:
            self._drop_modules(name, everything=True)

    def _drop_modules(self, name: str, everything: bool) -> None:
        """Remove adapter ``name`` from the model; with ``everything``, remove all LoRA
        layers and go back to the plain transformers model (the base-only fast path)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        peft = self.peft
        if not everything:
            if peft is not None and name in peft.peft_config:
                peft.delete_adapter(name)
            else:  # injection failed half-way: PEFT dropped the config, maybe not the layers
                for module in peft.modules() if peft is not None else ():
                    if isinstance(module, BaseTunerLayer) and name in getattr(module, "lora_A", {}):
                        module.delete_adapter(name)
            return
        base = self.base_model
        for qualified, module in list(base.named_modules()):
            if isinstance(module, BaseTunerLayer) and qualified:
                parent, _, child = qualified.rpartition(".")
                setattr(base.get_submodule(parent), child, module.get_base_layer())
        if "peft_config" in vars(base):
            del base.peft_config
        for n, p in base.named_parameters():
            p.requires_grad_(self._base_requires_grad.get(n, p.requires_grad))
        self.peft = None
        self.model = base
        self.names.clear()

    # -- forward ---------------------------------------------------------------------------
    def kv_owner(self, version: str) -> str:
        """Whose KV a prompt of ``version`` computes, for the prefix cache: the adapter's
        PEFT name (unique per install, never reused, so an adapter unloaded and loaded again
        under the same version name from another folder owns nothing of the first one's),
        ``"__base__"`` for the base (whose rows compute the same KV with or without PEFT's
        wrapper: a mixed-batch forward adds nothing to base rows). A version that is not
        loaded owns nothing anyone else computed (its forward fails anyway)."""
        if version == BASE_VERSION:
            return _PEFT_BASE
        return self.names.get(version, f"not-loaded:{version}")

    def forward_kwargs(self, versions: list[str]) -> dict:
        """Extra model kwargs for rows of these versions: nothing while no adapter is loaded
        (plain transformers model), else PEFT's per-row ``adapter_names`` (``"__base__"`` for
        the base model), which makes one forward serve rows of different versions."""
        if self.peft is None:
            for v in versions:
                if v != BASE_VERSION:
                    raise BackendError(f"model version {v!r} is not loaded on this backend", 503)
            return {}
        names = self.names
        try:
            return {"adapter_names": [_PEFT_BASE if v == BASE_VERSION else names[v] for v in versions]}
        except KeyError as exc:
            raise BackendError(f"model version {exc.args[0]!r} is not loaded on this backend", 503) from None


__all__ = ["BASE_VERSION", "AdapterFiles", "Adapters", "VersionBusy"]
