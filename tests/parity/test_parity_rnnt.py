"""Parity of the RNN-T head with NeMo 2.7.3 (run: .venv-nemo/bin/python -m pytest -s tests/parity/test_parity_rnnt.py).

NeMo's RNNTDecoder and RNNTJoint are built from the sections our `asr_config(head="rnnt")` writes, their state dicts
load into ours strictly, and the outputs, NeMo's RNNTLoss, NeMo's greedy (batched and per utterance) and NeMo's
default beam search are compared with ours on the same weights and encoder outputs. NeMo is imported inside the
tests so that this file still collects (and is skipped by conftest) where NeMo is missing.
"""

import sys
from pathlib import Path

import pytest
import torch

from nest_ssl.asr.rnnt_decoder import RNNTDecoder
from nest_ssl.asr.rnnt_decoding import beam_search, greedy_batch
from nest_ssl.asr.rnnt_joint import RNNTJoint
from nest_ssl.asr.rnnt_model import reduce_losses, rnnt_sections

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rnnt_synthetic import D_ENC, SMALL, V, kwargs as _kwargs, sample, train  # noqa: E402


pytestmark = pytest.mark.filterwarnings("ignore:.*_rnnt_loss has been deprecated:UserWarning")  # torchaudio 2.9


def _pair(seed=0):
    """(NeMo's decoder, joint), (ours), NeMo's freshly initialised weights loaded into ours (strict); eval mode."""
    from nemo.collections.asr import modules

    cfg = rnnt_sections(D_ENC, [chr(97 + i) for i in range(V)], SMALL)
    torch.manual_seed(seed)
    theirs = (modules.RNNTDecoder(**_kwargs(cfg["decoder"])), modules.RNNTJoint(**_kwargs(cfg["joint"])))
    ours = (RNNTDecoder(**_kwargs(cfg["decoder"])), RNNTJoint(**_kwargs(cfg["joint"])))
    for t, o in zip(theirs, ours):
        assert list(t.state_dict()) == list(o.state_dict())
        o.load_state_dict(t.state_dict(), strict=True)
        t.eval(), o.eval()
    return theirs, ours


@pytest.fixture(scope="module")
def trained():
    """Ours trained on the synthetic transducer task (seconds), the weights loaded into NeMo's (strict)."""
    (td, tj), (od, oj) = _pair(seed=5)
    train(od, oj)
    td.load_state_dict(od.state_dict(), strict=True)
    tj.load_state_dict(oj.state_dict(), strict=True)
    return (td.eval(), tj.eval()), (od, oj)


def test_default_sections_build_nemo_modules_with_our_names_and_shapes():
    """NeMo's fast-conformer_transducer_bpe.yaml values (640/640, one layer, dropout 0.2: joint_net.2)."""
    from nemo.collections.asr import modules

    cfg = rnnt_sections(D_ENC, list("abcdefg"))
    for cls, ours, name in ((modules.RNNTDecoder, RNNTDecoder, "decoder"), (modules.RNNTJoint, RNNTJoint, "joint")):
        t, o = cls(**_kwargs(cfg[name])).state_dict(), ours(**_kwargs(cfg[name])).state_dict()
        assert {k: tuple(v.shape) for k, v in t.items()} == {k: tuple(v.shape) for k, v in o.items()}
    assert tuple(o["joint_net.2.weight"].shape) == (V + 1, 640)


def test_decoder_and_joint_outputs_match_nemo():
    (td, tj), (od, oj) = _pair()
    targets = torch.tensor([[0, 3, 6, 2], [5, 1, V, V]])
    lengths = torch.tensor([4, 2])
    with torch.no_grad():
        tg, _, ts = td(targets=targets, target_length=lengths)
        og, _, os_ = od(targets, lengths)
        torch.testing.assert_close(og, tg, atol=1e-5, rtol=0)
        for a, b in zip(os_, ts):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        f = torch.randn(2, D_ENC, 9)
        out_t, out_o = tj(encoder_outputs=f, decoder_outputs=tg), oj(f, og)  # log-softmax on the CPU, both
        torch.testing.assert_close(out_o, out_t, atol=1e-5, rtol=0)
        assert out_o.shape == (2, 9, 5, V + 1)
        tj.log_softmax = False  # NeMo's GPU setting: the logits themselves
        torch.testing.assert_close(oj.joint_logits(f.transpose(1, 2), og.transpose(1, 2)),
                                   tj.joint(f.transpose(1, 2), tg.transpose(1, 2)), atol=1e-5, rtol=0)
    print(f"\nRNN-T decoder/joint vs NeMo: max |diff| {float((out_o - out_t).abs().max()):.2e}")


