"""nest_ssl.asr parts in-process: tokenizers, the n-gram LM in ARPA, LM decoding against greedy, averaging, the CTC
head's NeMo names, SpecAugment, initialisation from a NEST checkpoint."""

import math
from pathlib import Path

import pytest
import torch

from nest_ssl.asr.average import average_state_dicts
from nest_ssl.asr.ctc_model import CTCModel, asr_config
from nest_ssl.asr.decode import LMDecoder, LMOptions, greedy
from nest_ssl.asr.errors import ASRError
from nest_ssl.asr.lm import BOS, arpa_logprob, estimate, read_arpa, write_arpa
from nest_ssl.asr.spec_augment import SpecAugment
from nest_ssl.asr.tokenizer import load_tokenizer, train_tokenizer

TEXTS = ["the cat sat on the mat", "a dog ran to the cat", "the mat is red", "a red dog sat"] * 4


@pytest.mark.parametrize("kind", ["bpe", "unigram", "char"])
def test_tokenizer_trains_saves_as_nemo_and_round_trips(kind, tmp_path):
    tok = train_tokenizer(TEXTS, kind, vocab_size=20)
    tok.save(tmp_path)
    assert (tmp_path / "vocab.txt").is_file()
    assert (tmp_path / "tokenizer.model").is_file() == (kind != "char")
    again = load_tokenizer(tmp_path, kind)
    for text in TEXTS[:4]:
        ids = again.encode(text)
        assert ids == tok.encode(text) and again.decode(ids) == text
        assert max(ids) < again.vocab_size
    if kind != "char":  # NeMo's vocab.txt: every piece but <unk>, `▁x` as `x`, others `##x`
        lines = (tmp_path / "vocab.txt").read_text().splitlines()
        pieces = tok.tokens()[1:]
        assert lines == [p[1:] or p if p.startswith("▁") else "##" + p for p in pieces]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_out_of_vocabulary_characters_name_the_line(kind):
    tok = train_tokenizer(TEXTS, kind, vocab_size=20)
    with pytest.raises(ASRError, match=r"^m\.json:7: the transcript 'the cat!' .*\['!'\]"):
        tok.encode("the cat!", "m.json:7")


def test_sentencepiece_vocabulary_too_large_is_a_user_error():
    with pytest.raises(ASRError, match="choose a smaller --vocab-size"):
        train_tokenizer(["ab ab"], "unigram", vocab_size=500)


def test_kneser_ney_arpa_is_normalised_and_flashlight_loads_it(tmp_path):
    model = estimate(TEXTS, order=3)
    vocab = [g[0] for g in model[1] if g[0] != BOS]
    for history in [(), (BOS,), ("the",), ("the", "cat"), (BOS, "a"), ("red", "zebra"), ("dog", "sat")]:
        total = sum(10 ** arpa_logprob(model, history, w) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-9), history
    path = write_arpa(model, tmp_path / "lm.arpa")
    back = read_arpa(path)
    assert {n: len(t) for n, t in back.items()} == {n: len(t) for n, t in model.items()}
    assert back[2][("the", "cat")][0] == pytest.approx(model[2][("the", "cat")][0], abs=1e-6)
    # a seen trigram is more likely than the same word after an unseen context
    assert arpa_logprob(back, ("the", "cat"), "sat") > arpa_logprob(back, ("red", "red"), "sat")
    tok = train_tokenizer(TEXTS, "char")
    LMDecoder(tok, LMOptions(path))  # flashlight's KenLM reads it (raises otherwise)


def _emissions(tok, frames: list[dict[str, float]]) -> torch.Tensor:
    """(T, V+1) log-probabilities: per frame, the given tokens' probabilities, the rest to the blank (last)."""
    v = tok.vocab_size
    out = torch.full((len(frames), v + 1), 1e-6)
    for t, frame in enumerate(frames):
        for c, p in frame.items():
            out[t, tok.encode(c)[0]] = p
        out[t, v] = max(1e-6, 1 - sum(frame.values()))
    return (out / out.sum(-1, keepdim=True)).log()


def test_lm_decoding_fixes_a_word_greedy_gets_wrong(tmp_path):
    text = ["the cat sat", "the cat sat on the mat", "a dog sat", "the dog ran", "a cat is red", "the sad dog"]
    tok = train_tokenizer(text, "char")
    arpa = write_arpa(estimate(text, 3), tmp_path / "lm.arpa")
    spelled = "the cat sat"
    frames = []
    for i, c in enumerate(spelled):
        if i == len(spelled) - 1:  # the last letter: 'd' narrowly beats 't'
            frames += [{"d": 0.5, "t": 0.45}, {}]
        else:
            frames += [{c: 0.95}, {}]
    lp = _emissions(tok, frames)
    blank = tok.vocab_size
    assert tok.decode(greedy(lp, len(lp), blank)) == "the cat sad"
    assert LMDecoder(tok, LMOptions(arpa, weight=1.0))(lp, len(lp)) == "the cat sat"


def test_averaging_is_the_element_wise_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
    c = {"w": torch.tensor([5.0, 1.0]), "n": torch.tensor(7)}
    avg = average_state_dicts([a, b, c])
    assert torch.equal(avg["w"], torch.tensor([3.0, 3.0])) and int(avg["n"]) == 7
    with pytest.raises(ASRError, match="different tensors"):
        average_state_dicts([a, {"v": torch.zeros(2), "n": torch.tensor(1)}])


