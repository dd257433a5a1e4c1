"""Transformer blocks and the model families built from them.

Stands on :mod:`attnzoo.attention`. Its blocks (feed-forward, encoder and decoder
layers, embeddings) and model families are added here as they land; nothing is
exported yet.
"""

__all__: list[str] = []
