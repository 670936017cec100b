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
from modules.memory.threads import in_fresh_thread

#: Bump when a builder changes, so cached tiny models are rebuilt.
TINY_VERSION = "3"

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


def build_tiny_stable_diffusion(folder: Path) -> None:
    """diffusers' own dummy Stable Diffusion components, with the tiny Point-E's CLIP text tower and tokenizer."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from modules.pointe.tiny import tiny_clip_text_config, tiny_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
    )
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
    )
    text_encoder = CLIPTextModel(tiny_clip_text_config(projection_dim=8))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(),  # byte-level, built offline
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)


def build_tiny_blip(folder: Path) -> None:
    """A 2-layer BLIP captioner on 30x30 images, with a word-level BERT tokenizer built offline."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    words = "a an the of photo photograph picture cat dog on in with red blue green man woman sitting table".split()
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, "[DEC]"]  # BLIP decodes from [DEC]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(tokens) + "\n")
    tokenizer = BertTokenizer(str(vocab_file), bos_token="[DEC]")
    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = BlipConfig(
        text_config={
            **layers,
            "vocab_size": len(tokens),
            "max_position_embeddings": 160,
            "bos_token_id": tokens.index("[DEC]"),
            "pad_token_id": tokens.index("[PAD]"),
            "sep_token_id": tokens.index("[SEP]"),
            "eos_token_id": tokens.index("[SEP]"),
        },
        vision_config={**layers, "image_size": 30, "patch_size": 2},
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 30, "width": 30}), tokenizer).save_pretrained(folder)


def build_tiny_music(folder: Path) -> None:
    """A tiny MusicGen: T5 text encoder, EnCodec at 32 kHz (50 frames/s), a 4-codebook decoder."""
    import torch
    from transformers import (
        EncodecConfig,
        EncodecFeatureExtractor,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenProcessor,
        T5Config,
        T5Tokenizer,
    )

    words = "a an the of and with in on music song beat drums bass guitar piano synth jazz rock pop ambient lofi calm fast slow happy sad epic techno house melody violin orchestra chill".split()
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + word, -float(rank)) for rank, word in enumerate(words, 1)]
    vocab += [(piece, -100.0) for piece in ["\u2581", *letters]]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    codebook_size = 128
    config = MusicgenConfig(
        text_encoder=T5Config(
            vocab_size=len(vocab), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        ),
        # musicgen's EnCodec: 32 kHz, hop 8*5*4*4 = 640 samples -> 50 frames/s; non-causal convs, 2-layer LSTM.
        audio_encoder=EncodecConfig(
            sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2], codebook_size=codebook_size,
            hidden_size=16, num_filters=4, use_causal_conv=False, use_conv_shortcut=False,
        ),
        decoder=MusicgenDecoderConfig(
            vocab_size=codebook_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, ffn_dim=32,
            num_codebooks=4, pad_token_id=codebook_size, bos_token_id=codebook_size,
        ),
    )
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(config)
    for layer in model.audio_encoder.quantizer.layers:  # codebooks start at zero: every code would sound alike
        layer.codebook.embed.normal_()
    generation = model.generation_config  # as the facebook/musicgen-* checkpoints ship it
    generation.decoder_start_token_id = generation.pad_token_id = codebook_size
    generation.do_sample, generation.guidance_scale, generation.max_length = True, 3.0, 1503
    model.save_pretrained(folder)
    MusicgenProcessor(EncodecFeatureExtractor(feature_size=1, sampling_rate=32000), tokenizer).save_pretrained(folder)


def build_tiny_point_e(folder: Path) -> None:
    """Point-E's real classes at tiny size (64 + 192 points, width 32), a tiny CLIP text tower with a
    projection, and a tiny SDF model."""
    import torch

    from modules.pointe.tiny import build_tiny_pipeline

    torch.manual_seed(0)
    build_tiny_pipeline(folder)  # saves with save_pretrained; the app loads it with PointEPipeline.from_pretrained


def build_tiny_point_e_image(folder: Path) -> None:
    """As build_tiny_point_e from an image: a tiny CLIP image tower (8x8 pixels, a 2x2 grid), an image-grid
    base, the upsampler on that grid and a tiny SDF model."""
    import torch

    from modules.pointe.tiny import build_tiny_image_pipeline

    torch.manual_seed(0)
    build_tiny_image_pipeline(folder)  # loaded by the app with PointEImagePipeline.from_pretrained


#: task -> its tiny entries, each (model id, display name, wrapper, builder); the first is the default
TINY_BUILDERS: dict[str, list[tuple[str, str, str, Callable[[Path], None]]]] = {
    "chat": [("tiny-chat", "Tiny Llama", "transformers-chat", build_tiny_chat)],
    "image": [("tiny-sd", "Tiny Stable Diffusion", "diffusers-text-to-image", build_tiny_stable_diffusion)],
    "caption": [("tiny-blip", "Tiny BLIP", "blip-captioning", build_tiny_blip)],
    "music": [("tiny-musicgen", "Tiny MusicGen", "transformers-musicgen", build_tiny_music)],
    "pointcloud": [
        ("tiny-point-e", "Tiny Point-E", "point-e", build_tiny_point_e),
        ("tiny-point-e-image", "Tiny Point-E from an image", "point-e-image", build_tiny_point_e_image),
    ],
}

#: task -> the tiny entry's `defaults`, where the wrapper's own would be slow or wrong for a tiny model
TINY_DEFAULTS: dict[str, dict[str, float | int | str]] = {
    "image": {"num_steps": 4, "guidance": 5.0, "width": 64, "height": 64},
    "caption": {"max_length": 12},
    "pointcloud": {"num_steps": 8, "mesh_grid": 32},
}


def build_tiny_catalog(root: Path | None = None) -> Catalog:
    """Build (once) every tiny model and return a catalogue of them."""
    root = root or cache_root()
    tasks: dict[str, TaskCatalog] = {}
    for task, builders in TINY_BUILDERS.items():
        entries = []
        for model_id, name, wrapper, builder in builders:
            folder = root / model_id
            if not (folder / ".complete").exists():
                # Build into a scratch folder and rename, so an interrupted build is never mistaken for a cache.
                scratch = root / f".{model_id}.building"
                shutil.rmtree(scratch, ignore_errors=True)
                scratch.mkdir(parents=True)
                in_fresh_thread(lambda: builder(scratch))  # the server's main thread keeps no OpenMP pool
                (scratch / ".complete").touch()
                shutil.rmtree(folder, ignore_errors=True)
                scratch.rename(folder)
            entries.append(
                ModelEntry(
                    id=model_id,
                    name=name,
                    wrapper=wrapper,
                    source=Source(path=str(folder)),
                    license="random weights (no licence restrictions)",
                    random_weights=True,
                    defaults=TINY_DEFAULTS.get(task, {}),
                )
            )
        tasks[task] = TaskCatalog(default=entries[0].id, models=entries)
    return Catalog(tasks=tasks)
