"""Chat tab: a streaming `gr.ChatInterface` over the chat wrappers, with an offline fallback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import gradio as gr
from gradio.context import LocalContext

from modules.serving import Serving
from modules.tabs.common import (
    DEVICE_EVENT,
    api_model,
    as_user_error,
    api_number,
    api_text,
    model_dropdown,
    model_notes,
    on_device,
    pick,
    setting_slider,
    status_update,
    throttle,
    user_errors,
)
from modules.tabs.history import Made, is_entry_id
from modules.wrappers.base import InvalidInput, ModelUnavailable
from modules.wrappers.chat import ChatProgress, ChatWrapper, Message

NOT_ANSWERED = "Not answered"
#: Reading speed is the limit: 20 updates a second look continuous and leave the CPU to the model.
UPDATE_SECONDS = 0.05
#: Runs in the browser on every change of the chatbot (each streamed token): it changes the marker only
#: when a reply is through (the conversation ends in a note that is not pending: the stats line or a
#: "Not answered" mark) or the chat is cleared, so History hears once per reply. ChatInterface's own
#: `chatbot_value` is set too late for this and by a direct (unqueued) event, whose State changes
#: Gradio 6 does not report to the page.
REPLY_FINISHED_JS = """(conversation, marker) => {
  const last = conversation && conversation.length ? conversation[conversation.length - 1] : null;
  if (!last) return "";
  const title = last.metadata && last.metadata.title;
  return title && last.metadata.status !== "pending" ? conversation.length + " " + title : marker;
}"""


def _text_of(content: Any) -> str:
    """Gradio 6 history content is a string or a list of blocks; keep the text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(block.get("text", "") for block in content if isinstance(block, dict))
    return ""


def not_answered(reason: str) -> gr.ChatMessage:
    """The mark a failed turn gets in place: the conversation stays and the next message can follow."""
    return gr.ChatMessage(
        role="assistant",
        content="The model never saw this message, and the next one is sent without it.",
        metadata={"title": f"{NOT_ANSWERED}: {reason}"},
    )


def plain_history(history: list[dict[str, Any]]) -> list[Message]:
    """The conversation as the model should see it: our notes are left out, and so is a message that was
    not answered (the model never saw it, and two user turns in a row break some chat templates)."""
    turns: list[Message] = []
    for turn in history:
        title = (turn.get("metadata") or {}).get("title") or ""
        if title.startswith(NOT_ANSWERED) and turns and turns[-1]["role"] == "user":
            turns.pop()
        if turn.get("role") in ("user", "assistant") and not title:
            turns.append({"role": turn["role"], "content": _text_of(turn.get("content"))})
    return turns


def titles(history: list[dict[str, Any]]) -> list[str]:
    return [(turn.get("metadata") or {}).get("title") or "" for turn in history]


def last_stats(history: list[dict[str, Any]]) -> str:
    """The stats note under the last answered reply ("" if none)."""
    return next((title for title in reversed(titles(history)) if title and not title.startswith(NOT_ANSWERED)), "")


def restored_conversation(stored: Any) -> list[dict[str, Any]]:
    """A conversation from History as the chat takes it back: text turns and note titles only, since the
    browser's storage may hold anything (a file message there would make the server serve that file)."""
    turns = []
    for turn in stored if isinstance(stored, list) else []:
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
            continue
        title = (turn.get("metadata") or {}).get("title") if isinstance(turn.get("metadata"), dict) else None
        note = {"metadata": {"title": title}} if isinstance(title, str) and title else {}
        content = [{"type": "text", "text": _text_of(turn.get("content"))}]  # as the chatbot hands it over
        turns.append({"role": turn["role"], "content": content, **note})
    return turns


def first_message(settings: Mapping[str, Any]) -> tuple[str, Any]:
    """What a conversation in History is called: its first message; and the model it was held with."""
    conversation = settings.get("conversation")
    users = [turn for turn in restored_conversation(conversation) if turn["role"] == "user"]
    return (_text_of(users[0]["content"]) if users else ""), settings.get("model")


def stats_line(progress: ChatProgress, model_name: str) -> str:
    first = f"{progress.first_token_seconds:.2f} s" if progress.first_token_seconds is not None else "–"
    return (
        f"{progress.tokens} tokens · {progress.tokens_per_second:.1f} tokens/s · "
        f"first token {first} · {model_name} ({progress.backend})"
    )


