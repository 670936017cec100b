"""Atelier: one Gradio app, one tab per modality, one memory manager."""
