"""Text data: the fortunes corpus and user files, the vocabulary, padded batches, length buckets."""

from __future__ import annotations

import pytest
import torch

from aelab.config import ConfigError
from aelab.data.base import DataConfig, load_data
from aelab.data.text import BOS, EOS, PAD, SPECIALS, UNK, Vocab, read_sentences, token_sequences
from aelab.runs import check_vocabulary


def test_vocabulary_counts_orders_caps_and_round_trips(tmp_path):
    sents = [["b", "a", "a"], ["c", "a", "b"], ["d"]]
    v = Vocab.build(sents)
    assert v.tokens == [*SPECIALS, "a", "b", "c", "d"]  # by count, ties alphabetical
    assert Vocab.build(sents, min_count=2).tokens == [*SPECIALS, "a", "b"]
    assert Vocab.build(sents, max_size=6).tokens == [*SPECIALS, "a", "b"]
    assert v.encode(["a", "zebra", "<eos>"]) == [4, UNK, EOS]
    assert v.decode([BOS, 4, 5, PAD, EOS, 6]) == "a b"
    v.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == v
    (tmp_path / "bad.json").write_text('{"words": []}')
    with pytest.raises(ValueError, match="bad.json: not an aelab vocabulary"):
        Vocab.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="starts with"):
        Vocab(["a", "b", "c", "d"])


def test_bad_files_are_named_and_overlong_sentences_counted(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("")
    with pytest.raises(ValueError, match="c.txt: the file is empty"):
        read_sentences(f)
    f.write_bytes("good line\nbad \xff byte\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"c.txt, line 2: not UTF-8"):
        read_sentences(f)
    f.write_text("a b c d e\n\nx y\n" + "w " * 10 + "\n")
    c = read_sentences(f, max_len=4)
    assert c.sentences == [["a", "b", "c", "d"], ["x", "y"], ["w"] * 4] and (c.truncated, c.blank) == (2, 1)
    c = read_sentences(f, max_len=4, overlong="drop")
    assert c.sentences == [["x", "y"]] and c.dropped == 2
    f.write_text("a b c\n")
    with pytest.raises(ValueError, match="no sentence left"):
        read_sentences(f, max_len=2, overlong="drop")
    with pytest.raises(FileNotFoundError, match="no such text file"):
        read_sentences(tmp_path / "nope.txt")


def test_batches_are_padded_to_their_longest_sentence_with_masks():
    v = Vocab.build([["a", "b", "c"]])
    s = token_sequences([["a"], ["a", "b", "c"], ["c", "b"]], v)
    b = s.get_batch(torch.tensor([0, 2]))
    assert b.x.tolist() == [[4, EOS, PAD], [6, 5, EOS]] and b.lengths.tolist() == [2, 3]
    assert b.mask.tolist() == [[True, True, False], [True, True, True]]
    assert (b.x[~b.mask] == PAD).all()
    sub = s.subset(torch.tensor([1]))
    assert sub.get_batch(torch.tensor([0])).x.tolist() == [[4, 5, 6, EOS]]


def test_length_buckets_are_a_pure_permutation_with_little_padding():
    g = torch.Generator().manual_seed(0)
    v = Vocab.build([["w"]])
    sents = [["w"] * int(n) for n in torch.randint(1, 40, (1000,), generator=g)]
    s = token_sequences(sents, v)
    order = s.order(seed=3, epoch=2, batch_size=32)
    assert sorted(order.tolist()) == list(range(1000))
    assert torch.equal(order, s.order(seed=3, epoch=2, batch_size=32))  # replayed on resume
    assert not torch.equal(order, s.order(seed=3, epoch=3, batch_size=32))

    def padding(o: torch.Tensor) -> float:
        batches = [s.lengths[o[i : i + 32]] for i in range(0, 992, 32)]
        return sum(float(b.max() * len(b) - b.sum()) for b in batches) / sum(float(b.max() * len(b)) for b in batches)

    assert padding(order) < 0.1 < 0.3 < padding(torch.randperm(1000, generator=g))
    assert len(order[992:]) == 8  # the short batch stays last


def test_fortunes_and_a_user_corpus_load(shared_data, tmp_path):
    splits = load_data(DataConfig(name="fortunes", root=str(shared_data)))
    assert (len(splits.train), len(splits.test)) == (23_092, 2_565) and splits.info.notes == ()
    v = splits.info.vocab
    b = splits.train.get_batch(torch.arange(3))
    assert v.decode(b.x[0]).startswith("if you contribute 50 or more")
    assert (b.x.gather(1, b.lengths.unsqueeze(1) - 1) == EOS).all()
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("the cat sat\nthe dog <unk> ran far away today\n")
    test.write_text("a cat\n")
    user = load_data(DataConfig(name="text", train=str(train), test=str(test), max_len=4))
    assert len(user.info.vocab) == 4 + 5 and "1 sentences longer than data.max_len=4 truncated" in user.info.notes[0]
    assert user.info.vocab.decode(user.test.get_batch(torch.tensor([0])).x[0]) == "<unk> cat"
    with pytest.raises(ConfigError, match="needs data.train=FILE and data.test=FILE"):
        load_data(DataConfig(name="text", train=str(train)))
    with pytest.raises(ConfigError, match="data.overlong"):
        DataConfig(name="text", overlong="wrap")
    valid = tmp_path / "valid.txt"
    valid.write_text("the dog\n")
    with_valid = load_data(DataConfig(name="text", train=str(train), test=str(test), valid=str(valid)))
    assert with_valid.info.vocab.decode(with_valid.valid.get_batch(torch.tensor([0])).x[0]) == "the dog"
    assert user.valid is None
    with pytest.raises(ConfigError, match="data set 'fortunes' has no validation file"):
        DataConfig(name="fortunes", valid=str(valid))


def test_a_run_keeps_its_vocabulary_and_refuses_another(tmp_path):
    v = Vocab.build([["a", "b"]])
    check_vocabulary(tmp_path, v, save=True)
    check_vocabulary(tmp_path, Vocab.build([["b", "a"]]), save=False)  # same tokens, same ids
    with pytest.raises(ConfigError, match=r"another vocabulary .* first difference at id 5: 'b' in the run, 'c' now"):
        check_vocabulary(tmp_path, Vocab.build([["a", "c"]]), save=False)
