"""The bridge between tabs: Image -> Caption -> back to a prompt (text -> image -> text), and
Image -> 3D (text -> image -> point cloud -> mesh, the Point-E paper's own pipeline).

Each tab builder returns only the components the bridge needs; this file wires them, so no tab knows
another exists. The events are named (`/caption_this`, `/use_as_prompt`, `/make_3d`) but undocumented:
they are page wiring, not part of the public API.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.tabs.caption import CaptionTab
from modules.tabs.common import user_errors
from modules.tabs.image import ImageTab
from modules.tabs.points3d import FROM_IMAGE, Points3DTab
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
    """Wire each bridge whose two tabs are present; `parts` maps task -> what its builder returned."""
    image, caption, points3d = parts.get("image"), parts.get("caption"), parts.get("pointcloud")
    if isinstance(image, ImageTab) and isinstance(caption, CaptionTab):
        connect_caption(tabs, image, caption)
    if isinstance(image, ImageTab) and isinstance(points3d, Points3DTab):
        connect_3d(tabs, image, points3d)


def connect_3d(tabs: gr.Tabs, image: ImageTab, points3d: Points3DTab) -> None:
    """"Make 3D" sends the selected picture to the 3D tab's image path and runs it there: the picture's
    file name and its PNG parameters (prompt, seed, model) become the 3D result's lineage."""

    @user_errors
    def make_3d(gallery: list[Any] | None, selected: int | None) -> tuple[str, str, gr.Tabs]:
        return chosen_image(gallery, selected), FROM_IMAGE, gr.Tabs(selected="pointcloud")

    sent = image.make_3d_button.click(
        make_3d,
        [image.gallery, image.selected],
        [points3d.image, points3d.source, tabs],
        api_name="make_3d",
        api_visibility="undocumented",  # page wiring, not part of the public API
    )
    points3d.run_from_image(sent)


def connect_caption(tabs: gr.Tabs, image: ImageTab, caption: CaptionTab) -> None:
    @user_errors
    def caption_this(gallery: list[Any] | None, selected: int | None) -> tuple[str, gr.Tabs]:
        return chosen_image(gallery, selected), gr.Tabs(selected="caption")

    @user_errors
    def use_as_prompt(text: str) -> tuple[str, gr.Tabs]:
        if not text or not text.strip():
            raise InvalidInput("the caption is empty: caption an image first")
        return text.strip(), gr.Tabs(selected="image")

    image.caption_button.click(
        caption_this,
        [image.gallery, image.selected],
        [caption.upload, tabs],
        api_name="caption_this",
        api_visibility="undocumented",  # page wiring, not part of the public API
    )
    caption.use_button.click(
        use_as_prompt, caption.caption, [image.prompt, tabs], api_name="use_as_prompt", api_visibility="undocumented"
    )
