"""RNN-T recognizers across NeMo 2.7.3 both ways (run: .venv-nemo/bin/python -m pytest -s this file).

Ours -> NeMo: a model fine-tuned by `nest-ssl finetune --head rnnt` (70 steps on the tone corpus of
tests/asr_corpus.py: partly right transcripts, so the text is varied) is exported by `nest-ssl export-asr` and
restored by NeMo's ASRModel.restore_from (strict): EncDecRNNTBPEModel for a SentencePiece tokenizer,
EncDecRNNTModel for characters. NeMo's eval-mode encoder output and joint log-probabilities equal ours (to 1e-4),
its transcribe() (greedy_batch) gives our greedy text, and with its decoding strategy switched to `beam` our beam
text.

NeMo -> ours: EncDecRNNTBPEModel (tokenizer trained by NeMo's create_spt_model) and EncDecRNNTModel built by NeMo from
a config dict (NeMo's transducer yaml keys, `${model_defaults.*}` interpolations), trained 150 steps by NeMo's own
forward and RNN-T loss, save_to: `nest-ssl transcribe X.nemo` (greedy) prints NeMo's transcribe() text, our joint
log-probabilities are NeMo's (to 1e-4), and `finetune --head rnnt --init-from X.nemo --tokenizer X.nemo` starts from
every one of its tensors.
"""

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "parity"))
from asr_corpus import TINY, make_asr_corpus  # noqa: E402
from nemo_asr import batch_of, cli_transcribe, nemo_base_config, norm, padded_targets, quiet_nemo  # noqa: E402

HEAD = ["model_defaults.pred_hidden=32", "model_defaults.joint_hidden=64", "decoder.prednet.dropout=0",
        "joint.jointnet.dropout=0"]
pytestmark = pytest.mark.filterwarnings("ignore:.*_rnnt_loss has been deprecated:UserWarning")  # torchaudio 2.9


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_asr_corpus(tmp_path_factory.mktemp("rnnt_nemo") / "corpus")


def wav_files(corpus):
    root = Path(corpus["test"]).parent
    return sorted(root.joinpath("test").glob("*.wav")) + sorted(root.joinpath("train").glob("*.wav"))


def assert_same_joint_log_probs(ours, nemo, tok, wavs, label):
    """The encoder outputs (to 1e-4) and then the joint's log-probabilities over three transcripts agree (to 1e-4)."""
    batch, lengths = batch_of(wavs)
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
    print(f"\n[parity] {label}: joint log-probs {tuple(theirs.shape)}, max |ours - NeMo| = {diff:.3e}")
    torch.testing.assert_close(logits.log_softmax(-1), theirs, rtol=0, atol=1e-4)


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
    from nemo.collections.asr.models import ASRModel

    from nest_ssl.asr.model_io import load_asr
    from nest_ssl.asr.rnnt_decoding import RNNTSearch
    from nest_ssl.asr.transcribe import transcribe

    quiet_nemo()
    kind, cls, run, path = exported
    ours, tok, _ = load_asr(run)
    nemo = ASRModel.restore_from(str(path), map_location="cpu").eval()  # strict; no network
    assert type(nemo).__name__ == cls
    wavs = wav_files(corpus)

    assert_same_joint_log_probs(ours, nemo, tok, wavs[:3], f"RNN-T export {kind}")

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


# --------------------------------------------------------------------------------------------------------------
# NeMo -> ours


def nemo_rnnt_config(tmp_path, kind):
    """A small Conformer transducer as a NeMo user would configure it (fast-conformer_transducer_bpe.yaml's keys)."""
    cfg = nemo_base_config(tmp_path, kind)
    cfg.update({
        "model_defaults": {"enc_hidden": 64, "pred_hidden": 32, "joint_hidden": 64},
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
                    "random_state_sampling": False, "blank_as_pad": True,
                    "prednet": {"pred_hidden": "${model_defaults.pred_hidden}", "pred_rnn_layers": 1,
                                "t_max": None, "dropout": 0.0}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None,
                  "preserve_memory": False, "fuse_loss_wer": False, "fused_batch_size": 4,
                  "jointnet": {"joint_hidden": "${model_defaults.joint_hidden}", "activation": "relu",
                               "dropout": 0.0, "encoder_hidden": "${model_defaults.enc_hidden}",
                               "pred_hidden": "${model_defaults.pred_hidden}"}},
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
        "loss": {"loss_name": "default"},
    })
    if kind == "char":
        labels = cfg["labels"]
        cfg["decoder"]["vocab_size"] = len(labels)
        cfg["joint"]["num_classes"] = len(labels)
        cfg["joint"]["vocabulary"] = labels
    return cfg


