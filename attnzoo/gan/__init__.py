"""Generative adversarial networks on the library's blocks, with the stabilising tricks.

Stands on :mod:`attnzoo.attention` (``SelfAttention2d``) and
:mod:`attnzoo.transformers_zoo`; nothing is exported yet.
"""

__all__: list[str] = []
