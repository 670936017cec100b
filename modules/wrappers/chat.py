"""Chat wrappers: the shared contract every chat backend follows, and the transformers backend.

A backend only supplies `load` and `_stream_text`; validation, timing, the lease and the stop handling
live here once, so every backend reports tokens/s and time-to-first-token the same way.
"""

from __future__ import annotations

import hashlib
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from modules.wrappers.base import (
    MAX_SEED,
    InvalidInput,
    Settings,
    Wrapper,
    check_prompt,
    resolve_seed,
    stream_from_thread,
)
from modules.wrappers.gguf_header import context_length, kv_cache_bytes, read_scalars
from modules.wrappers.sampling import own_random_stream

#: The longest reply any request may ask for; a model's context may cap it lower (`longest_reply`).
MAX_NEW_TOKENS = 4096
Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": text}


class ChatSettings(Settings):
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 means greedy decoding")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1, le=MAX_NEW_TOKENS)
    system_prompt: str = Field("You are a helpful assistant.", max_length=4000)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 picks a random seed; only sampling uses it")
    stop: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=4, description="the reply ends before the first of these strings"
    )


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ChatProgress:
    """The reply so far; the last one a request yields has `done=True`."""

    text: str
    tokens: int
    seconds: float
    first_token_seconds: float | None
    backend: str
    done: bool = False
    #: Tokens of the templated conversation, as the model's tokenizer counts them.
    prompt_tokens: int = 0
    #: On the last progress: "length" when max_new_tokens ended the reply, else "stop".
    finish_reason: FinishReason | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Counter:
    """What the worker thread reports back: the prompt's tokens, the tokens it generated and why it ended."""

    tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: FinishReason = "stop"


