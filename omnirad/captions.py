"""Captions as token ids and back: a word-level tokenizer from the ``tokenizers`` library.

Every participant must turn words into the same ids, so the vocabulary is part of the task (its
``label_names``): the embedded data derives it from its caption templates, identical on every
machine; caption site files name a shared vocabulary file (``data.vocabulary``), which
``build_vocabulary`` writes from captions. Nothing is downloaded: the tokenizer is built in memory
from the word list. Words are lower-cased and split on whitespace and punctuation; a caption is
``[BOS] words [EOS]``, padded with ``[PAD]`` (id 0, ignored by the loss) or cut to a fixed length.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

from omnirad.durable import write_atomically
from omnirad.tasks import PAD_ID

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0 to 3 in every vocabulary
BOS_ID, EOS_ID = SPECIAL_TOKENS.index(BOS), SPECIAL_TOKENS.index(EOS)
assert SPECIAL_TOKENS.index(PAD) == PAD_ID


def _blank() -> Tokenizer:
    """A word-level tokenizer without words yet: lower-case, split on whitespace and punctuation."""
    tokenizer = Tokenizer(WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


@lru_cache(maxsize=1)
def _splitter() -> Tokenizer:
    return _blank()


def caption_words(caption: str) -> list[str]:
    """The words of a caption as every tokenizer here sees them (normalised, then split): what a
    federated word count counts, so that its words are the ones the tokenizer will find."""
    tokenizer = _splitter()
    assert tokenizer.normalizer is not None and tokenizer.pre_tokenizer is not None
    text = tokenizer.normalizer.normalize_str(caption)
    return [word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)]


def word_counts(captions: Iterable[str]) -> Counter[str]:
    """How often each word occurs in ``captions``."""
    return Counter(word for caption in captions for word in caption_words(caption))


def build_vocabulary(captions: Iterable[str], min_count: int = 1) -> tuple[str, ...]:
    """The special tokens, then every word seen at least ``min_count`` times (most frequent first)."""
    tokenizer = _blank()
    trainer = WordLevelTrainer(min_frequency=min_count, special_tokens=list(SPECIAL_TOKENS))
    tokenizer.train_from_iterator(captions, trainer=trainer)
    vocab = tokenizer.get_vocab()
    return tuple(sorted(vocab, key=vocab.__getitem__))


def read_vocabulary(path: str | Path) -> tuple[str, ...]:
    """A vocabulary file: one word per line, without the special tokens (they are added first)."""
    words = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return (*SPECIAL_TOKENS, *(w for w in words if w not in SPECIAL_TOKENS))


def write_vocabulary(vocabulary: Sequence[str], path: str | Path) -> None:
    """One word per line, special tokens left out (``read_vocabulary`` puts them back first)."""
    Path(path).write_text("".join(f"{w}\n" for w in vocabulary if w not in SPECIAL_TOKENS), encoding="utf-8")


def vocabulary_copy(vocabulary: Sequence[str], folder: Path) -> Path:
    """``vocabulary`` as a file in ``folder`` named by its content, written once and atomically: the
    processes of a site (one per message in deployment) and simulated sites sharing a disk all read one file."""
    words = "\n".join(w for w in vocabulary if w not in SPECIAL_TOKENS)
    digest = hashlib.sha256(words.encode("utf-8")).hexdigest()[:16]
    path = folder / f"vocabulary-{digest}.txt"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda temporary: write_vocabulary(vocabulary, temporary))
    return path


@lru_cache(maxsize=8)
def caption_tokenizer(vocabulary: tuple[str, ...]) -> Tokenizer:
    """The tokenizer of a vocabulary whose first entries are ``SPECIAL_TOKENS``."""
    if vocabulary[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
        raise ValueError(f"a caption vocabulary starts with {', '.join(SPECIAL_TOKENS)}")
    tokenizer = _blank()
    tokenizer.model = WordLevel({word: i for i, word in enumerate(vocabulary)}, unk_token=UNK)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # their ids stay 0 to 3; decoding skips them
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)])
    return tokenizer


def encode_captions(captions: Sequence[str], vocabulary: tuple[str, ...], length: int | None = None) -> np.ndarray:
    """(N, ``length``) int64 token ids: BOS, the words, EOS, then padding; longer captions are cut
    (their EOS kept). Without ``length``, as long as the longest caption."""
    encodings = [e.ids for e in caption_tokenizer(vocabulary).encode_batch(list(captions))]
    length = length if length is not None else max(map(len, encodings), default=2)
    ids = np.full((len(captions), length), PAD_ID, dtype=np.int64)
    for row, tokens in enumerate(encodings):
        if len(tokens) > length:
            tokens = [*tokens[: length - 1], EOS_ID]
        ids[row, : len(tokens)] = tokens
    return ids


def decode_captions(ids: np.ndarray, vocabulary: tuple[str, ...]) -> list[str]:
    """Words up to the first EOS of each row, special tokens dropped, joined by spaces."""
    tokenizer = caption_tokenizer(vocabulary)
    rows = []
    for row in np.asarray(ids, dtype=np.int64):
        ends = np.flatnonzero(row == EOS_ID)
        rows.append([int(i) for i in row[: ends[0] if len(ends) else len(row)]])
    return list(tokenizer.decode_batch(rows, skip_special_tokens=True))


def main(argv: list[str] | None = None) -> int:
    """``python -m omnirad.captions CSV... -o FILE``: a vocabulary file from caption CSVs' words."""
    import argparse

    from omnirad.data.caption_csv import caption_rows

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("csv", nargs="+", type=Path, help="caption CSVs (a caption column)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="the vocabulary file to write")
    parser.add_argument("--min-count", type=int, default=2, help="keep words seen at least this often")
    args = parser.parse_args(argv)
    captions = [c for path in args.csv for c in caption_rows(path)[1] if c]
    vocabulary = build_vocabulary(captions, args.min_count)
    write_vocabulary(vocabulary, args.output)
    print(f"{args.output}: {len(vocabulary) - len(SPECIAL_TOKENS)} words from {len(captions)} captions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
