"""Host and visitor: the role decision itself, and the host-only `/unload_model` through the real app."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from modules.roles import Access
from tests.conftest import ROOT, AppServer, model_row

CHAT_KEY = "chat/tiny-chat"


# -- the decision -----------------------------------------------------------------------------------


@pytest.mark.parametrize("listen_host", ["127.0.0.1", "localhost", "::1"])
def test_a_private_app_makes_everyone_host(listen_host: str) -> None:
    assert Access(listen_host=listen_host).is_host(None)


@pytest.mark.parametrize(
    "access",
    [
        Access(share=True),  # share traffic arrives from the local tunnel, i.e. from loopback
        Access(listen_host="0.0.0.0"),
        Access(listen_host="::"),
        Access(listen_host="192.168.1.20"),
    ],
)
def test_a_shared_or_exposed_app_without_admin_has_no_host(access: Access) -> None:
    assert not access.is_host(None) and not access.is_host("anyone")
    assert "restart it with --auth and --admin" in access.who_is_host()


def test_admin_is_the_only_host_wherever_the_app_listens() -> None:
    for access in (Access(admin="a"), Access(admin="a", share=True, listen_host="0.0.0.0")):
        assert access.is_host("a")
        assert not access.is_host("b") and not access.is_host(None)
    assert "'a'" in Access(admin="a").who_is_host()


def test_on_a_space_the_owner_signed_in_with_hugging_face_is_host() -> None:
    access = Access.from_settings(
        None, [], share=False, listen_host="0.0.0.0", environ={"SPACE_ID": "ada/atelier", "SPACE_AUTHOR_NAME": "ada"}
    )
    assert access.space_owner == "ada"
    assert access.is_host(None, hf_username="ada")
    assert not access.is_host(None, hf_username="bob") and not access.is_host(None)
    assert not access.is_host("ada"), "an --auth login is not a Hugging Face login"
    # --admin wins over the Space's owner.
    admin = Access.from_settings("a", ["a"], False, "0.0.0.0", {"SPACE_ID": "x/y", "SPACE_AUTHOR_NAME": "x"})
    assert admin.is_host("a") and not admin.is_host(None, hf_username="x")


def test_space_author_without_space_id_is_not_a_space() -> None:
    assert Access.from_settings(None, [], False, "127.0.0.1", {"SPACE_AUTHOR_NAME": "ada"}).space_owner is None


def test_admin_must_be_an_auth_user() -> None:
    with pytest.raises(ValueError, match="--admin 'c' must be one of --auth's users; its users are a, b"):
        Access.from_settings("c", ["a", "b"], False, "127.0.0.1", {})
    with pytest.raises(ValueError, match="no --auth was given"):
        Access.from_settings("c", [], False, "127.0.0.1", {})


def test_the_app_refuses_to_start_with_an_unknown_admin(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "app.py", "--tiny", "--auth", "a:pw", "--admin", "c", "--outputs", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "error: --admin 'c' must be one of --auth's users; its users are a" in result.stderr


# -- through the real app ----------------------------------------------------------------------------


def serve(tmp_path_factory: pytest.TempPathFactory, *args: str) -> Iterator[AppServer]:
    with AppServer(["--tiny", *args], tmp_path_factory.mktemp("roles")) as server:
        yield server


@pytest.fixture(scope="module")
def admin_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    yield from serve(tmp_path_factory, "--auth", "a:pw,b:pw", "--admin", "a")


def load_chat_model(client: Client) -> None:
    client.submit("hello", model="tiny-chat", temperature=0.0, max_new_tokens=2, api_name="/chat").result(timeout=120)
    assert model_row(client, CHAT_KEY)["state"] == "on device"


def test_only_the_admin_unloads_through_the_api(admin_app: AppServer) -> None:
    visitor = Client(admin_app.url, auth=("b", "pw"), verbose=False)
    host = Client(admin_app.url, auth=("a", "pw"), verbose=False)
    load_chat_model(visitor)
    with pytest.raises(Exception, match=r"Refused: only the host \(the user 'a'\) may do this"):
        visitor.predict(CHAT_KEY, api_name="/unload_model")
    assert model_row(visitor, CHAT_KEY)["state"] == "on device", "a visitor's refused unload changed nothing"
    assert host.predict(CHAT_KEY, api_name="/unload_model") == f"unloaded {CHAT_KEY}"
    assert model_row(visitor, CHAT_KEY)["state"] == "not loaded"
    with pytest.raises(Exception, match="unknown model"):
        host.predict("chat/nope", api_name="/unload_model")


def test_without_auth_on_loopback_anyone_unloads(tiny_client: Client) -> None:
    load_chat_model(tiny_client)
    assert tiny_client.predict(CHAT_KEY, api_name="/unload_model") == f"unloaded {CHAT_KEY}"
    assert model_row(tiny_client, CHAT_KEY)["state"] == "not loaded"


def test_listening_beyond_loopback_without_admin_refuses_even_a_loopback_caller(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    for server in serve(tmp_path_factory, "--host", "0.0.0.0"):
        client = server.client()  # connects through 127.0.0.1
        load_chat_model(client)
        with pytest.raises(Exception, match="host actions are off because this server is shared or listens beyond"):
            client.predict(CHAT_KEY, api_name="/unload_model")
        assert model_row(client, CHAT_KEY)["state"] == "on device"


def test_a_visitor_page_is_read_only_and_the_host_page_has_the_buttons(admin_app: AppServer) -> None:
    from tests.test_ui import browser

    with browser() as open_page:
        for user, host in (("b", False), ("a", True)):
            page = open_page(admin_app.url)
            page.get_by_label("username").fill(user)
            page.get_by_label("password").fill("pw")
            page.get_by_role("button", name="Login").click()
            page.get_by_role("tab", name="System").click()
            if host:
                page.get_by_text("You are the host").wait_for(timeout=30_000)
                assert page.get_by_role("button", name="Unload").count() > 0
            else:
                page.get_by_text("Read-only view: only the host (the user 'a') may do this").wait_for(timeout=30_000)
                assert page.get_by_role("button", name="Unload").count() == 0
            assert page.get_by_text("queue:").first.is_visible()
