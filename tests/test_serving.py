"""Serving a room: one fair device queue, quotas, and who a client is.

The queue's rules are checked on the real `FairQueue` with a hand-driven clock; then, through the real
server and the API, that visitors take turns across tabs (chat included), that a quota refuses with
the exact wait and cannot be dodged with a new session, and that clients are told apart as documented.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from PIL import Image
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from modules.serving import FairQueue, OverQuota, Quota, QueueFull
from modules.serving.zerogpu import gpu_seconds, on_gpu
from modules.tabs.common import batch_part
from tests.conftest import AppServer
from tests import test_page
from tests.test_page import DESKTOP, SLOW, open_page, open_tab


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def grant_order(queue: FairQueue, clock: Clock, seconds: float = 1.0) -> list[str]:
    """Run the queue dry, `seconds` per run, and say whose ticket ran in which order."""
    order = []
    while queue._running:
        running = queue._running[0]
        clock.now += seconds
        order.append(running.client)
        queue.leave(running)
    return order


# -- the queue's rules -------------------------------------------------------------------------------------


def test_clients_take_turns_so_a_flood_delays_a_single_request_by_at_most_one_run() -> None:
    clock = Clock()
    queue = FairQueue(clock=clock)
    for _ in range(10):
        queue.join("heavy", "image:tiny")
    light = queue.join("light", "image:tiny")
    other = queue.join("other", "chat:tiny")
    assert queue.place(light).ahead == 1  # only the heavy run already on the device
    assert queue.place(other).ahead == 2
    assert grant_order(queue, clock)[:5] == ["heavy", "light", "other", "heavy", "heavy"]
    assert light.done and other.done


def test_a_client_that_waited_longest_since_its_last_turn_goes_first() -> None:
    clock = Clock()
    queue = FairQueue(clock=clock)
    for client in ["a", "a", "b", "b", "c"]:
        queue.join(client, "music:tiny")
    assert grant_order(queue, clock) == ["a", "b", "c", "a", "b"]


def test_waits_are_estimated_from_this_kinds_measured_rate_and_the_work_ahead() -> None:
    clock = Clock()
    queue = FairQueue(clock=clock)
    first = queue.join("a", "image:tiny", work=10)
    assert queue.place(queue.join("b", "image:tiny", work=10)).wait_seconds is None  # nothing measured yet
    clock.now += 5.0
    queue.leave(first)  # 0.5 s per unit of work learned; b now runs
    third = queue.join("c", "image:tiny", work=4)
    clock.now += 1.0
    assert queue.estimate("image:tiny", 4) == pytest.approx(2.0)
    # b's run: 5 s estimated, 1 s of it gone.
    assert queue.place(third).wait_seconds == pytest.approx(4.0)
    assert "1 request before yours, about 4 s" in queue.place(third).describe()


def test_requests_that_can_share_a_pass_go_onto_the_device_together() -> None:
    clock = Clock()
    queue = FairQueue(clock=clock, max_batch=3)
    busy = queue.join("a", "image:tiny")
    flood = [queue.join("b", "caption:tiny", batch_key="beam") for _ in range(3)]
    same = [flood[0], *(queue.join(client, "caption:tiny", batch_key="beam") for client in ("c", "d", "e"))]
    other = queue.join("f", "caption:tiny", batch_key="nucleus")
    queue.leave(busy)
    # One per client (b's flood takes one place), up to max_batch.
    assert [t.granted_at is not None for t in same] == [True, True, True, False]
    assert [t.granted_at is not None for t in flood] == [True, False, False]
    assert other.granted_at is None and queue.state().running == 3
    for ticket in same[:3]:
        queue.leave(ticket)
    # e and f were never served: the older ticket (e's) goes first; b, just served, does not ride along.
    assert same[3].granted_at is not None and flood[1].granted_at is None
    assert other.granted_at is None and queue.state().running == 1
    queue.leave(same[3])
    assert other.granted_at is not None and flood[1].granted_at is None  # then f, before b's second


def test_a_full_queue_refuses_newcomers_and_a_left_ticket_frees_its_place() -> None:
    queue = FairQueue(max_waiting=1)
    queue.join("a", "k")  # runs
    waiting = queue.join("b", "k")
    with pytest.raises(QueueFull, match="queue is full"):
        queue.join("c", "k")
    queue.leave(waiting)  # a client gone while it waited
    queue.join("c", "k")


def test_a_quota_refuses_with_the_exact_wait_until_enough_use_ages_out() -> None:
    clock = Clock()
    queue = FairQueue(quota=Quota(seconds=10, window=60), clock=clock)
    for seconds in (4.0, 7.0):  # 11 s used: over the 10 s quota
        with queue.turn("a", "music:tiny"):
            clock.now += seconds
    clock.now += 20
    with pytest.raises(OverQuota) as refused:
        queue.join("a", "music:tiny")
    # The 4 s run ended 27 s ago; once it ages out (in 33 s) 7 s remain, under the quota.
    assert refused.value.retry_after == 33
    assert "try again in 33 s" in str(refused.value)
    queue.join("b", "music:tiny")  # another client is not affected
    clock.now += 33
    queue.join("a", "music:tiny")


def test_a_client_that_goes_over_quota_while_waiting_is_refused_at_its_turn() -> None:
    clock = Clock()
    queue = FairQueue(quota=Quota(seconds=5, window=60), clock=clock)
    running = queue.join("a", "k")
    waiting = queue.join("a", "k")  # admitted: nothing charged yet
    clock.now += 6
    queue.leave(running)
    with pytest.raises(OverQuota):
        queue.wait(waiting, timeout=0)


# -- through the real server -------------------------------------------------------------------------------

USERS = ["heavy", "light", "other"]
FLOOD = 5


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """A server with a login per visitor, as a workshop host would start it."""
    auth = ",".join(f"{user}:pw-{user}" for user in USERS)
    with AppServer(["--tiny", "--auth", auth], tmp_path_factory.mktemp("room")) as server:
        yield server


def login(server: AppServer, user: str) -> Client:
    return Client(server.url, auth=(user, f"pw-{user}"), verbose=False)


def wait_for(condition: Any, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_light_visitor_and_chat_wait_at_most_one_run_behind_a_flood(room: AppServer) -> None:
    heavy, light, other = (login(room, user) for user in USERS)
    heavy.predict("warm-up", steps=2, api_name="/generate_image")  # the model loaded, its rate measured
    # A long run holds the device while everyone joins (a short one could end between two joins and let
    # the next request in, which would change who waits); it is stopped once all are in line.
    # (From a session of its own: gradio_client's cancel stops every job of its session's endpoint.)
    busy = login(room, "heavy").submit("busy", steps=150, width=128, height=128, api_name="/generate_image")
    wait_for(lambda: heavy.predict(api_name="/system_queue")["running"] == 1, what="the busy run")
    flood = [heavy.submit(f"flood {i}", steps=20, api_name="/generate_image") for i in range(FLOOD)]
    wait_for(lambda: heavy.predict(api_name="/system_queue")["waiting"] == FLOOD, what="the flood to queue")
    done_before = sum(job.done() for job in flood)
    picture = light.submit("a lighthouse", steps=2, api_name="/generate_image")
    wait_for(lambda: light.predict(api_name="/system_queue")["clients_waiting"] == 2, what="the light request")
    reply = other.submit("Hello", max_new_tokens=4, api_name="/chat")  # chat waits in the same queue
    wait_for(lambda: other.predict(api_name="/system_queue")["clients_waiting"] == 3, what="the chat request")
    assert not busy.done(), "the long run ended while the others joined: the order below tests nothing"
    busy.cancel()

    picture.result(timeout=300)
    heavy_done_at_light = sum(job.done() for job in flood)
    reply.result(timeout=300)
    heavy_done_at_chat = sum(job.done() for job in flood)
    for job in flood:
        job.result(timeout=600)

    # The queue put each newcomer behind the run on the device only (and the chat behind the light
    # visitor), though the flood had more requests waiting; and it kept to that order.
    assert first_wait(picture).startswith("Waiting for the device: 1 request before yours")
    assert first_wait(reply).startswith("Waiting for the device: 2 requests before yours")
    assert heavy_done_at_light - done_before <= 2  # the run on the device (and one if it ended as we counted)
    assert heavy_done_at_chat == heavy_done_at_light


def first_wait(job: Any) -> str:
    """The first status line a request got while it waited for the device."""
    lines = [str(outputs[-1]) for outputs in job.outputs()]
    return next((line for line in lines if line.startswith("Waiting for the device")), f"no wait line in {lines}")


def test_each_login_is_one_client_whatever_its_address_says(room: AppServer) -> None:
    for user in USERS:
        client = Client(room.url, auth=(user, f"pw-{user}"), headers={"X-Forwarded-For": "203.0.113.9"}, verbose=False)
        assert client.predict(api_name="/system_queue")["client"] == f"user:{user}"


def test_through_the_share_tunnel_the_address_its_proxy_saw_is_the_client(tiny_app: AppServer) -> None:
    """--share traffic arrives from 127.0.0.1 with the visitor's address appended to X-Forwarded-For by
    the share server; what the visitor put before it is ignored."""
    for forwarded in ("10.0.0.1", "198.51.100.7, 10.0.0.1"):
        client = Client(tiny_app.url, headers={"X-Forwarded-For": forwarded}, verbose=False)
        assert client.predict(api_name="/system_queue")["client"] == "address:10.0.0.1"


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """No logins, behind a proxy (as with --share or on a Space), and a small quota: 0.2 device-seconds
    per 30 s window."""
    args = ["--tiny", "--behind-proxy", "--quota-seconds", "0.2", "--quota-window", "0.5"]
    with AppServer(args, tmp_path_factory.mktemp("proxy")) as server:
        yield server


def visitor(server: AppServer, address: str) -> Client:
    """A visitor as the proxy presents them: the address it appended comes last."""
    return Client(server.url, headers={"X-Forwarded-For": address}, verbose=False)


def test_a_quota_refuses_with_the_wait_and_a_new_session_does_not_dodge_it(behind_proxy: AppServer, tmp_path: Path) -> None:
    first = visitor(behind_proxy, "10.0.0.1")
    first.predict("a cat", api_name="/generate_image")  # the load and the run: well over 0.2 s
    standing = first.predict(api_name="/system_queue")
    assert standing["client"] == "address:10.0.0.1"
    assert standing["used_seconds"] > 0.2 and standing["quota_seconds"] == 0.2
    assert 0 < standing["retry_after"] <= 30

    # A new session, and a visitor who forges an address before the proxy's, are the same client.
    for again in (visitor(behind_proxy, "10.0.0.1"), visitor(behind_proxy, "198.51.100.7, 10.0.0.1")):
        with pytest.raises(AppError, match=r"try again in \d+ s") as refused:
            again.predict("a dog", api_name="/generate_image")
        wait = int(re.search(r"try again in (\d+) s", str(refused.value)).group(1))
        assert abs(wait - again.predict(api_name="/system_queue")["retry_after"]) <= 1

    # Internal hops after the visitor's public address (as on a Space) are skipped.
    assert visitor(behind_proxy, "8.8.8.8, 1.1.1.1, 10.1.2.3").predict(api_name="/system_queue")["client"] == "address:1.1.1.1"

    # Someone else in the room is not affected.
    neighbour = visitor(behind_proxy, "10.0.0.2")
    assert neighbour.predict(api_name="/system_queue")["used_seconds"] == 0
    _, files, _, _ = neighbour.predict("a dog", api_name="/generate_image")
    assert files


# -- batching ----------------------------------------------------------------------------------------------


def test_captions_waiting_together_run_in_one_pass_each_with_its_own_result(tiny_app: AppServer, tmp_path: Path) -> None:
    pictures = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        pictures.append(tmp_path / f"picture-{i}.png")
        Image.new("RGB", (48, 40), colour).save(pictures[-1])
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    alone = [tiny_app.client().predict(handle_file(str(p)), api_name="/caption")[1] for p in pictures]

    # Four visitors (told apart by the address the share tunnel saw) ask while the device is busy.
    busy = tiny_app.client().submit("a long picture", steps=40, api_name="/generate_image")
    wait_for(lambda: tiny_app.client().predict(api_name="/system_queue")["running"] == 1, what="the busy run")
    visitors = [Client(tiny_app.url, headers={"X-Forwarded-For": f"10.0.1.{i}"}, verbose=False) for i in range(4)]
    jobs = [v.submit(handle_file(str(p)), api_name="/caption") for v, p in zip(visitors, [*pictures, not_an_image])]
    wait_for(lambda: tiny_app.client().predict(api_name="/system_queue")["waiting"] == 4, what="the captions to wait")
    busy.result(timeout=300)

    for job, expected in zip(jobs[:3], alone):
        _, text, stats = job.result(timeout=300)
        assert text == expected  # beam search: the same caption as when it ran alone
        assert "one pass with 2 other requests" in stats
    with pytest.raises(AppError, match="image"):  # the bad upload fails alone, before the pass
        jobs[3].result(timeout=300)


# -- ZeroGPU -----------------------------------------------------------------------------------------------


def test_zerogpu_asks_for_the_measured_estimate_with_margin_and_is_a_no_op_elsewhere() -> None:
    clock = Clock()
    queue = FairQueue(clock=clock)
    with queue.turn("a", "image:sd", work=20):
        clock.now += 10.0  # 0.5 s per step measured
    assert gpu_seconds(queue.estimate("image:sd", 40)) == 60  # 20 s * 1.5 + 30 s for a load
    assert gpu_seconds(queue.estimate("music:unseen", 10)) == 120  # nothing measured yet
    assert gpu_seconds(queue.estimate("image:sd", 10_000)) == 300  # ZeroGPU's longest
    assert on_gpu(grant_order, duration=lambda *args: 60) is grant_order  # not on ZeroGPU here


# -- in the browser ----------------------------------------------------------------------------------------

browser = test_page.browser  # one headless Chromium for this module, as test_page has


def test_the_page_tells_a_waiting_visitor_their_place_then_shows_the_result(
    browser: object, tiny_app: AppServer, tmp_path: Path
) -> None:
    # Long enough to outlast opening the page on an idle machine; cancelled once the wait is seen.
    busy = tiny_app.client().submit("a long picture", steps=150, width=128, height=128, api_name="/generate_image")
    wait_for(lambda: tiny_app.client().predict(api_name="/system_queue")["running"] == 1, what="the busy run")
    page = open_page(browser, tiny_app.url, DESKTOP)
    open_tab(page, "image")
    prompt = page.get_by_label("Prompt").first
    prompt.fill("a lighthouse")
    prompt.press("Enter")
    output = page.locator("#image-output")
    output.get_by_text("Waiting for the device: 1 request before yours").wait_for(timeout=SLOW)
    page.screenshot(path=str(tmp_path / "waiting.png"))
    busy.cancel()
    output.get_by_text("Done in").wait_for(timeout=SLOW)
    assert output.get_by_text("Waiting for the device").count() == 0
    page.close()


def test_music_stopped_while_it_waits_leaves_the_queue_at_once(browser: object, tiny_app: AppServer) -> None:
    """Music's Stop keeps the run's events alive (to send the clip so far), so a waiting run must leave the
    queue on its own when Stop is clicked, not hold its place until its turn."""
    page = open_page(browser, tiny_app.url, DESKTOP)
    open_tab(page, "music")
    busy = tiny_app.client().submit("a long picture", steps=150, width=128, height=128, api_name="/generate_image")
    wait_for(lambda: tiny_app.client().predict(api_name="/system_queue")["running"] == 1, what="the busy run")
    page.get_by_label("Prompt").first.fill("a waiting tune")
    page.get_by_role("button", name="Generate", exact=True).click()
    output = page.locator("#music-output")
    output.get_by_text("Waiting for the device").wait_for(timeout=SLOW)
    page.get_by_role("button", name="Stop", exact=True).click()
    output.get_by_text("Stopped before it started").wait_for(timeout=SLOW)
    assert not busy.done(), "the busy run ended first: this tested nothing"
    assert tiny_app.client().predict(api_name="/system_queue")["waiting"] == 0, "the stopped run kept its place"
    busy.cancel()
    page.close()


def test_images_waiting_together_share_a_pass_and_keep_their_own_seeds_and_prompts(tiny_app: AppServer) -> None:
    requests = [("a red cat", 11, 1), ("a blue dog", 22, 2)]  # prompt, seed, images
    alone = [tiny_app.client().predict(p, seed=s, batch=n, api_name="/generate_image")[1] for p, s, n in requests]

    busy = tiny_app.client().submit("a long picture", steps=40, api_name="/generate_image")
    wait_for(lambda: tiny_app.client().predict(api_name="/system_queue")["running"] == 1, what="the busy run")
    visitors = [Client(tiny_app.url, headers={"X-Forwarded-For": f"10.0.2.{i}"}, verbose=False) for i in range(2)]
    jobs = [v.submit(p, seed=s, batch=n, api_name="/generate_image") for v, (p, s, n) in zip(visitors, requests)]
    wait_for(lambda: tiny_app.client().predict(api_name="/system_queue")["waiting"] == 2, what="the images to wait")
    busy.result(timeout=300)

    for job, (prompt, seed, count), solo in zip(jobs, requests, alone):
        _, files, first_seed, stats = job.result(timeout=300)
        assert "one pass with 1 other request" in stats and first_seed == seed and len(files) == count
        for path, solo_path in zip(files, solo):
            assert Image.open(path).info["parameters"].startswith(prompt)
            shared, single = (np.asarray(Image.open(p), dtype=np.int16) for p in (path, solo_path))
            # The same seed's image as when it ran alone (a batched pass may round a unit differently).
            assert np.abs(shared - single).max() <= 2


def test_page_and_api_requests_with_equal_settings_have_one_batch_key() -> None:
    assert batch_part(8) == batch_part(8.0) != batch_part(8.5)  # a slider's 8.0, an API caller's 8
    assert batch_part(True) != batch_part(1) and batch_part("beam") != batch_part("nucleus")


def test_music_waiting_together_generates_in_one_batch_each_with_its_own_seed(tiny_app: AppServer) -> None:
    requests = [("calm piano", 31), ("fast drums\nslow strings", 32)]  # prompt lines, seed
    settings = {"model": "tiny-musicgen", "duration": 1, "top_k": 250, "top_p": 0.0, "temperature": 1.0, "guidance": 3.0}
    alone = [tiny_app.client().predict(p, seed=s, **settings, api_name="/generate_music")[-1] for p, s in requests]

    busy = tiny_app.client().submit("a long picture", steps=40, api_name="/generate_image")
    wait_for(lambda: tiny_app.client().predict(api_name="/system_queue")["running"] == 1, what="the busy run")
    visitors = [Client(tiny_app.url, headers={"X-Forwarded-For": f"10.0.3.{i}"}, verbose=False) for i in range(2)]
    jobs = [v.submit(p, seed=s, **settings, api_name="/generate_music") for v, (p, s) in zip(visitors, requests)]
    wait_for(lambda: tiny_app.client().predict(api_name="/system_queue")["waiting"] == 2, what="the music to wait")
    busy.result(timeout=300)

    for job, (prompt, seed), solo in zip(jobs, requests, alone):
        _, status, used, *_, files = job.result(timeout=300)
        assert "one pass with 1 other request" in status and int(used) == seed
        assert len(files) == len(solo) == len(prompt.splitlines())
        for path, solo_path in zip(files, solo):  # every clip is the one its seed makes alone
            assert np.array_equal(soundfile.read(path)[0], soundfile.read(solo_path)[0])


def test_every_endpoint_that_waits_says_so_in_its_own_status_line(tiny_app: AppServer) -> None:
    """Music's status line is not its last output (its WAV files are): waiting must not land there."""
    busy = tiny_app.client().submit("a long picture", steps=40, api_name="/generate_image")
    wait_for(lambda: tiny_app.client().predict(api_name="/system_queue")["running"] == 1, what="the busy run")
    job = tiny_app.client().submit("a short tune", duration=1, api_name="/generate_music")
    busy.result(timeout=300)
    *_, files = job.result(timeout=300)
    assert files and all(str(path).endswith(".wav") for path in files)
    assert any(str(outputs[1]).startswith("Waiting for the device") for outputs in job.outputs())
