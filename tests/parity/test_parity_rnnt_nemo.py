"""Our RNN-T recognizer exported to NeMo 2.7.3 (run: .venv-nemo/bin/python -m pytest -s this file).

A model fine-tuned by `nest-ssl finetune --head rnnt` (70 steps on the tone corpus of tests/asr_corpus.py: partly
right transcripts, so the text is varied) is exported by `nest-ssl export-asr` and restored by NeMo's
ASRModel.restore_from (strict): EncDecRNNTBPEModel for a SentencePiece tokenizer, EncDecRNNTModel for characters.
NeMo's eval-mode encoder output and joint log-probabilities equal ours (to 1e-4), its transcribe() (greedy_batch)
gives our greedy text, and with its decoding strategy switched to `beam` our beam text.
"""

import logging
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
from asr_corpus import TINY, make_asr_corpus  # noqa: E402

HEAD = ["model_defaults.pred_hidden=32", "model_defaults.joint_hidden=64", "decoder.prednet.dropout=0",
        "joint.jointnet.dropout=0"]
pytestmark = pytest.mark.filterwarnings("ignore:.*_rnnt_loss has been deprecated:UserWarning")  # torchaudio 2.9


def norm(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_asr_corpus(tmp_path_factory.mktemp("rnnt_nemo") / "corpus")


def wav_files(corpus):
    root = Path(corpus["test"]).parent
    return sorted(root.joinpath("test").glob("*.wav")) + sorted(root.joinpath("train").glob("*.wav"))


@pytest.fixture(scope="module", params=[("bpe", "EncDecRNNTBPEModel"), ("char", "EncDecRNNTModel")])
def exported(request, corpus, tmp_path_factory):
    """(kind, NeMo class name, our run folder, the exported .nemo)."""
    from nest_ssl.cli import main

    kind, cls = request.param
    root = tmp_path_factory.mktemp(f"rnnt_{kind}")
    extra = ["--vocab-size", "20"] if kind == "bpe" else []
    assert main(["finetune", "--head", "rnnt", "--train-manifest", str(corpus["train"]), "--out-dir",
                 str(root / "run"), "--tokenizer-type", kind, *extra, "--steps", "70", "--save-every", "35", "--lr",
                 "5e-3", *TINY, *HEAD]) == 0
    assert main(["export-asr", str(root / "run"), str(root / "model.nemo")]) == 0
    return kind, cls, root / "run", root / "model.nemo"


def test_nemo_restores_our_rnnt_export_with_our_outputs_and_text(exported, corpus):
    import soundfile as sf
    from nemo.collections.asr.models import ASRModel

    from nest_ssl.asr.model_io import load_asr
    from nest_ssl.asr.rnnt_decoding import RNNTSearch
    from nest_ssl.asr.transcribe import transcribe

    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    kind, cls, run, path = exported
    ours, tok, _ = load_asr(run)
    nemo = ASRModel.restore_from(str(path), map_location="cpu").eval()  # strict; no network
    assert type(nemo).__name__ == cls
    wavs = wav_files(corpus)

    audio = [torch.from_numpy(sf.read(str(w), dtype="float32")[0]) for w in wavs[:3]]
    lengths = torch.tensor([len(a) for a in audio])
    batch = torch.zeros(3, int(lengths.max()))
    for i, a in enumerate(audio):
        batch[i, :len(a)] = a
    targets = [torch.tensor(tok.encode(t)) for t in ("the cat sat", "a dog", "ran")]
    with torch.no_grad():
        enc_o, len_o = ours(batch, lengths)
        enc_n, len_n = nemo(input_signal=batch, input_signal_length=lengths)
        assert torch.equal(len_o, len_n.to(len_o.dtype))
        torch.testing.assert_close(enc_o, enc_n, rtol=0, atol=1e-4)
        logits, padded, target_len = ours.joint_logits(enc_o, len_o, targets)
        g, _, _ = nemo.decoder(targets=padded, target_length=target_len)
        frames = int(len_n.max())  # the encoder's padded output can be longer; the joint runs on the valid frames
        theirs = nemo.joint.joint(enc_n[:, :, :frames].transpose(1, 2), g.transpose(1, 2))  # log-softmax on the CPU
    diff = (logits.log_softmax(-1) - theirs).abs().max().item()
    print(f"\n[parity] RNN-T export {kind}: joint log-probs {tuple(theirs.shape)}, max |ours - NeMo| = {diff:.3e}")
    torch.testing.assert_close(logits.log_softmax(-1), theirs, rtol=0, atol=1e-4)

    greedy_nemo = [norm(h.text) for h in nemo.transcribe([str(w) for w in wavs], batch_size=4, verbose=False)]
    greedy_ours = transcribe(ours, tok, wavs, batch_size=4).texts
    print(f"[parity] RNN-T export {kind} greedy: NeMo {greedy_nemo}; ours {greedy_ours}")
    assert len(set(greedy_ours)) > 1 and any(greedy_ours), greedy_ours  # varied text, so that agreeing says something
    assert greedy_nemo == greedy_ours

    decoding = nemo.cfg.decoding
    decoding.strategy = "beam"
    decoding.beam.beam_size = 3
    decoding.beam.return_best_hypothesis = True
    nemo.change_decoding_strategy(decoding, verbose=False)
    beam_nemo = [norm(h.text) for h in nemo.transcribe([str(w) for w in wavs], batch_size=4, verbose=False)]
    beam_ours = transcribe(ours, tok, wavs, batch_size=4, method=RNNTSearch(beam_size=3)).texts
    print(f"[parity] RNN-T export {kind} beam 3: NeMo {beam_nemo}; ours {beam_ours}")
    assert beam_nemo == beam_ours
