"""Word-level tokenizer for the bundled small CLIP models (ShapesWorld captions).

Ids: [PAD]=0, [UNK]=1, the words, then [SOT]=V-2 and [EOT]=V-1. [EOT] is the largest id, so open_clip's
default `text_pool_type="argmax"` (CLIP's EOT pooling, Radford et al. 2021) pools at the [EOT] position
exactly as with open_clip's BPE tokenizer, whose [EOT] (49407) is also its largest id.
Prompts longer than the context are truncated (the last position keeps [EOT]) with a warning naming the prompt.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch

from unclip_core.atomic import write_json
from unclip_core.checks import check_positive_int

PAD, UNK, SOT, EOT = "[PAD]", "[UNK]", "[SOT]", "[EOT]"
FORMAT = "unclip-explorer/word-tokenizer/v1"
_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")  # as unclip_core.data.shapes.tokenize_words


def split_words(text: str) -> list[str]:
    """Lower-case `text` and split it into words and single punctuation marks."""
    return _WORD_RE.findall(text.lower())


class WordTokenizer:
    """Word-level tokenizer: list of prompts -> (B, context_length) int64 ids, [SOT] words [EOT] [PAD]..."""

    def __init__(self, words: Iterable[str], context_length: int = 24) -> None:
        self.context_length = check_positive_int("context_length", context_length, minimum=3)
        words = list(words)
        seen: set[str] = set()
        for w in words:
            if not isinstance(w, str) or not w or split_words(w) != [w]:
                raise ValueError(f"words must be lower-case single words as split_words() returns them, "
                                 f"got {w!r}; split phrases into words first")
            if w in (PAD, UNK, SOT, EOT) or w in seen:
                raise ValueError(f"words contains {w!r} twice or as a special token; pass each word once")
            seen.add(w)
        self.tokens: list[str] = [PAD, UNK, *words, SOT, EOT]
        self.ids: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id, self.unk_id = 0, 1
        self.sot_id, self.eot_id = len(self.tokens) - 2, len(self.tokens) - 1

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included (the text tower's `vocab_size`)."""
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Word ids of one prompt, without [SOT]/[EOT]; unknown words map to [UNK]."""
        return [self.ids.get(w, self.unk_id) for w in split_words(text)]

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` outside the vocabulary (each once, in order): they would become [UNK]."""
        out: list[str] = []
        for w in split_words(text):
            if w not in self.ids and w not in out:
                out.append(w)
        return out

    def n_tokens(self, text: str) -> int:
        """Length of the prompt in tokens, [SOT] and [EOT] included."""
        return len(split_words(text)) + 2

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Prompts -> (B, L) int64 ids; prompts over L tokens are truncated with a warning."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
        L = self.context_length if context_length is None else check_positive_int("context_length", context_length, 3)
        out = torch.full((len(texts), L), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            unknown = self.unknown_words(text)
            if unknown:
                hints = []
                for w in unknown:
                    close = difflib.get_close_matches(w, self.tokens[2:-2], n=1, cutoff=0.6)
                    hints.append(f"{w!r} (did you mean {close[0]!r}?)" if close else repr(w))
                warnings.warn(f"prompt {text!r}: {', '.join(hints)} not in this CLIP's {len(self.tokens) - 4}-word "
                              f"vocabulary; each becomes [UNK], which carries no meaning", stacklevel=2)
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > L:
                warnings.warn(f"prompt {text!r} has {len(ids)} tokens, more than the context length {L}; "
                              f"truncated to its first {L - 2} words", stacklevel=2)
                ids = ids[:L - 1] + [self.eot_id]
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids of one prompt -> its words joined by spaces; specials are dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words = []
        for i in ids:
            if not 0 <= int(i) < len(self.tokens):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self.tokens)})")
            t = self.tokens[int(i)]
            if t == EOT:
                break
            if t not in (PAD, SOT):
                words.append(t)
        return " ".join(words)

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B,) index of [EOT], the position open_clip's argmax pooling reads."""
        return tokens.argmax(dim=-1)

    def to_dict(self) -> dict:
        """JSON-ready description (the content of vocab.json)."""
        return {"format": FORMAT, "context_length": self.context_length, "tokens": self.tokens}

    def save(self, path: str | os.PathLike) -> Path:
        """Write vocab.json atomically (temporary file, then rename)."""
        path = Path(path)
        write_json(path, self.to_dict(), indent=1, sort_keys=False, fsync=False)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordTokenizer":
        """Read a vocab.json written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a word-tokenizer vocabulary (expected format {FORMAT!r}, "
                             f"got {data.get('format') if isinstance(data, dict) else type(data).__name__!r})")
        tokens = data["tokens"]
        if tokens[:2] != [PAD, UNK] or tokens[-2:] != [SOT, EOT]:
            raise ValueError(f"{path}: tokens must start with {PAD}, {UNK} and end with {SOT}, {EOT}")
        return cls(tokens[2:-2], context_length=data["context_length"])
