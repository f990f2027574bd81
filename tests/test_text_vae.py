"""The text models' mathematics, each against an independent computation.

Causality by autograd, teacher forcing against the sampler's own step path, padding invariance,
word dropout's rate and reach, the bag-of-words loss by hand, IWAE at k = 1 against a hand-built
ELBO, the perplexity of a uniform model, BLEU by hand, and exact resume (plain and aggressive).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import fit_until_interrupted, require_shared_data

from aelab.batch import Batch
from aelab.config import ConfigError
from aelab.data.base import DatasetInfo
from aelab.data.text import BOS, EOS, PAD, UNK, Vocab, read_sentences, token_sequences
from aelab.likelihoods import SentenceDistribution, shift_right, word_dropout
from aelab.losses.terms import BagOfWordsNLL
from aelab.metrics.likelihood import iwae_and_elbo
from aelab.metrics.text import corpus_bleu, perplexity, text_likelihood, token_accuracy
from aelab.models.text_vae import TextVAEConfig, text_from_data
from aelab.nn import sequence
from aelab.outputs import ModelOutput
from aelab.protocol import build_model
from aelab.training.trainer import Trainer, TrainerConfig

V = 23
SMALL = {"vocab_size": V, "embed_dim": 8, "hidden": 16, "max_len": 12, "cnn_preset": "small"}


def _sentences(n: int = 6, seed: int = 0) -> torch.Tensor:
    """Padded ids ``(n, T)``: 1-8 words (ids 4..V-1), ``<eos>``, then ``<pad>``."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 10, (n,), generator=g)
    lengths[0] = 9  # one sentence as long as the batch
    x = torch.randint(4, V, (n, 9), generator=g)
    x[torch.arange(n), lengths - 1] = EOS
    x[torch.arange(9).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD
    return x


def _vae(decoder: str = "lstm", **kw):
    torch.manual_seed(0)
    return build_model("text_vae", **SMALL, latent_dim=4, decoder=decoder, **kw).eval()


@pytest.mark.parametrize("decoder", ["lstm", "cnn"])
@pytest.mark.parametrize("z_mode", ["init", "concat"])
def test_the_decoder_is_causal(decoder, z_mode):
    """d log p(x_t | x_<t, z) / d input embedding at position s is zero for every s > t."""
    model = _vae(decoder, z_mode=z_mode)
    x = _sentences(2)
    seen = {}
    hook = model.decoder.embedding.register_forward_hook(
        lambda m, i, out: seen.__setitem__("e", out.detach().requires_grad_(True)) or seen["e"])
    h = model.decoder.hidden_states(shift_right(x), torch.randn(2, 4))
    hook.remove()
    log_p = torch.log_softmax(model.decoder.logits(h), -1).gather(2, x.unsqueeze(-1))[..., 0]  # (B, T)
    t_max = x.shape[1]
    for t in range(t_max):
        (grad,) = torch.autograd.grad(log_p[0, t], seen["e"], retain_graph=True)
        norms = grad[0].norm(dim=-1)  # (T,) per input position
        assert torch.all(norms[t + 1:] == 0), f"position {t} sees later inputs"
        assert norms[t] > 0 and norms[0] > 0  # it does see its own input and <bos>


@pytest.mark.parametrize("decoder", ["lstm", "cnn"])
def test_teacher_forcing_equals_the_sampler_step_path(decoder):
    model = _vae(decoder)
    x, z = _sentences(5), torch.randn(5, 4)
    p = model.decode(z)
    torch.testing.assert_close(p.log_prob(x), p.stepwise_log_prob(x), rtol=1e-5, atol=1e-4)
    lm = build_model("text_lm", **SMALL, decoder=decoder).eval()
    q = lm.decode(5)
    torch.testing.assert_close(q.log_prob(x), q.stepwise_log_prob(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("decoder", ["lstm", "cnn"])
def test_evaluation_scores_in_blocks_what_training_scores_at_once(decoder, monkeypatch):
    """Without gradients the output layer runs on blocks of rows reduced at once (logsumexp -
    target logit); with them, one cross-entropy. Both give the same log p(x|z), here over many
    blocks of 3 rows (the last one short)."""
    monkeypatch.setattr(sequence, "NLL_BLOCK", 3 * V)
    model = _vae(decoder)
    x, z = _sentences(6), torch.randn(6, 4)
    with_grad = model.decode(z).log_prob(x)
    assert with_grad.requires_grad
    with torch.no_grad():
        blocked = model.decode(z).log_prob(x)
        h = model.decoder.hidden_states(shift_right(x), z)
        mask = x.ne(PAD)
        by_hand = torch.zeros(6).index_add_(0, mask.nonzero()[:, 0], torch.log_softmax(
            model.decoder.logits(h[mask]).double(), -1).gather(1, x[mask][:, None])[:, 0].float())
    assert int(mask.sum()) % 3 != 0  # a short last block
    torch.testing.assert_close(blocked, with_grad.detach(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(blocked, by_hand, rtol=1e-6, atol=1e-5)
    # under bfloat16 autocast: the weight cast once, products in bfloat16, the reduction in float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        blocked_bf16 = model.decode(z).log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        at_once_bf16 = model.decode(z).log_prob(x)
    assert blocked_bf16.dtype == torch.float32 and not torch.equal(blocked_bf16, blocked)
    torch.testing.assert_close(blocked_bf16, at_once_bf16.detach(), rtol=0, atol=0.05)
    torch.testing.assert_close(blocked_bf16, by_hand, rtol=0, atol=0.1)


def test_greedy_sampling_picks_the_argmax_of_the_conditionals():
    """A greedy sample is a fixed point: its own step-path log-probability is the sum of maxima."""
    model = _vae()
    z = torch.randn(3, 4)
    p = model.decode(z)
    s = p.sample(max_len=8, temperature=0)
    again = p.sample(max_len=8, temperature=0)
    assert torch.equal(s, again)
    # the teacher-forced argmax at each real position reproduces the sample
    h = model.decoder.hidden_states(shift_right(s), z)
    pred = model.decoder.logits(h).argmax(-1)
    mask = s.ne(PAD)
    assert torch.equal(pred[mask], s[mask])


def test_samples_are_sentences_never_bos_and_padding_only_after_eos():
    model = _vae()
    with torch.no_grad():
        model.decoder.out.bias[PAD] = model.decoder.out.bias[BOS] = 50.0  # the model would pick them
    s = model.decode(torch.randn(50, 4)).sample(max_len=10, temperature=2.0)
    assert not s.eq(BOS).any()
    ended = torch.cumsum(s.eq(EOS), 1) > 0
    after_eos = torch.cat([torch.zeros(50, 1, dtype=torch.bool), ended[:, :-1]], 1)
    assert torch.equal(s.eq(PAD), after_eos)  # padding exactly after each sentence's <eos>


@pytest.mark.parametrize("decoder", ["lstm", "cnn"])
def test_padding_never_changes_a_loss(decoder):
    model = _vae(decoder, bidirectional=True, bow_weight=1.0)
    x = _sentences(4)
    wide = torch.cat([x, torch.zeros(4, 5, dtype=torch.long)], 1)
    torch.manual_seed(3)
    a = model.loss(Batch(x))
    torch.manual_seed(3)
    b = model.loss(Batch(wide))
    torch.testing.assert_close(a.per_example, b.per_example, rtol=1e-5, atol=1e-5)
    # a short sentence scores the same alone as next to a long one (encoder features and p(x|z))
    short = x[1:2, : int(x[1].ne(PAD).sum())]
    torch.testing.assert_close(model.encode(short).mean, model.encode(x).mean[1:2], rtol=1e-5, atol=1e-6)
    z = torch.randn(1, 4)
    torch.testing.assert_close(model.decode(z).log_prob(short), model.decode(z.expand(4, 4)).log_prob(x)[1:2],
                               rtol=1e-5, atol=1e-5)


def test_word_dropout_rate_and_what_it_never_touches():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(4, 500, (400, 30), generator=g)
    x[:, 20:] = PAD
    inputs = shift_right(x)
    for rate in (0.25, 0.5):
        out = word_dropout(inputs, rate, generator=torch.Generator().manual_seed(1))
        assert torch.all(out[:, 0] == BOS) and torch.equal(out.eq(PAD), inputs.eq(PAD))
        words = inputs.ne(PAD) & inputs.ne(BOS)
        dropped = (out.eq(UNK) & words).sum() / words.sum()
        assert abs(dropped.item() - rate) < 0.01  # 7,600 words: s.d. of the rate about 0.005
        assert torch.equal(out[~out.eq(UNK)], inputs[~out.eq(UNK)])
    full = word_dropout(inputs, 1.0)
    assert torch.all(full[:, 1:20] == UNK) and torch.all(full[:, 0] == BOS)
    assert word_dropout(inputs, 0.0) is inputs
    with pytest.raises(ValueError, match="rate"):
        word_dropout(inputs, 1.5)


def test_word_dropout_only_in_training():
    model = _vae(word_dropout=0.5)
    x = _sentences(4)
    z = torch.randn(4, 4)
    model.eval()
    assert model._corrupt() is None
    model.train()
    assert model._corrupt() is not None
    clean = SentenceDistribution(model.decoder, z).log_prob(x)
    noisy = SentenceDistribution(model.decoder, z, corrupt=model._corrupt()).log_prob(x)
    assert not torch.allclose(clean, noisy)


def test_bag_of_words_loss_against_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, generator=g)
    x = torch.tensor([[4, 5, 4, EOS, PAD], [6, EOS, PAD, PAD, PAD]])
    out = ModelOutput(x=x, x_in=x, z=torch.zeros(2, 1), qz_x=None, px_z=None, aux={"bow_logits": logits})
    got = BagOfWordsNLL(ignore=(PAD, EOS))(out, None)
    p = torch.softmax(logits, -1)
    want = torch.tensor([-(2 * math.log(p[0, 4]) + math.log(p[0, 5])), -math.log(p[1, 6])])
    torch.testing.assert_close(got, want.float())


@pytest.mark.parametrize("posterior", ["gaussian", "iaf"])
def test_iwae_with_one_sample_is_the_elbo_built_by_hand(posterior):
    model = _vae(posterior=posterior, flow_hidden=8, context_dim=4)
    x = _sentences(5)
    with torch.no_grad():
        torch.manual_seed(7)
        iwae, elbo = iwae_and_elbo(model, x, 1, None)
        torch.manual_seed(7)
        q = model.encode(x, encoding=False)
        z = q.rsample((1,))[0]
        hand = model.decode(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(iwae, hand, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(iwae, elbo)
    # and the training objective estimates the same -ELBO (analytic KL; average over samples)
    if posterior == "gaussian":
        with torch.no_grad():
            torch.manual_seed(0)
            mc = -torch.stack([iwae_and_elbo(model, x, 1, None)[0] for _ in range(400)]).mean(0)
            objective = model.loss(Batch(x)).per_example  # recon at one sample + analytic KL
            recon = torch.stack([model.decode(model.encode(x, encoding=False).rsample()).nll(x)
                                 for _ in range(400)]).mean(0)
            kl = torch.distributions.kl_divergence(model.encode(x, encoding=False), model.prior())
        torch.testing.assert_close(mc, recon + kl, rtol=0.02, atol=0.3)
        assert objective.shape == mc.shape


def test_a_uniform_language_model_has_the_vocabulary_size_as_perplexity():
    lm = build_model("text_lm", **SMALL)
    with torch.no_grad():
        lm.decoder.out.weight.zero_()
        lm.decoder.out.bias.zero_()
    sentences = [["w4", "w5"], ["w6"], ["w4", "w4", "w7", "w8"]]
    vocab = Vocab.build([[f"w{i}" for i in range(4, V)]])
    assert len(vocab) == V
    data = token_sequences(sentences, vocab)
    m = text_likelihood(lm, data, batch_size=2)
    assert m["ppl"] == pytest.approx(V, rel=1e-6)
    assert m["nll"] == pytest.approx(math.log(V) * (2 + 1 + 4 + 3) / 3, rel=1e-6)
    assert perplexity(10 * math.log(7), 10) == pytest.approx(7)


def test_bleu_and_token_accuracy_by_hand():
    hyp, ref = ["a", "b", "c", "d", "e"], ["a", "b", "c", "x", "e"]
    # 1-grams 4/5, 2-grams 2/4, 3-grams 1/3, 4-grams 0/2 -> 0 without smoothing; up to 3-grams:
    want = (4 / 5 * 2 / 4 * 1 / 3) ** (1 / 3)
    assert corpus_bleu([hyp], [ref], max_n=3) == pytest.approx(want)
    assert corpus_bleu([hyp], [ref]) == 0.0
    # brevity: a hypothesis of 2 words for a 4-word reference is scaled by exp(1 - 4/2)
    assert corpus_bleu([["a", "b"]], [["a", "b", "c", "d"]], max_n=1) == pytest.approx(math.exp(-1))
    acc = token_accuracy(torch.tensor([[5, 6, 7, EOS]]), torch.tensor([[5, 9, 7, EOS, PAD]]))
    assert acc == {"token_accuracy": 0.75, "tokens": 4.0}


# --- training: exact resume, aggressive training ------------------------------------------------
@pytest.fixture(scope="module")
def fortunes_small():
    root = require_shared_data()
    sentences = read_sentences(root / "fortunes-train.txt").sentences[:240]
    vocab = Vocab.build(sentences, min_count=2)
    return token_sequences(sentences[:200], vocab), token_sequences(sentences[200:], vocab), len(vocab)


def _trainer(data, run_dir, **model_kw):
    train, test, v = data
    torch.manual_seed(0)
    model = build_model("text_vae", vocab_size=v, embed_dim=16, hidden=32, latent_dim=4, word_dropout=0.3,
                        beta="linear(0, 1, 20)", **model_kw)
    cfg = TrainerConfig(epochs=2, batch_size=32, lr=3e-3, seed=5, progress=False, iwae_k=2, iwae_limit=20,
                        eval_limit=20, checkpoint_every=3)
    return Trainer(model, train, test, cfg, run_dir=run_dir)


@pytest.mark.parametrize("aggressive", [False, True])
def test_text_vae_resumes_bit_identically(fortunes_small, tmp_path, aggressive):
    kw = {"aggressive": True, "aggressive_inner": 4, "aggressive_patience": 2, "aggressive_check": 3} \
        if aggressive else {}
    straight = _trainer(fortunes_small, tmp_path / "a", **kw)
    straight.fit()
    first = _trainer(fortunes_small, tmp_path / "b", **kw)
    fit_until_interrupted(first, 11)  # 7 steps an epoch: the last checkpoint is the periodic one at 9
    resumed = _trainer(fortunes_small, tmp_path / "b", **kw)
    resumed.fit(resume=True)
    assert resumed.resumed_from == 9
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        [k for k in a if not torch.equal(a[k], b[k])]


def test_aggressive_training_updates_the_encoder_ahead_then_stops(fortunes_small, tmp_path):
    t = _trainer(fortunes_small, tmp_path, aggressive=True, aggressive_inner=6, aggressive_patience=3,
                 aggressive_check=2)
    model = t.model
    assert model.capabilities.own_step and set(t.optimizers) == {"encoder", "decoder"}
    enc = {id(p) for p in t.optimizers["encoder"].param_groups[0]["params"]}
    assert enc == {id(p) for p in [*model.encoder.parameters(), *model.head.parameters()]}
    t.cfg.epochs = 1
    t.total_steps = 4
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logs = t._train_step(t.train_data.get_batch(torch.arange(32)))
    assert logs["aggressive"] == 1.0 and 3 <= logs["inner_steps"] <= 6
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoder.") for k in changed)
    # the extra batches are a pure function of (seed, step, i)
    assert torch.equal(t._draw(1).x, t._draw(1).x) and not torch.equal(t._draw(1).x, t._draw(2).x)
    # MI windows of 2 steps: once a window's mean MI falls below the previous one, it is off for good
    model.mi_window.copy_(torch.tensor([0.0, 1.0, math.inf], dtype=torch.float64))
    t._train_step(t.train_data.get_batch(torch.arange(32, 64)))
    assert not bool(model.aggressive_on)
    logs = t._train_step(t.train_data.get_batch(torch.arange(64, 96)))
    assert logs["aggressive"] == 0.0 and logs["inner_steps"] == 0.0


def test_text_models_refuse_image_data_and_bad_settings():
    with pytest.raises(ConfigError, match="needs a text data set"):
        text_from_data(TextVAEConfig(), DatasetInfo(name="mnist", shape=(1, 28, 28)))
    with pytest.raises(ConfigError, match="model.word_dropout"):
        TextVAEConfig(word_dropout=1.5)
    with pytest.raises(ConfigError, match="model.decoder"):
        TextVAEConfig(decoder="gru")
    with pytest.raises(ConfigError, match="use 'total'"):
        TextVAEConfig(posterior="iaf", free_bits=1.0)


def test_under_bfloat16_autocast_the_posterior_and_kl_stay_float32():
    model = _vae()
    model.train()
    x = _sentences(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        lo = model.loss(Batch(x))
    assert out.z.dtype == torch.float32 and out.qz_x.mean.dtype == torch.float32
    with torch.no_grad():
        fp32 = torch.distributions.kl_divergence(model.encode(x, encoding=False), model.prior())
    assert torch.isfinite(lo.loss) and lo.terms["kl"].item() == pytest.approx(fp32.mean().item(), rel=0.05)
    assert (fp32 >= 0).all()