def waiting_note(line: str) -> gr.ChatMessage:
    """The reply's place holder while the request waits for the device."""
    return gr.ChatMessage(role="assistant", content="", metadata={"title": line, "status": "pending"})


def build_chat_tab(
    wrappers: Mapping[str, ChatWrapper], default: str, serving: Serving, fallback: str | None = None
) -> Made:
    first = wrappers[default]
    with gr.Row():
        model = model_dropdown(wrappers, default)
    notes = gr.Markdown(model_notes(first))
    model.change(lambda model_id: model_notes(pick(wrappers, model_id)), model, notes, api_visibility="private")

    def reply(
        message: str, turns: list[Message], model: str | None, settings: dict[str, Any]
    ) -> Iterator[tuple[ChatProgress, str, ChatWrapper]]:
        """The reply as it grows, with the fallback notice ("" when none) and the wrapper that answers."""
        wrapper = pick(wrappers, model, default)
        notice = ""
        if fallback and wrapper.entry.id != fallback and wrapper.availability():
            notice = f"Note: {wrapper.entry.name} is not available here; answering with {wrappers[fallback].entry.name}. "
            wrapper = wrappers[fallback]
        try:
            for progress in throttle(wrapper.generate(message, turns, **settings), UPDATE_SECONDS):
                yield progress, notice, wrapper
        except ModelUnavailable:
            if not fallback or wrapper is wrappers[fallback]:
                raise
            notice = f"Note: {wrapper.entry.name} could not be loaded; answering with {wrappers[fallback].entry.name}. "
            wrapper = wrappers[fallback]
            for progress in throttle(wrapper.generate(message, turns, **settings), UPDATE_SECONDS):
                yield progress, notice, wrapper

    def respond(
        message: str,
        history: list[dict[str, Any]],
        model: str,
        system_prompt: str,
        temperature: float,
        top_p: float,
        max_new_tokens: float,
    ) -> Iterator[Any]:
        """The page's turn. A failure never raises: it is marked in place, under whatever reply was made,
        so the conversation stays and the input takes the next message at once."""
        settings = {"system_prompt": system_prompt, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
        text = ""
        try:
            for progress, notice, wrapper in reply(message, plain_history(history), model, settings):
                text = progress.text
                yield text
        except Exception as exc:
            partial = [gr.ChatMessage(role="assistant", content=text)] if text else []
            yield [*partial, not_answered(as_user_error(exc).message)]
            return
        stats = stats_line(progress, wrapper.entry.name)
        # The speed travels as a titled note under the reply; plain_history keeps it from the model.
        yield [
            gr.ChatMessage(role="assistant", content=text),
            gr.ChatMessage(role="assistant", content=notice or stats, metadata={"title": notice + stats}),
        ]

    @user_errors
    def chat(
        message: str,
        history: list[dict[str, Any]] | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
    ) -> Iterator[tuple[str, str]]:
        """Reply to a chat message with an instruction-tuned language model, streaming the reply; returns the
        reply and a stats line (tokens, speed, model). Stateless: send the earlier turns as `history`.

        Args:
            message: the user's new message.
            history: earlier turns, oldest first, as [{"role": "user" or "assistant", "content": "..."}].
            model: a model id of this server's Chat catalogue; left out, the default model.
            system_prompt: instructions for the assistant; left out, the model's default (and likewise below).
            temperature: sampling temperature (0: greedy, the same reply every time).
            top_p: nucleus sampling threshold.
            max_new_tokens: longest reply, in tokens.
        """
        if history is not None and not (isinstance(history, list) and all(isinstance(turn, dict) for turn in history)):
            raise InvalidInput(f"history={history!r}: expected a list of {{'role', 'content'}} turns")
        settings = {"system_prompt": system_prompt, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
        for progress, notice, wrapper in reply(message, plain_history(history or []), model, settings):
            yield progress.text, ""
        yield progress.text, notice + stats_line(progress, wrapper.entry.name)

    with gr.Accordion("Settings", open=False):
        system_prompt = gr.Textbox(first.defaults.system_prompt, label="System prompt", lines=2)
        temperature = setting_slider(first, "temperature", "Temperature", step=0.05)
        top_p = setting_slider(first, "top_p", "Top-p", step=0.01)
        max_new_tokens = setting_slider(first, "max_new_tokens", "Max new tokens", step=1, maximum=first.longest_reply())

    def adopt_defaults(model_id: str) -> tuple[Any, ...]:
        wrapper = pick(wrappers, model_id)
        defaults = wrapper.defaults
        longest = wrapper.longest_reply()
        reply_length = gr.Slider(value=min(defaults.max_new_tokens, longest), maximum=longest)
        return defaults.system_prompt, defaults.temperature, defaults.top_p, reply_length

    # A person's pick brings the model's defaults; History's Continue sets a model with its own settings,
    # so then only the longest reply follows the model.
    model.input(adopt_defaults, model, [system_prompt, temperature, top_p, max_new_tokens], api_visibility="private")
    model.change(
        lambda model_id: gr.Slider(maximum=pick(wrappers, model_id).longest_reply()), model, max_new_tokens,
        api_visibility="private",
    )  # fmt: skip

    respond_in_turn = on_device(serving, respond, "chat", waiting_note, default=default, refused=not_answered)

    def respond_from_page(message: str, history: list[dict[str, Any]], *settings: Any) -> Iterator[Any]:
        # ChatInterface calls its function itself, without Gradio filling in a `gr.Request`; the request
        # is in Gradio's context (ChatInterface reads it there for its own examples).
        yield from respond_in_turn(message, history, *settings, LocalContext.request.get(None))

    page_chat = gr.ChatInterface(
        respond_from_page,
        additional_inputs=[model, system_prompt, temperature, top_p, max_new_tokens],
        examples=[["Write a haiku about the ocean."], ["Explain what a GPU does, in two sentences."]],
        cache_examples=False,
        api_visibility="private",  # the page's conversation; API callers use the stateless /chat below
        fill_height=False,
        stop_btn=True,
        **DEVICE_EVENT,  # replies wait for the device in its fair queue, like every other model's work
    )
    gr.Button(visible=False).click(
        on_device(serving, chat, "chat", status_update(2), page=False, default=default),
        [
            api_text("message"),
            gr.JSON(value=None, label="history", visible=False),
            api_model(wrappers),
            api_text("system_prompt"),
            api_number("temperature", first),
            api_number("top_p", first),
            api_number("max_new_tokens", first),
        ],
        [api_text("reply"), api_text("stats")],
        api_name="chat",
        **DEVICE_EVENT,
    )

    # History: one entry per conversation, updated after each finished reply and started anew after Clear.
    conversation_id = gr.State(None)
    transcript, summary, last_reply = gr.State(None), gr.State(""), gr.State("")
    reply_finished = gr.Textbox(visible=False)
    page_chat.chatbot.change(None, [page_chat.chatbot, reply_finished], reply_finished, js=REPLY_FINISHED_JS)
    settings = {
        # Continue fills both the chatbot and the copy ChatInterface sends to `respond` as the history.
        "conversation": (page_chat.chatbot, page_chat.chatbot_state),
        "model": model, "system_prompt": system_prompt, "temperature": temperature, "top_p": top_p,
        "max_new_tokens": max_new_tokens,
    }  # fmt: skip

    @user_errors
    def save_conversation(
        conversation_key: Any, conversation: list[dict[str, Any]], model_id: str, *values: Any
    ) -> tuple[Any, ...]:
        """The conversation's id, its transcript, its stats (turns, speed) and its last reply, for History;
        an empty chat (after Clear) has none, so the next message starts another entry."""
        turns = plain_history(conversation or [])
        if not turns:
            return None, None, "", ""
        # The id may come back from the browser (Continue), and it names the conversation in its file.
        if not is_entry_id(conversation_key):
            conversation_key = uuid.uuid4().hex
        stats = last_stats(conversation)
        chat_settings = dict(zip(("system_prompt", "temperature", "top_p", "max_new_tokens"), values))
        path = pick(wrappers, model_id, default).write_transcript(turns, conversation_key, stats, **chat_settings)
        asked = sum(turn["role"] == "user" for turn in turns)
        replies = [turn["content"] for turn in turns if turn["role"] == "assistant"]
        line = " · ".join(part for part in (f"{asked} turn{'s' if asked != 1 else ''}", stats) if part)
        return conversation_key, str(path.resolve()), line, replies[-1] if replies else ""

    finished = reply_finished.change(
        save_conversation,
        [conversation_id, page_chat.chatbot, model, system_prompt, temperature, top_p, max_new_tokens],
        [conversation_id, transcript, summary, last_reply],
        api_visibility="private",
        show_progress="hidden",
    )
    return Made(
        runs=[finished], settings=settings, files=transcript, stats=summary, text=last_reply, text_label="Last reply",
        describe=first_message, entry_id=conversation_id, rerun_label="Continue",
        restore={"conversation": restored_conversation},
    )  # fmt: skip
