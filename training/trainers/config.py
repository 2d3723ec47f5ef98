"""Training configs: YAML over TRL's ``SFTConfig``/``DPOConfig`` and PEFT's ``LoraConfig``.

Each stage (``sft``, ``dpo``) has a YAML file with three sections: ``args`` (fields of the
TRL config class), ``lora`` (fields of ``LoraConfig``) and ``flywheel`` (our options).
The bundled defaults are ``training/trainers/configs/{sft,dpo}.yaml``. Overrides are
``STAGE.SECTION.KEY=VALUE`` strings (the value parsed as YAML), e.g. ``sft.args.max_steps=4``.

Every value, from the file or an override, is checked against its field's type (the
``SFTConfig``/``DPOConfig``/``LoraConfig`` dataclass field, or :data:`OPTIONS`) and coerced
to it: PyYAML reads ``1e-3`` (a float without a dot) as a string, which would otherwise
reach torch's optimizer and fail there, after the model is loaded. An unknown key or a
value that cannot be coerced is a :class:`TrainingConfigError` naming it, raised before any
job starts (:func:`check_overrides`).

:func:`build_args` turns a stage config into the TRL config for this machine: bf16 (base
weights in bf16, autocast, the adapter in fp32) where the hardware multiplies bf16
matrices natively: a CUDA card that supports it, or a CPU with AMX tiles (Intel Sapphire
Rapids and later: ~10x fp32's matmul rate, and a packed chart step 2.5x faster there,
``python bench/training.py --speedups``); fp32 on other CPUs, where bf16 is emulated.
``args.bf16`` set in the config forces it either way. ``use_cpu`` on a CPU; and QLoRA
(4-bit NF4 base weights) when ``flywheel.qlora`` is set and bitsandbytes is installed.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from training.errors import TrainingConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
STAGES = ("sft", "dpo")
SECTIONS = ("args", "lora", "flywheel")
OPTIONS = {
    "sft": {"assistant_turns": ("all", "last"), "per_task_eval": bool, "qlora": bool,
            "shared_prefix_packing": bool, "pack_max_length": int, "pack_max_examples": int,
            "token_loss": ("mean", "focal"), "focal_gamma": float,
            "replay_loss": ("ce", "kl"), "replay_kl_beta": float},
    "dpo": {"qlora": bool},
}


@dataclass(frozen=True)
class StageConfig:
    stage: str
    args: dict = field(default_factory=dict)
    lora: dict = field(default_factory=dict)
    flywheel: dict = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> dict:
        return {"stage": self.stage, "source": self.source, "args": self.args, "lora": self.lora,
                "flywheel": self.flywheel}


def default_config_path(stage: str) -> Path:
    return CONFIG_DIR / f"{stage}.yaml"


def _trl_class(stage: str):
    from trl import DPOConfig, SFTConfig

    return {"sft": SFTConfig, "dpo": DPOConfig}[stage]


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _relaxed(hint):
    """``hint`` with a Literal that documents a pattern (PEFT's ``'pissa_niter_[number of
    iters]'``) widened to ``str``: it is not a closed set of values."""
    origin = typing.get_origin(hint)
    if origin is Literal and any(isinstance(a, str) and "[" in a for a in typing.get_args(hint)):
        return str
    if origin in (Union, types.UnionType):
        return Union[tuple(_relaxed(a) for a in typing.get_args(hint))]
    return hint


@functools.cache
def _adapter(hint) -> TypeAdapter | None:
    """A validator for a field's type, or None for a type pydantic cannot check (a class of
    the library's own, left to the library)."""
    hint = _relaxed(hint)
    if hint is Any:
        return None
    try:
        return TypeAdapter(hint, config=ConfigDict(coerce_numbers_to_str=True))
    except Exception:  # noqa: BLE001 - a BaseModel/dataclass type (config not allowed) or an unknown class
        try:
            return TypeAdapter(hint)
        except Exception:  # noqa: BLE001
            return None


def _type_name(hint) -> str:
    if isinstance(hint, tuple):
        return " or ".join(map(repr, hint))
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def coerce_value(value, hint):
    """``value`` as the type ``hint`` wants it: unchanged when it already fits; else converted
    (``"1e-3"`` -> ``0.001``, ``"4"`` -> ``4``). Raises ValueError when it cannot be."""
    adapter = _adapter(Literal[hint] if isinstance(hint, tuple) else hint)
    if adapter is None:
        return value
    try:
        adapter.validate_python(value, strict=True)
        return value
    except ValidationError:
        pass
    try:
        out = adapter.validate_python(value)
    except ValidationError as e:
        raise ValueError(e.errors()[0]["msg"]) from None
    # keep plain YAML values (the config goes into run.json); a library object stays the library's to build
    return out if isinstance(out, (str, int, float, bool, list, dict, type(None))) else value


def parse_overrides(items: Iterable[str]) -> dict[str, list[tuple[str, str, object]]]:
    """``["sft.args.max_steps=4", ...]`` -> ``{"sft": [("args", "max_steps", 4)], ...}``."""
    out: dict[str, list] = {s: [] for s in STAGES}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 3 or parts[0] not in STAGES or parts[1] not in SECTIONS:
            raise TrainingConfigError(
                f"override {item!r}: write STAGE.SECTION.KEY=VALUE with STAGE one of {', '.join(STAGES)} and "
                f"SECTION one of {', '.join(SECTIONS)}, e.g. sft.args.max_steps=4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise TrainingConfigError(f"override {item!r}: the value is not valid YAML ({e})") from None
        out[parts[0]].append((parts[1], parts[2], value))
    return out


def load_stage_config(stage: str, path: Path | str | None = None,
                      overrides: Iterable[tuple[str, str, object]] | Mapping | None = None) -> StageConfig:
    """Read a stage's YAML (default: the bundled one), apply overrides, check every key and
    coerce every value to its field's type."""
    if stage not in STAGES:
        raise TrainingConfigError(f"unknown training stage {stage!r} (one of {', '.join(STAGES)})")
    path = Path(path).expanduser() if path else default_config_path(stage)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise TrainingConfigError(f"{stage} config {path} does not exist") from None
    except yaml.YAMLError as e:
        raise TrainingConfigError(f"{stage} config {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or set(data) - set(SECTIONS):
        raise TrainingConfigError(f"{path}: top-level keys must be among {', '.join(SECTIONS)}; "
                                  f"got {', '.join(map(str, data)) if isinstance(data, dict) else type(data).__name__}")
    sections = {s: dict(data.get(s) or {}) for s in SECTIONS}
    if isinstance(overrides, Mapping):
        overrides = [(sec, k, v) for sec, kv in overrides.items() for k, v in kv.items()]
    overridden = set()
    for section, key, value in overrides or ():
        sections[section][key] = value
        overridden.add((section, key))
    cfg = StageConfig(stage, sections["args"], sections["lora"], sections["flywheel"], str(path))
    return validate(cfg, overridden)


def check_overrides(overrides: Iterable[str], sft_config: Path | str | None = None,
                    dpo_config: Path | str | None = None) -> dict[str, StageConfig]:
    """Both stages' configs with ``--set`` overrides applied, every key and value checked:
    what a job would train with. Call it before starting one (``flywheel train``, a
    flywheel turn): a bad override fails here, not in the job after the model is loaded."""
    parsed = parse_overrides(overrides)
    return {"sft": load_stage_config("sft", sft_config, parsed["sft"]),
            "dpo": load_stage_config("dpo", dpo_config, parsed["dpo"])}


def validate(cfg: StageConfig, overridden: Collection[tuple[str, str]] = ()) -> StageConfig:
    """Check every key of ``cfg`` and coerce each value to its field's type; returns the
    checked config. ``overridden``: the (section, key) pairs that came from overrides (for
    the messages)."""
    from peft import LoraConfig

    where = f"{cfg.stage} config ({cfg.source})"
    unknown = set(cfg.args) - _field_names(_trl_class(cfg.stage))
    if unknown:
        raise TrainingConfigError(f"{where}: args {', '.join(sorted(unknown))} are not "
                                  f"{_trl_class(cfg.stage).__name__} fields (TRL 1.16)")
    unknown = set(cfg.lora) - _field_names(LoraConfig)
    if unknown:
        raise TrainingConfigError(f"{where}: lora {', '.join(sorted(unknown))} are not LoraConfig fields")
    known = OPTIONS[cfg.stage]
    for key in cfg.flywheel:
        if key not in known:
            raise TrainingConfigError(f"{where}: flywheel.{key} is not an option (known: {', '.join(known)})")
    types_of = {"args": _field_types(_trl_class(cfg.stage)), "lora": _field_types(LoraConfig), "flywheel": known}
    checked = {}
    for section in SECTIONS:
        checked[section] = {}
        for key, value in getattr(cfg, section).items():
            hint = types_of[section][key]
            try:
                checked[section][key] = coerce_value(value, hint)
            except ValueError as e:
                source = " (from an override)" if (section, key) in overridden else ""
                raise TrainingConfigError(f"{where}: {section}.{key} must be {_type_name(hint)}, got {value!r}"
                                          f"{source}: {e}") from None
    return dataclasses.replace(cfg, **checked)


@dataclass(frozen=True)
class DevicePlan:
    cuda: bool
    bf16: bool
    qlora: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX tiles): there bf16
    training steps are ~2-3x faster than fp32; elsewhere bf16 on a CPU is emulated."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def device_plan(cfg: StageConfig) -> DevicePlan:
    import torch

    cuda = torch.cuda.is_available()
    bf16 = bool(torch.cuda.is_bf16_supported()) if cuda else cpu_has_native_bf16()
    if "bf16" in cfg.args:
        bf16 = bool(cfg.args["bf16"])
    qlora = bool(cuda and cfg.flywheel.get("qlora", False) and importlib.util.find_spec("bitsandbytes"))
    return DevicePlan(cuda=cuda, bf16=bf16, qlora=qlora)


def build_args(cfg: StageConfig, output_dir: Path | str, plan: DevicePlan | None = None, **extra):
    """The TRL config (``SFTConfig`` or ``DPOConfig``) of a stage for this machine."""
    plan = plan or device_plan(cfg)
    kwargs = dict(cfg.args)
    kwargs.update(extra)
    kwargs["output_dir"] = str(output_dir)
    kwargs["bf16"] = plan.bf16
    kwargs["fp16"] = False
    if not plan.cuda:
        kwargs["use_cpu"] = True
    if plan.qlora:  # 4-bit base: memory is the point, trade time for it
        kwargs["activation_checkpointing"] = True
    try:
        return _trl_class(cfg.stage)(**kwargs)
    except (TypeError, ValueError) as e:
        raise TrainingConfigError(f"{cfg.stage} config ({cfg.source}): {e}") from None


def build_lora(cfg: StageConfig):
    from peft import LoraConfig

    try:
        return LoraConfig(**cfg.lora)
    except (TypeError, ValueError) as e:
        raise TrainingConfigError(f"{cfg.stage} config ({cfg.source}): lora: {e}") from None
