"""The five model families `gpu_check.py` runs, each with random weights, built from its published
configuration (or the same code with shrunk numbers for the CPU mode) and saved with `save_pretrained`.

Each family also knows how to make one request through its wrapper, the same request as a raw library
call on the same loaded object, the working memory its wrapper declares for it, and whether its outputs
are finite. Tokenizers are borrowed from the tiny models of `modules/tiny.py` (no hub here): they cover
only a few hundred ids, so tokens the random models pick beyond them decode to nothing, which changes no
timing and no memory.

Published configurations (hub `config.json` files, copied here because the check may not download;
the parameter counts below were checked on the meta device):
  SD 1.5      stable-diffusion-v1-5/stable-diffusion-v1-5: UNet 860M, VAE 84M, CLIP ViT-L/14 text 123M
  MusicGen    facebook/musicgen-small: T5-base text encoder, 32 kHz EnCodec, 24-layer decoder: 587M
  BLIP        Salesforce/blip-image-captioning-base: ViT-B/16 at 384 px, BERT-base text decoder (224M
              parameters: transformers ties the decoder's output layer to its embeddings; the hub lists 247M)
  Chat        HuggingFaceTB/SmolLM2-1.7B-Instruct: Llama, 24 layers, 2048 wide, tied embeddings: 1.71B
  Point-E     openai/point-e base40M-textvec and upsample (40M each), CLIP ViT-L/14 text 124M
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

PROMPT = "a red chair on a wooden floor"
SEED = 1

CLIP_L_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
CLIP_TEXT_TINY = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)


def consume(generator: Any) -> Any:
    """Run a wrapper's `generate` to the end and return its last item (the result)."""
    last = None
    for last in generator:
        pass
    return last


def finite(array: Any) -> bool:
    return bool(np.isfinite(np.asarray(array, dtype=np.float64)).all())


