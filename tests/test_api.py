"""The public API, as scripts and agents see it: one vocabulary, only intended endpoints, every setting
optional and taken from the chosen model, and every generation tab an MCP tool.

All through a real server on loopback: gradio_client for the Gradio API, the `mcp` package's own client
for the MCP server.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from modules.tabs.common import example_file
from modules.tiny import build_tiny_catalog
from tests.conftest import AppServer

GENERATION = {
    "/chat": "message",
    "/generate_image": "prompt",
    "/caption": "image",
    "/generate_music": "prompt",
    "/generate_3d": "prompt",
    "/generate_3d_from_image": "image",
}
SYSTEM = {"/system_status", "/system_memory", "/system_queue", "/unload_model"}
#: The one vocabulary every generation endpoint draws its parameter names from.
VOCABULARY = {
    "prompt", "negative_prompt", "model", "seed", "steps", "guidance", "width", "height", "duration",
    "temperature", "top_p", "top_k", "max_new_tokens",
    # what only one modality has
    "message", "history", "system_prompt", "image", "prefix", "decoding", "num_beams", "batch", "scheduler",
    "make_mesh", "mesh_grid",
}  # fmt: skip


def endpoints(client: Client) -> dict[str, Any]:
    return client.view_api(return_format="dict", print_info=False)["named_endpoints"]


def test_only_intended_endpoints_are_public(tiny_client: Client) -> None:
    assert set(endpoints(tiny_client)) == set(GENERATION) | SYSTEM


@pytest.mark.parametrize("name", GENERATION)
def test_main_input_first_and_every_other_parameter_optional(tiny_client: Client, name: str) -> None:
    parameters = endpoints(tiny_client)[name]["parameters"]
    first, *rest = parameters
    assert first["parameter_name"] == GENERATION[name] and not first["parameter_has_default"]
    assert all(p["parameter_has_default"] for p in rest), [p["parameter_name"] for p in rest if not p["parameter_has_default"]]
    assert {p["parameter_name"] for p in parameters} <= VOCABULARY
    assert "model" in {p["parameter_name"] for p in rest}


def test_every_endpoint_answers_with_only_its_main_input(tiny_client: Client, tmp_path: Path) -> None:
    picture = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(picture)
    reply, stats = tiny_client.predict("hello", api_name="/chat")
    assert reply and "tokens/s" in stats
    gallery, files, seed, stats = tiny_client.predict("a red cat", api_name="/generate_image")
    assert len(gallery) == 1 and Image.open(files[0]).size == (64, 64) and f"seed {seed}" in stats
    seen, text, stats = tiny_client.predict(handle_file(str(picture)), api_name="/caption")
    assert text.strip() and Image.open(seen).size == (40, 30)
    result = tiny_client.predict("calm piano", api_name="/generate_music")
    wav = result[-1][0]
    assert wav.endswith(".wav") and Path(wav).stat().st_size > 44 and f"-seed{result[2]}-" in wav
    viewer, mesh, files, seed, stats = tiny_client.predict("a chair", api_name="/generate_3d")
    assert viewer.endswith(".ply") and mesh is None and f"seed {seed}" in stats
    viewer, mesh, files, seed, stats = tiny_client.predict(handle_file(str(picture)), api_name="/generate_3d_from_image")
    assert viewer.endswith(".ply") and mesh is None and f"from {picture.name}" in stats


@pytest.fixture(scope="module")
def two_image_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A catalogue whose two image models differ only in their default steps and size."""
    folder = build_tiny_catalog().tasks["image"].models[0].source.path
    entry = {"wrapper": "diffusers-text-to-image", "source": {"path": folder}, "license": "random weights"}
    catalogue = {
        "tasks": {
            "image": {
                "default": "quick",
                "models": [
                    {**entry, "id": "quick", "name": "Quick", "defaults": {"num_steps": 2, "width": 64, "height": 64}},
                    {**entry, "id": "careful", "name": "Careful", "defaults": {"num_steps": 5, "width": 72, "height": 64}},
                ],
            }
        }
    }
    workdir = tmp_path_factory.mktemp("two-image-models")
    path = workdir / "models.yaml"
    path.write_text(yaml.safe_dump(catalogue))
    with AppServer(["--models", str(path), "--no-mcp"], workdir) as server:
        yield server.client()


