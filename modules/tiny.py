"""Tiny random-weight models for `python app.py --tiny`, tests and offline UI work.

Each builder makes a model with the real classes, saves it with `save_pretrained`, and returns the
catalogue entry that points at the folder, so the app loads it through the very code it uses for real
weights. Builds are cached: a folder is rebuilt only when `TINY_VERSION` changes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from modules.catalog import Catalog, ModelEntry, Source, TaskCatalog

#: Bump when a builder changes, so cached tiny models are rebuilt.
TINY_VERSION = "1"

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_root() -> Path:
    """Where tiny models live: $ATELIER_CACHE, else $XDG_CACHE_HOME/atelier, else ~/.cache/atelier."""
    base = os.environ.get("ATELIER_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atelier"
    return Path(base) / "tiny" / TINY_VERSION


def build_tiny_chat(folder: Path) -> None:
    """A 2-layer Llama with a byte-level tokenizer built offline and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    byte_symbols = list(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {symbol: i for i, symbol in enumerate(specials + sorted(byte_symbols))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=vocab["<|im_start|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


#: task -> (model id, display name, wrapper, builder)
TINY_BUILDERS: dict[str, tuple[str, str, str, Callable[[Path], None]]] = {
    "chat": ("tiny-chat", "Tiny Llama", "transformers-chat", build_tiny_chat),
}


def build_tiny_catalog(root: Path | None = None) -> Catalog:
    """Build (once) every tiny model and return a catalogue of them."""
    root = root or cache_root()
    tasks: dict[str, TaskCatalog] = {}
    for task, (model_id, name, wrapper, builder) in TINY_BUILDERS.items():
        folder = root / model_id
        if not (folder / ".complete").exists():
            # Build into a scratch folder and rename, so an interrupted build is never mistaken for a cache.
            scratch = root / f".{model_id}.building"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            builder(scratch)
            (scratch / ".complete").touch()
            shutil.rmtree(folder, ignore_errors=True)
            scratch.rename(folder)
        entry = ModelEntry(
            id=model_id,
            name=name,
            wrapper=wrapper,
            source=Source(path=str(folder)),
            license="random weights (no licence restrictions)",
            random_weights=True,
        )
        tasks[task] = TaskCatalog(default=model_id, models=[entry])
    return Catalog(tasks=tasks)
