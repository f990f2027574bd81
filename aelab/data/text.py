"""Text: sentence corpora, a vocabulary saved as JSON, and splits of padded token sequences.

Two registered data sets:

* ``fortunes``: 25,657 English sentences from Debian's ``fortunes`` and ``fortunes-min``
  packages, lowercased and tokenised PTB-style (``fortunes-train.txt``: 23,092,
  ``fortunes-test.txt``: 2,565, disjoint), read from the data directory (``data.root``,
  ``$AELAB_DATA_DIR``);
* ``text``: any corpus of the user's, one sentence a line, tokens separated by spaces
  (``--set data.train=FILE --set data.test=FILE``, optionally ``--set data.valid=FILE``, on
  which the per-epoch evaluation then runs; Penn-Treebank files with their ``<unk>`` tokens
  work as they are).

The vocabulary is built from the training split (``data.min_count``, ``data.max_vocab``) with the
specials ``<pad> <unk> <bos> <eos>`` at ids 0-3. A sentence is stored as its token ids followed by
``<eos>``; a batch is a :class:`~aelab.batch.Batch` with ``x`` the ids ``(B, T)`` padded with
``<pad>`` to the longest sentence of the batch, ``lengths`` (``<eos>`` included) and ``mask``.
Training visits sentences in length buckets (:meth:`TokenSequences.order`), so batches carry
little padding, in an order that is a pure function of the seed and the epoch (exact resume).

Bad input is named: an empty file, one with no sentence left, bytes that are not UTF-8 (with the
line), and overlong sentences are truncated or dropped (``data.overlong``) and counted.

Example:
    >>> v = Vocab.build([["a", "b", "a"], ["c", "a"]])
    >>> v.tokens[:6], v.encode(["a", "z"]), v.decode([4, 5, EOS, 4])
    (['<pad>', '<unk>', '<bos>', '<eos>', 'a', 'b'], [4, 1], 'a b')
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from aelab.batch import Batch
from aelab.config import ConfigError
from aelab.data.base import DataConfig, DatasetInfo, DataSplits, Split, epoch_order, resolve_root
from aelab.io import atomic_write_text, sha256_file
from aelab.registry import DATASETS

__all__ = ["BOS", "EOS", "PAD", "SPECIALS", "UNK", "Corpus", "TokenSequences", "Vocab", "read_sentences",
           "token_sequences"]

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD, UNK, BOS, EOS = 0, 1, 2, 3

#: the fortunes corpus as the project converted it (see the shared data README): file -> SHA-256.
#: A copy with other bytes still loads (it may be a user's own edit), with a note that says so.
FORTUNES = {
    "fortunes-train.txt": "27f123e4c05233def7110aa28bbc809a13b1f152ec08682ea81b567384cbc710",
    "fortunes-test.txt": "10dc4a858ebd2b391dc35a9ef90ce51953bb085362ffd057cc4c884bdf144efc",
}


@dataclass
class Vocab:
    """Token <-> id, with the four specials first; saved as JSON (``{"tokens": [...]}``).

    Attributes:
        tokens: the tokens by id; ``tokens[:4]`` are :data:`SPECIALS`.
    """

    tokens: list[str]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.tokens[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {list(SPECIALS)}, got {self.tokens[:4]}")
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("a vocabulary lists each token once")

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_count: int = 1, max_size: int | None = None) -> Vocab:
        """The words of ``sentences`` seen at least ``min_count`` times, most frequent first (ties
        alphabetically), at most ``max_size`` entries with the specials."""
        counts = Counter(t for s in sentences for t in s if t not in SPECIALS)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *words])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.index.get(t, UNK) for t in tokens]

    def decode(self, ids: Iterable[int]) -> str:
        """The words of ``ids`` up to the first ``<eos>``, without ``<bos>`` and ``<pad>``."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i not in (PAD, BOS):
                out.append(self.tokens[i] if 0 <= i < len(self.tokens) else SPECIALS[UNK])
        return " ".join(out)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"tokens": self.tokens}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a saved vocabulary; a damaged or foreign file is a ``ValueError`` naming it."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(list(data["tokens"]))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not an aelab vocabulary ({e})") from None


@dataclass
class Corpus:
    """The sentences of one file and what reading them did."""

    sentences: list[list[str]]
    lines: int
    blank: int = 0
    truncated: int = 0
    dropped: int = 0