def test_left_out_settings_come_from_the_chosen_model(two_image_models: Client) -> None:
    _, files, _, stats = two_image_models.predict("a cat", model="careful", api_name="/generate_image")
    assert "5 steps" in stats and Image.open(files[0]).size == (72, 64)
    _, files, _, stats = two_image_models.predict("a cat", api_name="/generate_image")
    assert "2 steps" in stats and Image.open(files[0]).size == (64, 64), "no model: the tab's default model"
    _, _, _, stats = two_image_models.predict("a cat", model="careful", steps=3, api_name="/generate_image")
    assert "3 steps" in stats, "a setting that is sent wins over the model's default"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"steps": 0}, "steps: Value 0 is less than minimum value 1"),
        ({"steps": "many"}, "steps='many' is not a number"),
        ({"seed": -2}, "seed: Value -2 is less than minimum value -1"),
        ({"width": 100}, "width=100: Input should be a multiple of 8"),
        ({"model": "org/anything"}, "model: Value: org/anything is not in the list of choices"),
    ],
)
def test_bad_values_are_refused_naming_the_api_parameter(two_image_models: Client, settings: dict, expected: str) -> None:
    with pytest.raises(Exception) as caught:
        two_image_models.predict("a cat", **settings, api_name="/generate_image")
    assert expected in str(caught.value)


# -- MCP ---------------------------------------------------------------------------------------------


async def mcp_session_run(url: str, calls: list[tuple[str, dict[str, Any]]]) -> tuple[list[Any], list[Any]]:
    """List the tools, then make each call, through the official MCP client over streamable HTTP."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(url + "gradio_api/mcp/") as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            results = [await session.call_tool(name, arguments) for name, arguments in calls]
    return tools, results


def test_mcp_lists_every_tab_as_a_tool_and_runs_image_and_caption(tiny_app: AppServer, tmp_path: Path) -> None:
    picture = tmp_path / "blue.png"
    Image.new("RGB", (32, 32), (20, 40, 220)).save(picture)
    upload = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
    tools, (image, caption) = asyncio.run(
        mcp_session_run(
            tiny_app.url,
            [
                ("generate_image", {"prompt": "a red cat", "seed": 5, "steps": 2}),
                ("caption", {"image": upload}),
            ],
        )
    )
    by_name = {tool.name: tool for tool in tools}
    for name, main in GENERATION.items():
        tool = by_name[name.strip("/")]
        properties = tool.inputSchema["properties"]
        assert tool.description and list(properties)[0] == main
        assert tool.inputSchema.get("required", [main]) == [main], tool.inputSchema.get("required")
    assert "unload_model" in by_name  # host control; issue 11's roles decide who may call it
    assert not image.isError, image.content
    text = json.dumps([getattr(block, "text", "") for block in image.content])
    assert ".png" in text and "seed 5" in text
    assert not caption.isError, caption.content


def test_urls_to_private_addresses_are_never_fetched_by_the_server(tiny_app: AppServer, tiny_client: Client) -> None:
    """A file input may be a URL, which the server downloads: a public link must not become a way to reach
    the host's own loopback services or a cloud metadata address (SSRF), through the API or MCP."""
    own_file = tiny_app.url + "gradio_api/file=" + example_file("red-ball.png")  # served here, yet refused
    private = [own_file, "http://169.254.169.254/latest/meta-data/picture.png", "http://10.0.0.1/picture.png"]
    for url in private:
        with pytest.raises(AppError):
            tiny_client.predict(handle_file(url), api_name="/caption")
    _, results = asyncio.run(mcp_session_run(tiny_app.url, [("caption", {"image": url}) for url in private]))
    assert all(result.isError for result in results), [result.content for result in results]
    assert tiny_client.predict(handle_file(example_file("red-ball.png")), api_name="/caption")[1]  # still serving
