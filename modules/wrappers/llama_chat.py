"""The llama.cpp chat backend: a GGUF file run by `llama-cpp-python`, behind the same Chat tab.

llama.cpp keeps its weights (a memory-mapped GGUF) and its KV cache outside torch, so this wrapper
reports its own footprint to the memory manager (file size + KV cache, from the GGUF's metadata) and
frees it for real on eviction (`Llama.close()` unmaps the file and frees the context). The context
cannot move between devices, so `can_offload` is False: an evicted model is dropped and reloads in a
fraction of a second.

The prompt is rendered with the chat template stored in the GGUF, exactly as llama.cpp's own
`create_chat_completion` does, and generated with `create_completion`, which (unlike the chat call) takes
a stopping criterion: llama.cpp calls it after every sampled token, so it counts tokens exactly and ends
generation on the very next token after Stop.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.threads_policy import compute_threads
from modules.wrappers.base import InvalidInput, ModelUnavailable
from modules.wrappers.chat import ChatSettings, ChatWrapper, Message, _Counter
from modules.wrappers.gguf_header import context_length, kv_cache_bytes, read_scalars

INSTALL_HINT = "llama-cpp-python is not installed; `make run LLAMA=1` builds and installs it (see the README)"


def llama_cpp_installed() -> bool:
    """Whether `import llama_cpp` can work, found without importing it (that loads the native library)."""
    return importlib.util.find_spec("llama_cpp") is not None


@dataclass
class LoadedLlama:
    llm: Any  # llama_cpp.Llama
    format_chat: Any  # llama_cpp.llama_chat_format.Jinja2ChatFormatter built from the GGUF's template
    n_ctx: int
    footprint: int
    #: A llama.cpp context serves one generation at a time.
    lock: threading.Lock


class LlamaCppChat(ChatWrapper):
    """A GGUF chat model run by llama.cpp (CPU builds; a GPU build offloads every layer)."""

    backend = "llama.cpp"
    can_offload = False
    #: The context allocated at load: the model's trained context, capped so the KV cache stays modest.
    max_context = 8192

    @classmethod
    def unusable_reason(cls, device: str) -> str | None:
        if not llama_cpp_installed():
            return INSTALL_HINT
        if device != "cpu":
            return f"the device is {device}, where the transformers backend uses the accelerator"
        return None

    # -- files and footprint -----------------------------------------------------------------------

    def gguf_path(self) -> Path:
        source = self.entry.source
        if not source.file or not source.file.endswith(".gguf"):
            raise ModelUnavailable(f"{self.entry.name}: the llama.cpp backend needs `source.file` naming a .gguf file")
        folder, options = self.location()
        if source.hub:
            from huggingface_hub import hf_hub_download

            return Path(self.loading(lambda: hf_hub_download(folder, source.file, **options)))
        return Path(folder) / source.file

    def context_for(self, metadata: dict[str, Any]) -> int:
        return min(context_length(metadata), self.max_context)

    def context_tokens(self) -> int | None:
        """The context llama.cpp is given at load (n_ctx), read from the GGUF header without loading."""
        try:
            path = self.gguf_path()
        except ModelUnavailable:
            return None
        return self.context_for(read_scalars(path)) if path.is_file() else None

    def estimate_bytes(self) -> int:
        """The GGUF file plus the KV cache llama.cpp allocates for the context, read before loading."""
        try:
            path = self.gguf_path()
        except ModelUnavailable:
            return 0
        if not path.is_file():
            return 0
        metadata = read_scalars(path)
        return path.stat().st_size + kv_cache_bytes(metadata, self.context_for(metadata))

    def measure_bytes(self, model: LoadedLlama) -> int:
        return model.footprint

    def modules_of(self, model: LoadedLlama) -> list[Any]:
        return []  # nothing here is a torch module

    def move(self, model: LoadedLlama, device: str) -> LoadedLlama:
        if device != self.device:
            raise RuntimeError(f"a llama.cpp model cannot move from {self.device} to {device}")
        return model

    def close(self, model: LoadedLlama) -> None:
        """Free the context and unmap the weights now, not whenever the garbage collector runs."""
        with model.lock:
            model.llm.close()
            model.llm = None

    # -- loading and generation ----------------------------------------------------------------------

    def load(self, device: str) -> LoadedLlama:
        if not llama_cpp_installed():
            raise ModelUnavailable(f"{self.entry.name} is set to run on llama.cpp, but {INSTALL_HINT}.")
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = self.gguf_path()
        metadata = read_scalars(path)
        template = metadata.get("tokenizer.chat_template")
        if not isinstance(template, str):
            raise ModelUnavailable(f"{self.entry.name}: {path.name} carries no chat template")
        n_ctx = self.context_for(metadata)
        threads = compute_threads()  # all cores, as torch uses (see modules/threads_policy.py)
        llm = self.loading(
            lambda: Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=0 if device == "cpu" else -1,
                verbose=False,
            )
        )

        def token_text(token: int) -> str:
            return llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

        format_chat = Jinja2ChatFormatter(
            template=template,
            eos_token=token_text(llm.token_eos()),
            bos_token=token_text(llm.token_bos()),
            stop_token_ids=[llm.token_eos()],
        )
        footprint = path.stat().st_size + kv_cache_bytes(metadata, n_ctx)
        return LoadedLlama(llm, format_chat, n_ctx, footprint, threading.Lock())

    def _stream_text(
        self,
        model: LoadedLlama,
        messages: list[Message],
        settings: ChatSettings,
        emit: Callable[[str], None],
        stop: threading.Event,
        counter: _Counter,
    ) -> None:
        from llama_cpp import StoppingCriteriaList

        # 1. Render the GGUF's chat template and tokenize, as create_chat_completion does
        rendered = model.format_chat(messages=messages)
        with model.lock:
            llm = model.llm
            if llm is None:
                raise RuntimeError(f"{self.key} was unloaded during the request")
            prompt = llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
            counter.prompt_tokens = len(prompt)
            # 2. Refuse what does not fit the context, before any work
            if len(prompt) + settings.max_new_tokens > model.n_ctx:
                raise InvalidInput(
                    f"the conversation is {len(prompt)} tokens and max_new_tokens={settings.max_new_tokens}; "
                    f"this model's context is {model.n_ctx} tokens. Clear the chat or lower max_new_tokens."
                )

            # 3. Called by llama.cpp after each sampled token with the ids before it (and once more at
            #    the end with the same ids), so the count comes from the position, not the calls.
            def sampled(input_ids: Any, logits: Any) -> bool:
                counter.tokens = max(counter.tokens, len(input_ids) - len(prompt) + 1)
                return stop.is_set()

            # 4. Stream; temperature 0 is greedy in llama.cpp. Only temperature and top-p shape sampling.
            #    llama.cpp ends on the token that completes a stop string and streams none of it.
            chunks = llm.create_completion(
                prompt,
                max_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=0,
                min_p=0.0,
                repeat_penalty=1.0,
                seed=settings.seed,
                stop=[*rendered.stop, *settings.stop],
                stopping_criteria=StoppingCriteriaList([sampled]),
                stream=True,
            )
            try:
                for chunk in chunks:
                    if stop.is_set():
                        break
                    choice = chunk["choices"][0]
                    if choice["text"]:
                        emit(choice["text"])
                    if choice["finish_reason"]:  # on the last chunk: "length" or "stop"
                        counter.finish_reason = choice["finish_reason"]
            finally:
                chunks.close()
