"""Point-E (openai/point-e) text-to-point-cloud in plain PyTorch.

config.py (configurations), model.py (the transformers), diffusion.py (schedules), sampler.py (the
Karras-Heun sampler), checkpoints.py (fetching the official files, torch-free), weights.py (loading and
saving), pipeline.py (text -> coloured points), tiny.py (a tiny random pipeline for tests). Import from the
submodules: this package's import stays free of torch, so the app can start without it.
"""