def first_stop(text: str, stops: list[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    return min((i for stop in stops if (i := text.find(stop)) >= 0), default=None)


def partial_stop(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could begin a stop string (held back until it is known)."""
    return max((n for stop in stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)


class ChatWrapper(Wrapper):
    task = "chat"
    settings_schema = ChatSettings
    backend: ClassVar[str]

    def check_inputs(self, message: object, history: list[Message], settings: ChatSettings) -> list[Message]:
        """The full conversation to send, validated; raises InvalidInput naming what is wrong."""
        text = check_prompt(message, self.host.max_prompt_chars, name="message")
        for turn in history:
            if turn.get("role") not in ("user", "assistant") or not isinstance(turn.get("content"), str):
                raise InvalidInput(f"history entry {turn!r} is not a user or assistant text message")
        system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt.strip() else []
        return [*system, *history, {"role": "user", "content": text}]

    def context_tokens(self) -> int | None:
        """The model's context in tokens, read from its files without loading; None if unknown."""
        return None

    def longest_reply(self) -> int:
        """The most max_new_tokens can usefully be: a reply as long as the context never fits beside a prompt."""
        context = self.context_tokens()
        return min(MAX_NEW_TOKENS, context) if context else MAX_NEW_TOKENS

    def working_bytes(self, settings: ChatSettings, messages: list[Message]) -> int:
        """Declared to the memory manager per request; backends whose cache is allocated at load (and so
        counted in their footprint) declare nothing."""
        return 0

    def generate(
        self, message: str, history: list[Message] | None = None, **overrides: Any
    ) -> Generator[ChatProgress, None, None]:
        """Stream the reply to `message`; closing the generator stops generation and ends the lease."""
        # 1. Check inputs and pick the seed
        settings = self.settings(**overrides)
        messages = self.check_inputs(message, history or [], settings)
        settings = settings.model_copy(update={"seed": resolve_seed(settings.seed)})
        # 2. Stream inside a lease; the manager retries once after an OOM before the first token
        yield from self.manager.stream(
            self, lambda model: self._timed(model, messages, settings), working_bytes=self.working_bytes(settings, messages)
        )

    def write_transcript(self, turns: list[Message], conversation: str, stats: str = "", **overrides: Any) -> Path:
        """The conversation as a Markdown file under the host's output folder (`chat/`), its model, settings
        and last stats line at the top. The file is named by its content, so the same conversation written
        again is the same file."""
        settings = self.settings(**overrides)
        lines = [
            f"# Chat with {self.entry.name}",
            "",
            f"- Model: {self.entry.name} (`{self.entry.id}`)",
            f"- Conversation: {conversation}",
            f"- System prompt: {settings.system_prompt}",
            f"- Temperature {settings.temperature} · top-p {settings.top_p} · max new tokens {settings.max_new_tokens}",
            *([f"- Last reply: {stats}"] if stats else []),
        ]
        for turn in turns:
            lines += ["", f"## {turn['role'].capitalize()}", "", turn["content"]]
        text = "\n".join(lines) + "\n"
        folder = self.host.output_dir / "chat"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.entry.id}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.md"
        path.write_text(text, encoding="utf-8")
        return path

    def _timed(self, model: Any, messages: list[Message], settings: ChatSettings) -> Iterator[ChatProgress]:
        """Relay the backend's text; a stop string cuts the reply, and text that may begin one is held back.

        Backends end generation on the token that completes a stop string, so the counts stay exact.
        """
        started = time.perf_counter()
        first: float | None = None
        text = ""
        stopped_by_string = False
        counter = _Counter()
        pieces = stream_from_thread(lambda emit, stop: self._stream_text(model, messages, settings, emit, stop, counter))
        for piece in pieces:
            if first is None and piece:
                first = time.perf_counter() - started
            text += piece
            cut = first_stop(text, settings.stop)
            if cut is not None:
                text, stopped_by_string = text[:cut], True
                pieces.close()  # waits for the backend, so its counts are final
                break
            shown = text[: len(text) - partial_stop(text, settings.stop)]
            yield ChatProgress(shown, counter.tokens, time.perf_counter() - started, first, self.backend,
                               prompt_tokens=counter.prompt_tokens)
        yield ChatProgress(
            text,
            counter.tokens,
            time.perf_counter() - started,
            first,
            self.backend,
            done=True,
            prompt_tokens=counter.prompt_tokens,
            finish_reason="stop" if stopped_by_string else counter.finish_reason,
        )

    @abstractmethod
    def _stream_text(
        self,
        model: Any,
        messages: list[Message],
        settings: ChatSettings,
        emit: Callable[[str], None],
        stop: threading.Event,
        counter: _Counter,
    ) -> None:
        """Generate in the worker thread: `emit` text pieces, end soon after `stop` is set, and fill `counter`.

        Sampling is seeded with `settings.seed`; generation ends on the token that completes any of
        `settings.stop` (the text may still contain it: `_timed` cuts it).
        """


@dataclass
class LoadedCausalLM:
    model: Any
    tokenizer: Any


class TransformersChat(ChatWrapper):
    """Any causal LM transformers can load: hub or local weights, or a GGUF file it dequantises."""

    backend = "transformers"

    def load(self, device: str) -> LoadedCausalLM:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        location, options = self.location()
        if self.entry.source.file:  # a GGUF file: transformers dequantises it to `dtype`
            options["gguf_file"] = self.entry.source.file
        # Never run code shipped with a model: a public link must not execute a stranger's repo.
        options["trust_remote_code"] = False
        tokenizer = self.loading(lambda: AutoTokenizer.from_pretrained(location, **options))
        model = self.loading(
            lambda: AutoModelForCausalLM.from_pretrained(location, dtype=self.torch_dtype(), **options)
        )
        return LoadedCausalLM(model.to(device).eval(), tokenizer)

    def modules_of(self, model: LoadedCausalLM) -> list[Any]:
        return [model.model]

    def working_bytes(self, settings: ChatSettings, messages: list[Message]) -> int:
        """The KV cache this conversation can grow: at most one position per prompt character (tokens are
        never shorter than a byte-level character), plus the reply, capped at the model's context."""
        layout = self._kv_layout
        if layout is None:
            return 0
        bytes_per_position, context = layout
        positions = sum(len(turn["content"]) for turn in messages) + settings.max_new_tokens
        return bytes_per_position * min(positions, context)

    def context_tokens(self) -> int | None:
        return self._kv_layout[1] if self._kv_layout else None

    @cached_property
    def _kv_layout(self) -> tuple[int, int] | None:
        """(KV-cache bytes per position, context length), read from the files without loading; None if unknown."""
        element = 4 if self.dtype_name == "float32" else 2
        source = self.entry.source
        if source.file:  # GGUF: the shapes are in its header
            folder = source.local_folder()
            if folder is None or not (folder / source.file).is_file():
                return None
            metadata = read_scalars(folder / source.file)
            return kv_cache_bytes(metadata, 1, element), context_length(metadata)
        config = self.config_json("config.json")
        if not config or "num_hidden_layers" not in config or "num_attention_heads" not in config:
            return None
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        kv_heads = config.get("num_key_value_heads") or heads
        per_position = 2 * config["num_hidden_layers"] * kv_heads * head_dim * element  # K and V
        return per_position, config.get("max_position_embeddings", 2048)

    def _stream_text(
        self,
        model: LoadedCausalLM,
        messages: list[Message],
        settings: ChatSettings,
        emit: Callable[[str], None],
        stop: threading.Event,
        counter: _Counter,
    ) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        inputs = model.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(model.model.device)
        prompt_tokens = counter.prompt_tokens = inputs["input_ids"].shape[1]
        context = getattr(model.model.config, "max_position_embeddings", None)
        if context and prompt_tokens + settings.max_new_tokens > context:
            raise InvalidInput(
                f"the conversation is {prompt_tokens} tokens and max_new_tokens={settings.max_new_tokens}; "
                f"this model's context is {context} tokens. Clear the chat or lower max_new_tokens."
            )
        streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = (
            {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
            if settings.temperature > 0
            else {"do_sample": False}
        )
        # transformers' own criterion ends generation on the very token that completes a stop string.
        stop_strings = {"stop_strings": settings.stop, "tokenizer": model.tokenizer} if settings.stop else {}
        result: dict[str, Any] = {}

        def generate() -> None:
            try:
                # Sampling draws on the request's own stream, seeded with the reply's seed, never on torch's
                # global one (other requests sample beside it); greedy decoding ignores it.
                with torch.inference_mode(), own_random_stream(settings.seed) as (lend, take_back):
                    result["ids"] = model.model.generate(
                        **inputs,
                        max_new_tokens=settings.max_new_tokens,
                        streamer=streamer,
                        logits_processor=LogitsProcessorList([lend]),
                        stopping_criteria=StoppingCriteriaList([take_back, StopWhenAsked()]),
                        pad_token_id=model.tokenizer.pad_token_id or model.tokenizer.eos_token_id,
                        **stop_strings,
                        **sampling,
                    )
            except BaseException as exc:
                result["error"] = exc
                streamer.end()

        # transformers' streamer is fed from generate's own thread; this thread relays its text.
        thread = threading.Thread(target=generate, name="atelier-generate", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                counter.tokens += 1
                emit(piece)
        finally:
            stop.set()
            thread.join()
        if "error" in result:
            raise result["error"]
        counter.tokens = int(result["ids"].shape[1] - prompt_tokens)
        eos = model.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        ended_on_eos = counter.tokens > 0 and int(result["ids"][0, -1]) in eos_ids
        counter.finish_reason = "length" if counter.tokens >= settings.max_new_tokens and not ended_on_eos else "stop"
