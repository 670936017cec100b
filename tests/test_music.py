"""Music end to end: the tiny MusicGen through the wrapper directly and through the real app on loopback."""

from __future__ import annotations


import numpy as np
import pytest
import soundfile
from gradio_client import Client

from modules.memory import MemoryManager
from modules.tiny import build_tiny_catalog
from modules.wrappers import build_wrapper
from modules.wrappers.base import HostSettings, InvalidInput
from modules.wrappers.text_to_music import MusicRequest, ShareEnd, TransformersMusicgen
from tests.conftest import model_row, stop_when

MODEL = "tiny-musicgen"
KEY = f"music/{MODEL}"
RATE = 32_000  # the tiny EnCodec's sampling rate
FRAME = RATE // 50


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory: pytest.TempPathFactory) -> TransformersMusicgen:
    entry = build_tiny_catalog().tasks["music"].get(MODEL)
    host = HostSettings(output_dir=tmp_path_factory.mktemp("music-out"), max_audio_seconds=5)
    return build_wrapper(entry, MemoryManager("cpu"), host=host)


def music(client: Client, prompt: str, duration: object = 2, **settings: object):
    """Submit one request (fixed seed unless told); return the job."""
    return client.submit(
        prompt,
        model=MODEL,
        seed=-1 if settings.get("randomise") else settings.get("seed", 1),
        duration=duration,
        top_k=settings.get("top_k", 250),
        top_p=settings.get("top_p", 0.0),
        temperature=settings.get("temperature", 1.0),
        guidance=settings.get("guidance", 3.0),
        api_name="/generate_music",
    )


def wav_of(result: tuple) -> tuple[np.ndarray, int]:
    files = result[-1]
    samples, rate = soundfile.read(files[0])
    return samples, rate


# -- the wrapper, with the real tiny model --------------------------------------------------------


def test_stream_joins_into_exactly_the_final_audio_and_matches_raw_generate(wrapper: TransformersMusicgen) -> None:
    import torch

    steps: list[tuple[int, int]] = []
    items = list(wrapper.generate("calm piano\nfast techno drums", on_step=lambda i, n: steps.append((i, n)), duration=3, seed=7))
    *chunks, final = items
    assert len(chunks) == 3 and final.done and not any(c.done for c in chunks)
    assert np.array_equal(np.concatenate([c.chunk for c in chunks], axis=1), final.audio)
    assert final.audio.shape == (2, 3 * RATE) and final.sampling_rate == RATE
    assert steps[-1] == (150, 150), "progress ends at every frame asked for"
    assert [soundfile.info(p).frames for p in final.paths] == [3 * RATE, 3 * RATE]
    # The same codes through transformers' own generate and whole-sequence decode, same seed.
    with wrapper.manager.use(wrapper) as model:
        inputs = wrapper.generation_inputs(model, ["calm piano", "fast techno drums"])
        torch.manual_seed(7)
        raw = model.model.generate(**inputs, max_new_tokens=150 + 3, do_sample=True, top_k=250, guidance_scale=3.0)
    np.testing.assert_allclose(final.audio, raw[:, 0].numpy(), atol=1e-5)


def test_a_batch_gives_each_request_its_own_seeds_samples_and_its_own_stop(wrapper: TransformersMusicgen) -> None:
    """Two requests in one `generate`: each draws what its seed draws alone; a Stop ends only its own share,
    which is handed back at once with the audio made so far while the other goes on to the end."""
    import threading

    alone = [next(i for i in wrapper.generate(p, duration=2, seed=s) if i.done).audio for p, s in (("calm piano", 5), ("fast drums", 9))]
    settings = wrapper.settings(duration=2)
    stop_b = threading.Event()
    events: list[tuple[str, object]] = []

    def request(name: str, prompt: str, seed: int, interrupt: threading.Event | None) -> MusicRequest:
        def report(frame: int, frames: int) -> None:
            if name == "b" and frame >= 60:  # Stop pressed after 1.2 s of audio
                stop_b.set()

        return MusicRequest(
            model, [prompt], settings.model_copy(update={"seed": seed}), lambda item: events.append((name, item)), report,
            threading.Event(), interrupt,
        )  # fmt: skip

    with wrapper.manager.use(wrapper) as model:
        wrapper._generate_together([request("a", "calm piano", 5, None), request("b", "fast drums", 9, stop_b)])

    ends = [(name, item) for name, item in events if isinstance(item, ShareEnd)]
    assert [name for name, _ in ends] == ["b", "a"], "the stopped request is handed back first"
    (_, b_end), (_, a_end) = ends
    assert a_end.batch == b_end.batch == 2
    assert np.array_equal(a_end.decoder.audio(1), alone[0]), "a batched request draws as it does alone"
    b_audio = b_end.decoder.audio(1)
    assert RATE < b_audio.shape[1] < 2 * RATE and b_end.decoder.emitted < b_end.decoder.frames
    # What b made before its Stop is what it makes alone, to within the decoding windows' rounding, but for
    # the last few frames: alone, EnCodec decoded them seeing the frames that came next.
    kept = b_audio.shape[1] - wrapper.holdback_frames * FRAME
    np.testing.assert_allclose(b_audio[:, :kept], alone[1][:, :kept], atol=1e-5)
    chunks = [item for name, item in events if name == "a" and isinstance(item, np.ndarray)]
    assert np.array_equal(np.concatenate(chunks, axis=1), a_end.decoder.audio(1)), "a's stream is its own rows"


