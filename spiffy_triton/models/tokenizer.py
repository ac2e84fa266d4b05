"""Tokenizers: the character-level one of the bundled models (printable ASCII, newline, and
specials), and `load_hf_tokenizer`, the one reader of a checkpoint's ``tokenizer.json`` for every
architecture (a Hugging Face tokenizer through `HFTokenizer`).

Ids 0..3 are the special tokens (pad/EOS share one id, as in LLaDA's SFT where answers are
padded with EOS), then one id per character. The vocabulary is stored in ``tokenizer.json``
beside the checkpoint so that a checkpoint always travels with the tokenizer it was
trained with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

SPECIAL_TOKENS = ("<|eos|>", "<|bos|>", "<|mask|>", "<|unk|>")
DEFAULT_CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))


class CharTokenizer:
    """Maps each character to one id; special tokens come first."""

    def __init__(self, characters: str = DEFAULT_CHARACTERS, special_tokens=SPECIAL_TOKENS):
        if len(set(characters)) != len(characters):
            raise ValueError("characters: every character must appear once")
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError("special_tokens: every special token must appear once")
        missing = {"<|eos|>", "<|mask|>", "<|unk|>"} - set(special_tokens)
        if missing:
            raise ValueError(f"special_tokens must include {sorted(missing)}")
        self.special_tokens = tuple(special_tokens)
        self.characters = characters
        self.id_to_piece = list(self.special_tokens) + list(characters)
        self.piece_to_id = {piece: i for i, piece in enumerate(self.id_to_piece)}
        self.eos_token_id = self.piece_to_id["<|eos|>"]
        self.pad_token_id = self.eos_token_id
        self.mask_token_id = self.piece_to_id["<|mask|>"]
        self.unk_token_id = self.piece_to_id["<|unk|>"]
        self.bos_token_id = self.piece_to_id.get("<|bos|>")

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_piece)

    def __len__(self) -> int:
        return self.vocab_size

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of `text` outside the vocabulary, in order of appearance."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return list(dict.fromkeys(ch for ch in text if ch not in self.piece_to_id))

    def encode(self, text: str, *, strict: bool = False) -> list[int]:
        """Ids of the characters of `text`; characters outside the vocabulary map to unk
        (which decodes to nothing), or with `strict` raise a ValueError naming them."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if strict:
            unknown = self.unknown_characters(text)
            if unknown:
                shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in unknown[:8])
                more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
                raise ValueError(
                    f"text has characters the tokenizer cannot encode: {shown}{more}; its "
                    f"vocabulary is {len(self.characters)} characters (printable ASCII and "
                    "newline for the bundled models)"
                )
        table = self.piece_to_id
        unk = self.unk_token_id
        return [table.get(ch, unk) for ch in text]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        """Text of `ids`. With `skip_special_tokens` (default), specials are dropped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        pieces = []
        n_special = len(self.special_tokens)
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"ids: token id {i} outside the vocabulary [0, {self.vocab_size})")
            if i < n_special and skip_special_tokens:
                continue
            pieces.append(self.id_to_piece[i])
        return "".join(pieces)

    def to_dict(self) -> dict:
        return {
            "type": "char",
            "special_tokens": list(self.special_tokens),
            "characters": self.characters,
        }

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("type") != "char":
            raise ValueError(
                f"{path}: expected a tokenizer of type 'char', got {data.get('type')!r}"
            )
        return cls(data["characters"], tuple(data["special_tokens"]))


class HFTokenizer:
    """``encode(str) -> list[int]`` / ``decode(list[int]) -> str`` over a Hugging Face
    ``tokenizer.json`` (the `tokenizers` package)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)


def load_hf_tokenizer(file: str):
    """The tokenizer in `file` (None when there is none): the project's character tokenizer
    when the file says ``"type": "char"`` (the bundled models), else a Hugging Face tokenizer
    (needs the `tokenizers` package)."""
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        try:
            is_char = json.load(f).get("type") == "char"
        except (json.JSONDecodeError, AttributeError):
            is_char = False
    if is_char:
        return CharTokenizer.load(file)
    try:
        from tokenizers import Tokenizer
    except ImportError as error:
        raise ImportError(
            f"{file} is a Hugging Face tokenizer; install the `tokenizers` package to load it"
        ) from error
    return HFTokenizer(Tokenizer.from_file(file))