def _tiny_cfg(**encoder):
    from nest_ssl.config import load_config

    cfg = load_config(config_name="nest_tiny").model
    for k, v in encoder.items():
        cfg.encoder[k] = v
    return asr_config(cfg, "char", list("abc "))


def test_ctc_head_has_nemo_names_and_blank_last():
    model = CTCModel(_tiny_cfg())
    sd = model.state_dict()
    assert sd["decoder.decoder_layers.0.weight"].shape == (5, 96, 1)
    assert sd["decoder.decoder_layers.0.bias"].shape == (5,)
    assert model.blank == 4
    log_probs, lengths = model.eval()(torch.randn(2, 16000), torch.tensor([16000, 8000]))
    assert log_probs.shape[-1] == 5 and torch.allclose(log_probs.exp().sum(-1), torch.ones(()), atol=1e-5)
    assert lengths.tolist()[0] > lengths.tolist()[1]


def test_spec_augment_masks_in_training_only():
    torch.manual_seed(0)
    aug = SpecAugment(freq_masks=2, time_masks=3, freq_width=10, time_width=0.1)
    x = torch.randn(2, 40, 100) + 5
    assert torch.equal(aug.eval()(x, torch.tensor([100, 60])), x)
    y = aug.train()(x, torch.tensor([100, 60]))
    masked = y == 0
    assert masked.any() and not (x == 0).any()
    # at most 3 time spans of <= 6 frames (10% of 60) in the second utterance, 2 bands of <= 10 bins in the first
    assert masked[1].all(0).sum() <= 3 * 6 and masked[0].all(1).sum() <= 2 * 10


def test_init_from_a_nest_checkpoint_is_loud_and_strict(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from evaluate_corpus import tiny_checkpoint
    from nest_ssl.asr.init import init_from_pretrained
    from nest_ssl.checkpoint import load_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "nest.ckpt")
    model = CTCModel(_tiny_cfg())
    report = init_from_pretrained(model, ckpt)
    encoder_keys = [k for k in model.state_dict() if k.startswith("encoder.")]
    assert report.loaded == report.encoder_tensors == len(encoder_keys) > 0
    assert str(ckpt) in report.line()
    theirs = load_checkpoint(ckpt)["state_dict"]
    for k in encoder_keys:
        assert torch.equal(model.state_dict()[k], theirs[k]), k
    with pytest.raises(ASRError, match=r"n_layers=2 but the model's config says n_layers=3"):
        init_from_pretrained(CTCModel(_tiny_cfg(n_layers=3)), ckpt)
    with pytest.raises(ASRError, match=r"has no tensor encoder\.layers\.2\."):
        init_from_pretrained(CTCModel(_tiny_cfg(n_layers=3)), ckpt, skip=["n_layers"])
    partial = init_from_pretrained(CTCModel(_tiny_cfg(n_layers=3)), ckpt, skip=["n_layers", "encoder.layers.2."])
    assert partial.loaded == len(encoder_keys) and partial.encoder_tensors > partial.loaded


def test_lm_decoding_with_sentencepiece_pieces(tmp_path):
    """Pieces carry their own word boundary; words spelled by several pieces come back whole."""
    text = ["the cat sat", "the cat sat on the mat", "a dog sat", "the dog ran", "a cat is red", "the sad dog"] * 3
    tok = train_tokenizer(text, "bpe", vocab_size=30)
    arpa = write_arpa(estimate(text, 3), tmp_path / "lm.arpa")
    ids = tok.encode("the cat sat on the mat")
    assert len(ids) > 6  # some words take several pieces
    v = tok.vocab_size
    lp = torch.full((2 * len(ids), v + 1), 1e-4)
    for k, i in enumerate(ids):
        lp[2 * k, i] = lp[2 * k + 1, v] = 0.9
    lp = (lp / lp.sum(-1, keepdim=True)).log()
    assert LMDecoder(tok, LMOptions(arpa))(lp, len(lp)) == "the cat sat on the mat"


def test_init_from_a_post_conv_nest_model_loads_its_subsampler(tmp_path):
    from omegaconf import OmegaConf

    from nest_ssl.asr.init import init_from_pretrained
    from nest_ssl.checkpoint import save_checkpoint
    from nest_ssl.config import load_config
    from nest_ssl.models import NESTModel

    cfg = OmegaConf.to_container(load_config(config_name="nest_tiny", overrides=["++model.mask_position=post_conv"]).model,
                                 resolve=True)
    torch.manual_seed(5)
    nest = NESTModel.from_config(cfg)
    sd = {k: v.detach().clone() for k, v in nest.state_dict().items()}
    assert any(k.startswith("encoder.pre_encode.pre_encode.") for k in sd)
    path = save_checkpoint({"state_dict": sd, "hyper_parameters": {"cfg": cfg},
                            "nest_ssl": {"kind": "test", "config": {"model": cfg}}}, tmp_path / "post.ckpt")
    model = CTCModel(_tiny_cfg())
    report = init_from_pretrained(model, path)
    assert report.loaded == report.encoder_tensors
    key = "encoder.pre_encode.conv.0.weight"
    assert torch.equal(model.state_dict()[key], sd["encoder.pre_encode.pre_encode." + key.split("pre_encode.")[1]])