def test_wrapper_checks_inputs(wrapper: TransformersMusicgen) -> None:
    with pytest.raises(InvalidInput, match="the longest audio this server makes is 5 s"):
        list(wrapper.generate("piano", duration=6))
    with pytest.raises(InvalidInput, match="prompt has 5 lines; at most 4"):
        list(wrapper.generate("a\nb\nc\nd\ne", duration=1))


# -- the app, over gradio_client ------------------------------------------------------------------


def test_generation_streams_and_returns_the_asked_duration(tiny_client: Client) -> None:
    job = music(tiny_client, "lofi piano beat", duration=3)
    result = job.result(timeout=120)
    samples, rate = wav_of(result)
    assert rate == RATE and abs(len(samples) - 3 * RATE) <= FRAME
    streamed = [o for o in job.outputs()[:-1] if isinstance(o[0], str) and o[0].endswith(".m3u8")]
    assert len(streamed) > 1, f"expected several live chunks before the end, got {job.outputs()!r}"
    assert "real-time factor" in result[1] and "3.0 s of audio" in result[1]


def test_same_seed_gives_the_same_samples(tiny_client: Client) -> None:
    first, _ = wav_of(music(tiny_client, "calm jazz", duration=1, seed=123).result(timeout=120))
    again, _ = wav_of(music(tiny_client, "calm jazz", duration=1, seed=123).result(timeout=120))
    other, _ = wav_of(music(tiny_client, "calm jazz", duration=1, seed=124).result(timeout=120))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_a_random_seed_is_reported_and_remakes_the_same_samples(tiny_client: Client) -> None:
    result = music(tiny_client, "calm jazz", duration=1, seed=5, randomise=True).result(timeout=120)
    used = int(result[2])
    assert used != 5 and f"-seed{used}-" in result[-1][0], "the seed box and the file name give the seed used"
    again, _ = wav_of(music(tiny_client, "calm jazz", duration=1, seed=used).result(timeout=120))
    assert np.array_equal(wav_of(result)[0], again)


def test_stop_ends_generation_and_releases_the_lease(tiny_client: Client) -> None:
    job = music(tiny_client, "epic orchestra", duration=30)
    stop_when(tiny_client, job, KEY, lambda outputs: any(isinstance(o[0], str) for o in outputs), timeout=120)
    assert not job.outputs()[-1][1].startswith("Done"), "generation ran to the end despite Stop"
    samples, _ = wav_of(music(tiny_client, "calm piano", duration=1).result(timeout=120))  # still serving
    assert len(samples) == RATE


@pytest.mark.parametrize(
    ("prompt", "duration", "settings", "expected"),
    [
        ("", 2, {}, "prompt is empty"),
        ("  \n ", 2, {}, "prompt is empty"),
        ("x" * 100_000, 2, {}, "prompt is 100,000 characters; the limit on this server is 10,000"),
        ("piano", 0, {}, "duration: Value 0 is less than minimum value 1"),
        ("piano", -3, {}, "duration: Value -3 is less than minimum value 1"),
        ("piano", 31, {}, "duration: Value 31 is greater than maximum value 30"),
        ("piano", "ten", {}, "duration='ten' is not a number"),
        ("piano", 2, {"temperature": "hot"}, "temperature='hot' is not a number"),
        ("piano", 2, {"seed": "lucky"}, "seed='lucky' is not a number"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(
    tiny_client: Client, prompt: str, duration: object, settings: dict, expected: str
) -> None:
    with pytest.raises(Exception) as caught:
        music(tiny_client, prompt, duration=duration, **settings).result(timeout=60)
    assert expected in str(caught.value)
    assert model_row(tiny_client, KEY)["in use"] == 0