def clip_text_config(tiny: bool) -> Any:
    """CLIP ViT-L/14's text tower (SD 1.5 and Point-E), with the borrowed byte-level tokenizer's ids."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**(CLIP_TEXT_TINY if tiny else CLIP_L_TEXT), bos_token_id=512, eos_token_id=513, pad_token_id=513)


class Family(ABC):
    task: ClassVar[str]
    #: The id in the check's own catalogue, and the models.yaml entry whose dtype and defaults it takes.
    model_id: ClassVar[str]
    catalogue_id: ClassVar[str]

    @abstractmethod
    def build(self, folder: Path, tiny: bool, dtype: Any, borrowed: dict[str, Path]) -> None:
        """Build random weights (on torch's current default device) and `save_pretrained` them to `folder`;
        `borrowed` maps each task to its tiny model's folder, whose tokenizer or processor is reused."""

    @abstractmethod
    def settings(self, tiny: bool, light: bool) -> dict[str, Any]:
        """The request's settings on top of the entry's defaults; `light` for the many requests of the budget run."""

    @abstractmethod
    def run_wrapper(self, wrapper: Any, settings: dict[str, Any]) -> Any:
        """One request through the wrapper (its own lease inside), to the end; returns its result."""

    @abstractmethod
    def run_raw(self, model: Any, wrapper: Any, settings: dict[str, Any]) -> Any:
        """The same request as a plain library call on the loaded object (inside the caller's lease)."""

    @abstractmethod
    def declared_working(self, wrapper: Any, settings: dict[str, Any]) -> int:
        """The working memory the wrapper declares to the manager for this request."""

    @abstractmethod
    def outputs_finite(self, model: Any, wrapper: Any, result: Any, settings: dict[str, Any]) -> bool:
        """Whether this request's outputs (or the model's raw outputs on its inputs) are all finite."""


class StableDiffusion15(Family):
    task, model_id, catalogue_id = "image", "sd15-random", "sd-1.5"
    UNET = dict(
        act_fn="silu", attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, out_channels=4, layers_per_block=2,
        mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, sample_size=64,
    )
    UNET_TINY = dict(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, cross_attention_dim=32,
        norm_num_groups=8, attention_head_dim=4, sample_size=8,
    )
    VAE = dict(
        act_fn="silu", block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, in_channels=3, out_channels=3, latent_channels=4,
        layers_per_block=2, norm_num_groups=32, sample_size=512,
    )
    VAE_TINY = dict(
        block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8, sample_size=64,
    )

    def build(self, folder: Path, tiny: bool, dtype: Any, borrowed: dict[str, Path]) -> None:
        from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel

        from modules.pointe.tiny import tiny_clip_tokenizer

        pipe = StableDiffusionPipeline(
            unet=UNet2DConditionModel(**(self.UNET | (self.UNET_TINY if tiny else {}))),
            vae=AutoencoderKL(**(self.VAE | (self.VAE_TINY if tiny else {}))),
            text_encoder=CLIPTextModel(clip_text_config(tiny)),
            tokenizer=tiny_clip_tokenizer(),
            scheduler=PNDMScheduler(  # SD 1.5's own scheduler config
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
            ),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.to(dtype=dtype).save_pretrained(folder)

    def settings(self, tiny: bool, light: bool) -> dict[str, Any]:
        if tiny:
            return {"num_steps": 2, "width": 64, "height": 64, "guidance": 5.0, "seed": SEED}
        return {"num_steps": 10 if light else 25, "seed": SEED}  # the entry's 512 x 512, guidance 7.5, DPM++ 2M

    def run_wrapper(self, wrapper: Any, settings: dict[str, Any]) -> Any:
        return consume(wrapper.generate(PROMPT, **settings))

    def _raw_pipe(self, pipe: Any, wrapper: Any, settings: dict[str, Any]) -> tuple[Any, Any]:
        """The loaded pipeline with the same scheduler the wrapper picks for these settings."""
        from modules.wrappers.text_to_image import scheduler_for

        chosen = wrapper.settings(**settings)
        return type(pipe).from_pipe(pipe, scheduler=scheduler_for(chosen.scheduler, pipe.scheduler)), chosen

    def run_raw(self, model: Any, wrapper: Any, settings: dict[str, Any], output_type: str = "pil") -> Any:
        import torch

        pipe, chosen = self._raw_pipe(model, wrapper, settings)
        pipe.set_progress_bar_config(disable=True)
        with torch.inference_mode():
            return pipe(
                prompt=PROMPT,
                num_inference_steps=chosen.num_steps,
                guidance_scale=chosen.guidance,
                width=chosen.width,
                height=chosen.height,
                generator=torch.Generator("cpu").manual_seed(chosen.seed),
                output_type=output_type,
            )

    def declared_working(self, wrapper: Any, settings: dict[str, Any]) -> int:
        return wrapper.working_bytes(wrapper.settings(**settings))

    def outputs_finite(self, model: Any, wrapper: Any, result: Any, settings: dict[str, Any]) -> bool:
        # The saved PNG cannot hold a NaN, so the same request runs again with float outputs.
        return finite(self.run_raw(model, wrapper, settings, output_type="np").images)


class MusicgenSmall(Family):
    task, model_id, catalogue_id = "music", "musicgen-small-random", "musicgen-small"
    TEXT = dict(
        vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
        relative_attention_num_buckets=32, feed_forward_proj="relu",
    )
    TEXT_TINY = dict(vocab_size=128, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    AUDIO = dict(
        sampling_rate=32000, audio_channels=1, num_filters=64, num_residual_layers=1, upsampling_ratios=[8, 5, 4, 4],
        norm_type="weight_norm", kernel_size=7, last_kernel_size=7, residual_kernel_size=3, dilation_growth_rate=2,
        use_causal_conv=False, pad_mode="reflect", compress=2, num_lstm_layers=2, trim_right_ratio=1.0,
        codebook_size=2048, hidden_size=128, use_conv_shortcut=False, target_bandwidths=[2.2], normalize=False,
    )
    AUDIO_TINY = dict(codebook_size=128, hidden_size=16, num_filters=4)
    DECODER = dict(
        vocab_size=2048, max_position_embeddings=2048, num_hidden_layers=24, ffn_dim=4096, num_attention_heads=16,
        hidden_size=1024, num_codebooks=4, activation_function="gelu", scale_embedding=False,
        tie_word_embeddings=False, audio_channels=1,
    )
    DECODER_TINY = dict(vocab_size=128, num_hidden_layers=2, ffn_dim=32, num_attention_heads=4, hidden_size=16)

    def build(self, folder: Path, tiny: bool, dtype: Any, borrowed: dict[str, Path]) -> None:
        from transformers import (
            EncodecConfig,
            MusicgenConfig,
            MusicgenDecoderConfig,
            MusicgenForConditionalGeneration,
            MusicgenProcessor,
            T5Config,
        )

        codebook_size = (self.AUDIO | (self.AUDIO_TINY if tiny else {}))["codebook_size"]
        config = MusicgenConfig(
            text_encoder=T5Config(**(self.TEXT | (self.TEXT_TINY if tiny else {})), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
            audio_encoder=EncodecConfig(**(self.AUDIO | (self.AUDIO_TINY if tiny else {}))),
            decoder=MusicgenDecoderConfig(
                **(self.DECODER | (self.DECODER_TINY if tiny else {})), pad_token_id=codebook_size, bos_token_id=codebook_size
            ),
        )
        model = MusicgenForConditionalGeneration(config)
        for layer in model.audio_encoder.quantizer.layers:  # codebooks start at zero: every code would sound alike
            layer.codebook.embed.normal_()
        generation = model.generation_config  # as facebook/musicgen-small ships it
        generation.decoder_start_token_id = generation.pad_token_id = codebook_size
        generation.do_sample, generation.guidance_scale, generation.top_k, generation.max_length = True, 3.0, 250, 1500
        model.to(dtype).save_pretrained(folder)
        MusicgenProcessor.from_pretrained(borrowed["music"]).save_pretrained(folder)

    def settings(self, tiny: bool, light: bool) -> dict[str, Any]:
        return {"duration": 1.0 if tiny else (2.0 if light else 5.0), "seed": SEED}

    def run_wrapper(self, wrapper: Any, settings: dict[str, Any]) -> Any:
        return consume(wrapper.generate(PROMPT, **settings))

    def run_raw(self, model: Any, wrapper: Any, settings: dict[str, Any]) -> Any:
        import torch

        chosen = wrapper.settings(**settings)
        net = model.model
        frames = round(net.config.audio_encoder.frame_rate * chosen.duration)
        inputs = model.processor(text=[PROMPT], padding=True, return_tensors="pt").to(net.device)
        torch.manual_seed(chosen.seed)
        with torch.inference_mode():
            return net.generate(
                **inputs,
                max_new_tokens=frames + net.decoder.num_codebooks - 1,
                do_sample=True,
                top_k=chosen.top_k or None,
                temperature=chosen.temperature,
                guidance_scale=chosen.guidance,
            )

    def declared_working(self, wrapper: Any, settings: dict[str, Any]) -> int:
        return wrapper.working_bytes(1, wrapper.settings(**settings))

    def outputs_finite(self, model: Any, wrapper: Any, result: Any, settings: dict[str, Any]) -> bool:
        return result.audio is not None and result.audio.size > 0 and finite(result.audio)


class BlipBase(Family):
    task, model_id, catalogue_id = "caption", "blip-base-random", "blip-base"
    TEXT = dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512)
    TEXT_TINY = dict(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=160)
    VISION = dict(image_size=384, patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    VISION_TINY = dict(image_size=30, patch_size=2, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)

    def __init__(self, picture: Path) -> None:
        self.picture = picture

    def build(self, folder: Path, tiny: bool, dtype: Any, borrowed: dict[str, Path]) -> None:
        from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

        tokenizer = BlipProcessor.from_pretrained(borrowed["caption"]).tokenizer
        vision = self.VISION_TINY if tiny else self.VISION
        config = BlipConfig(
            text_config={
                **(self.TEXT_TINY if tiny else self.TEXT),
                "bos_token_id": tokenizer.bos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
                "sep_token_id": tokenizer.sep_token_id,
                "eos_token_id": tokenizer.sep_token_id,
            },
            vision_config=vision,
        )
        BlipForConditionalGeneration(config).to(dtype).save_pretrained(folder)
        side = vision["image_size"]
        BlipProcessor(BlipImageProcessor(size={"height": side, "width": side}), tokenizer).save_pretrained(folder)

    def settings(self, tiny: bool, light: bool) -> dict[str, Any]:
        return {"max_length": 12} if tiny else {}  # the entry's beam search, 3 beams, 30 tokens

    def run_wrapper(self, wrapper: Any, settings: dict[str, Any]) -> Any:
        return consume(wrapper.generate(str(self.picture), **settings))

    def _inputs(self, model: Any, text: str | None = None) -> Any:
        from PIL import Image

        inputs = model.processor(images=Image.open(self.picture).convert("RGB"), text=text, return_tensors="pt")
        inputs = inputs.to(model.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.model.dtype)
        return inputs

    def run_raw(self, model: Any, wrapper: Any, settings: dict[str, Any]) -> Any:
        import torch

        chosen = wrapper.settings(**settings)
        with torch.inference_mode():
            ids = model.model.generate(
                **self._inputs(model), num_beams=chosen.num_beams, do_sample=False, max_new_tokens=chosen.max_length
            )
        return model.processor.decode(ids[0], skip_special_tokens=True)

    def declared_working(self, wrapper: Any, settings: dict[str, Any]) -> int:
        return wrapper.working_bytes(wrapper.settings(**settings))

    def outputs_finite(self, model: Any, wrapper: Any, result: Any, settings: dict[str, Any]) -> bool:
        import torch

        with torch.inference_mode():  # a caption is text: look at the logits that chose it
            logits = model.model(**self._inputs(model, text="a photograph of")).logits
        return finite(logits.float().cpu())


class LlamaChat17B(Family):
    task, model_id, catalogue_id = "chat", "llama-1.7b-random", "smollm2-1.7b"
    CONFIG = dict(
        vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
    )
    CONFIG_TINY = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)

    def build(self, folder: Path, tiny: bool, dtype: Any, borrowed: dict[str, Path]) -> None:
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(borrowed["chat"])
        config = LlamaConfig(
            **(self.CONFIG | (self.CONFIG_TINY if tiny else {})),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        LlamaForCausalLM(config).to(dtype).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    def settings(self, tiny: bool, light: bool) -> dict[str, Any]:
        tokens = (8 if light else 16) if tiny else (32 if light else 128)
        return {"temperature": 0.0, "max_new_tokens": tokens}  # greedy: both sides make the same tokens

    def run_wrapper(self, wrapper: Any, settings: dict[str, Any]) -> Any:
        return consume(wrapper.generate(PROMPT, **settings))

    def _inputs(self, model: Any, wrapper: Any, settings: dict[str, Any]) -> Any:
        chosen = wrapper.settings(**settings)
        messages = [{"role": "system", "content": chosen.system_prompt}, {"role": "user", "content": PROMPT}]
        inputs = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        return inputs.to(model.model.device), chosen

    def run_raw(self, model: Any, wrapper: Any, settings: dict[str, Any]) -> Any:
        import torch

        inputs, chosen = self._inputs(model, wrapper, settings)
        with torch.inference_mode():
            return model.model.generate(
                **inputs, max_new_tokens=chosen.max_new_tokens, do_sample=False, pad_token_id=model.tokenizer.pad_token_id
            )

    def declared_working(self, wrapper: Any, settings: dict[str, Any]) -> int:
        chosen = wrapper.settings(**settings)
        return wrapper.working_bytes(chosen, wrapper.check_inputs(PROMPT, [], chosen))

    def outputs_finite(self, model: Any, wrapper: Any, result: Any, settings: dict[str, Any]) -> bool:
        import torch

        inputs, _ = self._inputs(model, wrapper, settings)
        with torch.inference_mode():
            return finite(model.model(**inputs).logits.float().cpu())


class PointE40M(Family):
    task, model_id, catalogue_id = "pointcloud", "point-e-random", "point-e-40m"

    def build(self, folder: Path, tiny: bool, dtype: Any, borrowed: dict[str, Path]) -> None:
        from transformers import CLIPTextModelWithProjection

        from modules.pointe.config import PointDiffusionConfig
        from modules.pointe.model import build_model
        from modules.pointe.pipeline import PointEPipeline
        from modules.pointe.tiny import tiny_clip_tokenizer

        text = clip_text_config(tiny)
        if tiny:
            base, upsampler = PointDiffusionConfig.tiny_text(cond_width=text.projection_dim), PointDiffusionConfig.tiny_upsample()
        else:
            base, upsampler = PointDiffusionConfig.base40m_textvec(), PointDiffusionConfig.upsample()
        # Saved as PointEPipeline saves it (float32): `dtype` is what the catalogue asks, not what this format holds.
        pipeline = PointEPipeline(build_model(base), build_model(upsampler), CLIPTextModelWithProjection(text), tiny_clip_tokenizer())
        pipeline.save_pretrained(folder)

    def settings(self, tiny: bool, light: bool) -> dict[str, Any]:
        steps = (2 if light else 4) if tiny else (16 if light else 64)
        return {"num_steps": steps, "seed": SEED}

    def run_wrapper(self, wrapper: Any, settings: dict[str, Any]) -> Any:
        return consume(wrapper.generate(PROMPT, **settings))

    def run_raw(self, model: Any, wrapper: Any, settings: dict[str, Any]) -> Any:
        chosen = wrapper.settings(**settings)
        return model(PROMPT, seed=chosen.seed, guidance_scale=chosen.guidance, num_steps=chosen.num_steps)

    def declared_working(self, wrapper: Any, settings: dict[str, Any]) -> int:
        return wrapper.working_bytes(wrapper.settings(**settings))

    def outputs_finite(self, model: Any, wrapper: Any, result: Any, settings: dict[str, Any]) -> bool:
        return finite(result.points)


def official_attention(attention: Any, x: Any) -> Any:
    """openai/point-e's `QKVMultiheadAttention` (point_e/models/transformer.py) on our module's weights:
    explicit scores with the scale split over q and k, and the softmax in float32."""
    import math

    import torch

    qkv = attention.c_qkv(x)
    batch, tokens, width = qkv.shape
    channels = width // attention.heads // 3
    scale = 1 / math.sqrt(math.sqrt(channels))
    q, k, v = torch.split(qkv.view(batch, tokens, attention.heads, -1), channels, dim=-1)
    weight = torch.einsum("bthc,bshc->bhts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return attention.c_proj(torch.einsum("bhts,bshc->bthc", weight, v).reshape(batch, tokens, -1))


def official_style_copy(base: Any) -> Any:
    """A copy of a Point-E base model whose attention runs as the official code's does."""
    import copy
    from functools import partial

    reference = copy.deepcopy(base)
    for block in reference.backbone.resblocks:
        block.attn.forward = partial(official_attention, block.attn)
    return reference


def families(picture: Path) -> list[Family]:
    return [StableDiffusion15(), MusicgenSmall(), BlipBase(picture), LlamaChat17B(), PointE40M()]