@pytest.mark.parametrize("reduction", ["mean_batch", "mean_volume"])
def test_loss_and_gradient_match_nemo_rnnt_loss(reduction):
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    torch.manual_seed(1)
    logits = torch.randn(3, 10, 5, V + 1, requires_grad=True)
    targets = torch.tensor([[1, 2, 3, 4], [0, 6, 6, 0], [5, 0, 0, 0]])
    act_len, tgt_len = torch.tensor([10, 8, 6]), torch.tensor([4, 3, 1])
    theirs = RNNTLoss(num_classes=V, reduction=reduction)(log_probs=logits.log_softmax(-1), targets=targets,
                                                          input_lengths=act_len, target_lengths=tgt_len)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    from torchaudio.functional import rnnt_loss

    per = rnnt_loss(logits, targets.int(), act_len.int(), tgt_len.int(), blank=V, reduction="none")
    ours = reduce_losses(per, tgt_len, reduction)
    (g_ours,) = torch.autograd.grad(ours, logits)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=0)
    print(f"\nRNN-T loss ({reduction}) ours {ours.item():.6f} NeMo {theirs.item():.6f}")


def _tokens(hyps):
    return [[int(t) for t in h.y_sequence] for h in hyps]


def test_greedy_matches_nemo_greedy_batched_and_per_utterance(trained):
    from nemo.collections.asr.parts.submodules.rnnt_greedy_decoding import GreedyBatchedRNNTInfer, GreedyRNNTInfer

    (td, tj), (od, oj) = trained
    enc, lens, refs = sample(16, 2.5, 7)
    for max_symbols in (10, 1):
        ours = greedy_batch(od, oj, enc.transpose(1, 2), lens, max_symbols=max_symbols)
        for infer in (GreedyBatchedRNNTInfer(td, tj, blank_index=V, max_symbols_per_step=max_symbols),
                      GreedyRNNTInfer(td, tj, blank_index=V, max_symbols_per_step=max_symbols)):
            (hyps,) = infer(encoder_output=enc, encoded_lengths=lens)
            assert _tokens(hyps) == ours
    ours = greedy_batch(od, oj, enc.transpose(1, 2), lens)
    right = sum(h == r for h, r in zip(ours, refs))
    assert right >= 4  # a model that reads many of them: the comparison is not of empty or random outputs
    print(f"\nRNN-T greedy = NeMo's on 16 utterances ({right} of them right)")


@pytest.mark.parametrize("beam", [2, 4])
def test_beam_search_matches_nemo_default_beam(trained, beam):
    from nemo.collections.asr.parts.submodules.rnnt_beam_decoding import BeamRNNTInfer

    (td, tj), (od, oj) = trained
    enc, lens, refs = sample(16, 2.5, 7)
    infer = BeamRNNTInfer(td, tj, beam_size=beam, search_type="default", score_norm=True,
                          return_best_hypothesis=True)
    (hyps,) = infer(encoder_output=enc, encoded_lengths=lens)
    ours = [beam_search(od, oj, e, int(n), beam) for e, n in zip(enc.transpose(1, 2), lens)]
    assert _tokens(hyps) == ours
    greedy = greedy_batch(od, oj, enc.transpose(1, 2), lens)
    print(f"\nRNN-T beam {beam} = NeMo's on 16 utterances: {sum(h == r for h, r in zip(ours, refs))} right, "
          f"{sum(b != g for b, g in zip(ours, greedy))} differ from greedy")