def read_sentences(path: str | Path, max_len: int = 64, overlong: str = "truncate") -> Corpus:
    """Read one sentence a line (tokens separated by white space).

    Blank lines are skipped; a sentence longer than ``max_len`` tokens is cut to ``max_len``
    (``overlong="truncate"``) or left out (``"drop"``); both are counted.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty, holds no sentence, or bytes that are not UTF-8 (the line is
            named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such text file: {path}")
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    corpus = Corpus([], 0)
    for line in text.splitlines():
        corpus.lines += 1
        tokens = line.split()
        if not tokens:
            corpus.blank += 1
            continue
        if len(tokens) > max_len:
            if overlong == "drop":
                corpus.dropped += 1
                continue
            corpus.truncated += 1
            tokens = tokens[:max_len]
        corpus.sentences.append(tokens)
    if not corpus.sentences:
        raise ValueError(f"{path}: no sentence left ({corpus.lines} lines, {corpus.blank} blank, "
                         f"{corpus.dropped} longer than data.max_len={max_len} dropped)")
    return corpus


class TokenSequences(Split):
    """Sentences as token ids, each followed by ``<eos>``; batches padded to their longest sentence.

    Args:
        ids: int64 ``(N, L)``, padded with ``<pad>`` (0).
        lengths: int64 ``(N,)``, tokens per sentence including ``<eos>``.

    Example:
        >>> v = Vocab.build([["a", "b"], ["b"]])
        >>> s = token_sequences([["a", "b"], ["b"], ["a", "a", "a"]], v)
        >>> b = s.get_batch(torch.tensor([1, 0]))
        >>> b.x.tolist(), b.lengths.tolist(), b.mask.sum(1).tolist()
        ([[4, 3, 0], [5, 4, 3]], [2, 3], [2, 3])
    """

    def __init__(self, ids: Tensor, lengths: Tensor) -> None:
        if ids.dim() != 2 or lengths.shape != ids.shape[:1] or ids.is_floating_point():
            raise ValueError(f"ids must be integer (N, L) and lengths (N,), got {tuple(ids.shape)}, "
                             f"{tuple(lengths.shape)}")
        self.ids, self.lengths = ids.long(), lengths.long()

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def get_batch(self, idx: Tensor) -> Batch:
        lengths = self.lengths.index_select(0, idx)
        width = int(lengths.max()) if len(idx) else 0
        x = self.ids.index_select(0, idx)[:, :width]
        return Batch(x, lengths=lengths, mask=torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1))

    def subset(self, idx: Tensor) -> TokenSequences:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TokenSequences(self.ids[idx], self.lengths[idx])

    def order(self, seed: int, epoch: int, batch_size: int) -> Tensor:
        """Length buckets: shuffle, sort each run of ``50 * batch_size`` sentences by length, cut
        it into batches and shuffle the full batches (a short last batch stays last, where the
        trainer expects it); a pure function of ``(seed, epoch)``."""
        n = len(self)
        shuffled = epoch_order(n, seed, epoch)
        chunk = 50 * batch_size
        parts = []
        for i in range(0, n, chunk):
            part = shuffled[i : i + chunk]
            parts.append(part[torch.sort(self.lengths[part], stable=True).indices])
        ordered = torch.cat(parts)
        full = n // batch_size
        batches = ordered[: full * batch_size].view(full, batch_size)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
        batches = batches[torch.randperm(full, generator=g)]
        return torch.cat([batches.flatten(), ordered[full * batch_size :]])

    def __repr__(self) -> str:
        return f"TokenSequences(n={len(self)}, max_len={self.ids.shape[1]})"


def token_sequences(sentences: Sequence[Sequence[str]], vocab: Vocab) -> TokenSequences:
    """Encode ``sentences`` with ``vocab`` (``<eos>`` appended) into a :class:`TokenSequences`."""
    lengths = torch.tensor([len(s) + 1 for s in sentences], dtype=torch.long)
    ids = torch.full((len(sentences), int(lengths.max()) if len(sentences) else 1), PAD, dtype=torch.long)
    for i, s in enumerate(sentences):
        ids[i, : len(s) + 1] = torch.tensor([*vocab.encode(s), EOS])
    return TokenSequences(ids, lengths)


def _text_splits(name: str, train_file: Path, test_file: Path, cfg: DataConfig,
                 valid_file: Path | None = None) -> DataSplits:
    files = {"train": train_file, "test": test_file} | ({"valid": valid_file} if valid_file is not None else {})
    corpora = {k: read_sentences(f, cfg.max_len, cfg.overlong) for k, f in files.items()}
    vocab = Vocab.build(corpora["train"].sentences, cfg.min_count, cfg.max_vocab)
    notes = tuple(f"{files[k]}: {c.truncated} sentences longer than data.max_len={cfg.max_len} truncated, "
                  f"{c.dropped} dropped, {c.blank} blank lines skipped" for k, c in corpora.items()
                  if c.truncated or c.dropped or c.blank)
    info = DatasetInfo(name=name, shape=(cfg.max_len + 1,), vocab=vocab, notes=notes)
    splits = {k: token_sequences(c.sentences, vocab) for k, c in corpora.items()}
    return DataSplits(splits["train"], splits["test"], info, valid=splits.get("valid"))


@DATASETS.register("fortunes")
def build_fortunes(cfg: DataConfig) -> DataSplits:
    """Fortunes: 23,092 train / 2,565 test English sentences (Debian's fortunes), PTB-tokenised."""
    root = resolve_root(cfg)
    files = [root / "fortunes-train.txt", root / "fortunes-test.txt"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found: the fortunes corpus is read from the data "
                                "directory (data.root or $AELAB_DATA_DIR); it is built from Debian's fortunes and "
                                "fortunes-min packages, one lowercased PTB-tokenised sentence a line")
    splits = _text_splits("fortunes", files[0], files[1], cfg)
    changed = tuple(f"{f}: not the project's copy of the corpus (SHA-256 {sha256_file(f)[:16]}...)"
                    for f in files if sha256_file(f) != FORTUNES[f.name])
    splits.info.notes += changed
    return splits


@DATASETS.register("text")
def build_text(cfg: DataConfig) -> DataSplits:
    """Your own corpus: data.train and data.test files, one sentence a line, tokens separated by spaces."""
    if cfg.train is None or cfg.test is None:
        raise ConfigError("data set 'text' needs data.train=FILE and data.test=FILE (one sentence a line)")
    valid = Path(cfg.valid).expanduser() if cfg.valid is not None else None
    return _text_splits("text", Path(cfg.train).expanduser(), Path(cfg.test).expanduser(), cfg, valid)
