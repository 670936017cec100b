"""The bridge between the Image and Caption tabs: text -> image -> text, and back to a prompt.

Each tab builder returns only the components the bridge needs; this file wires them, so neither tab
knows the other exists. Both events are named (`/caption_this`, `/use_as_prompt`) but undocumented: they are
page wiring, not part of the public API.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.tabs.caption import CaptionTab
from modules.tabs.common import user_errors
from modules.tabs.image import ImageTab
from modules.wrappers.base import InvalidInput


def chosen_image(gallery: list[Any] | None, selected: int | None) -> str:
    """The path of the gallery image the user selected (the first when none was clicked)."""
    if not gallery:
        raise InvalidInput("the gallery is empty: generate an image first")
    index = selected if isinstance(selected, int) and 0 <= selected < len(gallery) else 0
    item = gallery[index]
    path = item[0] if isinstance(item, (list, tuple)) else item
    return str(path)


def connect(tabs: gr.Tabs, parts: dict[str, Any]) -> None:
    """Wire the bridge when both tabs are present; `parts` maps task -> what its builder returned."""
    image, caption = parts.get("image"), parts.get("caption")
    if not isinstance(image, ImageTab) or not isinstance(caption, CaptionTab):
        return

    @user_errors
    def caption_this(gallery: list[Any] | None, selected: int | None) -> tuple[str, gr.Tabs]:
        return chosen_image(gallery, selected), gr.Tabs(selected="caption")

    @user_errors
    def use_as_prompt(text: str) -> tuple[str, gr.Tabs]:
        if not text or not text.strip():
            raise InvalidInput("the caption is empty: caption an image first")
        return text.strip(), gr.Tabs(selected="image")

    image.caption_button.click(
        caption_this, [image.gallery, image.selected], [caption.upload, tabs], api_name="caption_this",
        api_visibility="undocumented",  # page wiring, not part of the public API
    )
    caption.use_button.click(
        use_as_prompt, caption.caption, [image.prompt, tabs], api_name="use_as_prompt", api_visibility="undocumented"
    )
