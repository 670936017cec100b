"""A tiny random-weight Point-E pipeline built from the real classes, for tests and `--tiny` runs."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .config import PointDiffusionConfig, SamplerConfig
from .model import build_model
from .pipeline import PointEPipeline

TINY_TEXT_WIDTH = 16


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer that needs no downloaded files: the 256 byte symbols, the same with
    the end-of-word mark, and the two special tokens (ids 512, 513); no merges."""
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_clip_text_encoder() -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=514,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=TINY_TEXT_WIDTH,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    return CLIPTextModelWithProjection(config)


def build_tiny_pipeline(folder: str | Path, num_steps: int = 2) -> PointEPipeline:
    """Saves a random tiny pipeline (64 + 192 points, width 32) to folder and loads it back through
    PointEPipeline.from_pretrained, the path real weights take. Generation takes well under a second."""
    pipeline = PointEPipeline(
        build_model(PointDiffusionConfig.tiny_text(cond_width=TINY_TEXT_WIDTH)),  # type: ignore[arg-type]
        build_model(PointDiffusionConfig.tiny_upsample()),  # type: ignore[arg-type]
        tiny_clip_text_encoder(),
        tiny_clip_tokenizer(),
        base_sampler=SamplerConfig(steps=num_steps),
        upsampler_sampler=SamplerConfig(steps=num_steps, sigma_max=160.0, s_churn=0.0, guidance_scale=0.0),
    )
    pipeline.save_pretrained(folder)
    return PointEPipeline.from_pretrained(folder)