@pytest.fixture(scope="module", params=[("bpe", "EncDecRNNTBPEModel"), ("char", "EncDecRNNTModel")])
def nemo_made(request, corpus, tmp_path_factory):
    """(kind, NeMo's model in eval mode, its save_to archive): trained by NeMo's own forward, decoder, joint and
    RNN-T loss for 150 steps on the training utterances, so that its greedy transcripts vary."""
    import json

    from omegaconf import OmegaConf

    from nemo.collections.asr import models

    quiet_nemo()
    kind, cls = request.param
    tmp = tmp_path_factory.mktemp(f"nemo_rnnt_{kind}")
    torch.manual_seed(5)
    model = getattr(models, cls)(cfg=OmegaConf.create(nemo_rnnt_config(tmp, kind)))
    items = [json.loads(line) for line in Path(corpus["train"]).read_text().splitlines()]
    batch, lengths = batch_of([i["audio_filepath"] for i in items])
    if kind == "bpe":
        targets = [model.tokenizer.text_to_ids(i["text"]) for i in items]
    else:
        targets = [[model.joint.vocabulary.index(c) for c in i["text"]] for i in items]
    padded, target_len = padded_targets(targets)
    optim = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    masking, model.spec_augmentation = model.spec_augmentation, None  # too strong for 150 steps on 8 utterances
    for _ in range(150):  # NeMo's training_step without a trainer: encoder, prediction network, joint, loss
        encoded, encoded_len = model(input_signal=batch, input_signal_length=lengths)
        g, g_len, _ = model.decoder(targets=padded, target_length=target_len)
        joint = model.joint(encoder_outputs=encoded, decoder_outputs=g)
        loss = model.loss(log_probs=joint, targets=padded, input_lengths=encoded_len, target_lengths=g_len)
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.spec_augmentation = masking
    model.eval()
    path = tmp / f"nemo_rnnt_{kind}.nemo"
    model.save_to(str(path))
    return kind, model, path


def test_ours_transcribes_a_nemo_made_rnnt_model_as_nemo_does(nemo_made, corpus):
    from nest_ssl.asr.model_io import load_asr
    from nest_ssl.asr.rnnt_model import RNNTModel

    kind, nemo, path = nemo_made
    ours, tok, _ = load_asr(path)
    assert isinstance(ours, RNNTModel) and tok.kind == kind
    assert ours.blank == nemo.decoder.blank_idx == tok.vocab_size  # the blank last on both sides
    wavs = wav_files(corpus)

    assert_same_joint_log_probs(ours, nemo, tok, wavs[:3], f"NeMo-made RNN-T {kind}")

    greedy_nemo = [norm(h.text) for h in nemo.transcribe([str(w) for w in wavs], batch_size=4, verbose=False)]
    mine = cli_transcribe(path, wavs)
    print(f"[parity] NeMo-made RNN-T {kind} greedy: NeMo transcribe {greedy_nemo}; `nest-ssl transcribe` {mine}")
    assert len(set(mine)) > 1 and any(mine), mine  # varied text, so that agreeing says something
    assert mine == greedy_nemo


def test_finetune_starts_from_a_nemo_made_rnnt_model_and_its_head(nemo_made, corpus, tmp_path):
    from nest_ssl.asr.finetune import FinetuneOptions, prepare

    kind, nemo, path = nemo_made
    opts = FinetuneOptions(train_manifest=Path(corpus["train"]), out_dir=tmp_path / "ft", init_from=path,
                           tokenizer_dir=path, tokenizer_type=kind, head="rnnt")
    model, tok, report, _, _ = prepare(opts)
    print(f"\n[parity] {report.line()}")
    assert "and its RNN-T head" in report.line(), report.line()
    assert report.loaded == report.encoder_tensors > 0
    theirs = nemo.state_dict()
    assert model.state_dict().keys() == theirs.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    assert not (tmp_path / "ft").exists()
