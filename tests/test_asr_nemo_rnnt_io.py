"""NeMo RNN-T `.nemo` files read without NeMo (tests/parity/test_parity_rnnt_nemo.py reads NeMo-made ones): our own
RNN-T export read back gives the run's encoder output, joint logits and greedy / beam tokens, for a SentencePiece
tokenizer (trained here) and characters; decode, transcribe and finetune --init-from / --tokenizer take it; what
nest-ssl cannot run (hybrid RNN-T + CTC, a stateless decoder, TDT, ...) is one line and exit 2, nothing written."""

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from asr_corpus import TINY, make_asr_corpus  # noqa: E402
from test_asr_nemo_io import _one_line_exit_2, rewrite  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*_rnnt_loss has been deprecated:UserWarning")  # torchaudio 2.9

NEMO_MODELS = "nemo.collections.asr.models"
HEAD = ["model_defaults.pred_hidden=32", "model_defaults.joint_hidden=40", "decoder.prednet.dropout=0",
        "joint.jointnet.dropout=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """2-step `nest-ssl finetune --head rnnt` runs (in-process, seconds) and their `export-asr` archives."""
    from nest_ssl.cli import main

    root = tmp_path_factory.mktemp("rnnt_nemo_io")
    corpus = make_asr_corpus(root / "corpus")
    run, exported = {}, {}
    for kind in ("bpe", "char"):
        extra = ["--vocab-size", "20"] if kind == "bpe" else []
        assert main(["finetune", "--head", "rnnt", "--train-manifest", str(corpus["train"]), "--out-dir",
                     str(root / kind), "--tokenizer-type", kind, *extra, "--steps", "2", "--save-every", "1", "--lr",
                     "5e-3", *TINY, *HEAD]) == 0
        run[kind], exported[kind] = root / kind, root / f"{kind}.nemo"
        assert main(["export-asr", str(run[kind]), str(exported[kind])]) == 0
    # and a CTC one, to start an RNN-T fine-tuning from
    assert main(["finetune", "--train-manifest", str(corpus["train"]), "--out-dir", str(root / "ctc"),
                 "--tokenizer-type", "char", "--steps", "1", "--save-every", "1", *TINY]) == 0
    exported["ctc"] = root / "ctc.nemo"
    assert main(["export-asr", str(root / "ctc"), str(exported["ctc"])]) == 0
    return corpus, run, exported


def wavs_of(corpus, n=3):
    return sorted((corpus["test"].parent / "test").glob("*.wav"))[:n]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_an_rnnt_export_reads_back_with_the_same_joint_and_tokens(kind, runs, tmp_path, capsys):
    from nest_ssl.asr.model_io import load_asr
    from nest_ssl.asr.nemo_archive import nemo_head
    from nest_ssl.asr.rnnt_decoding import RNNTSearch, decode_tokens
    from nest_ssl.asr.rnnt_model import RNNTModel
    from nest_ssl.cli import main

    corpus, run, exported = runs
    assert nemo_head(exported[kind]) == "rnnt"
    a, tok_a, _ = load_asr(run[kind])
    b, tok_b, paths = load_asr(exported[kind])
    assert isinstance(b, RNNTModel) and not b.training and paths == [exported[kind]]
    assert tok_b.kind == kind and tok_b.tokens() == tok_a.tokens() and b.blank == a.blank == tok_a.vocab_size
    assert b.cfg["decoder"]["prednet"]["pred_hidden"] == 32 and b.cfg["joint"]["jointnet"]["joint_hidden"] == 40
    g = torch.Generator().manual_seed(0)
    x, lengths = torch.randn(3, 24000, generator=g) * 0.3, torch.tensor([24000, 17000, 9000])
    targets = [torch.tensor(tok_a.encode(t)) for t in ("the cat sat", "a dog", "ran")]
    with torch.no_grad():
        enc_a, len_a = a(x, lengths)
        enc_b, len_b = b(x, lengths)
        assert torch.equal(enc_a, enc_b) and torch.equal(len_a, len_b)
        assert torch.equal(a.joint_logits(enc_a, len_a, targets)[0], b.joint_logits(enc_b, len_b, targets)[0])
    for search in (RNNTSearch(), RNNTSearch(beam_size=3)):
        ids_a = decode_tokens(a.decoder, a.joint, enc_a.transpose(1, 2), len_a, search)
        ids_b = decode_tokens(b.decoder, b.joint, enc_b.transpose(1, 2), len_b, search)
        assert ids_a == ids_b
    assert any(ids_a), ids_a  # tokens come out, so that agreeing says something
    # transcribe and decode take the .nemo where they take the run folder
    wavs = wavs_of(corpus)
    capsys.readouterr()
    assert main(["transcribe", str(run[kind]), *map(str, wavs)]) == 0
    from_run = capsys.readouterr().out
    assert main(["transcribe", str(exported[kind]), *map(str, wavs)]) == 0
    assert capsys.readouterr().out == from_run and from_run.count("\n") == 3
    assert main(["decode", "--model", str(exported[kind]), "--test", f"t={corpus['test']}", "--out-dir",
                 str(tmp_path / "d"), "--rnnt-beam-size", "2"]) == 0
    assert f"model: {exported[kind]}" in capsys.readouterr().out
    assert (tmp_path / "d" / "wer-summary-t-beam.txt").is_file()


def test_finetune_init_from_an_rnnt_nemo_continues_its_head_only_when_it_fits(runs, tmp_path):
    from nest_ssl.asr.finetune import FinetuneOptions, prepare
    from nest_ssl.asr.model_io import load_asr

    corpus, _, exported = runs
    path = exported["bpe"]
    source, _, _ = load_asr(path)
    theirs = source.state_dict()
    # --head rnnt, --tokenizer the .nemo itself: every tensor, the head sizes taken from the archive
    model, tok, report, asr_cfg, _ = prepare(FinetuneOptions(
        train_manifest=corpus["train"], out_dir=tmp_path / "a", init_from=path, tokenizer_dir=path, head="rnnt"))
    n_head = sum(k.startswith(("decoder.", "joint.")) for k in theirs)
    assert re.fullmatch(rf"initialised (\d+) of \1 encoder tensors \(and 2 preprocessor buffers\) from "
                        rf"{re.escape(str(path))}; and its RNN-T head \({n_head} tensors of the prediction network "
                        r"and joint, 21 classes, the tokenizer being the same\)", report.line()), report.line()
    assert model.state_dict().keys() == theirs.keys()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    assert asr_cfg["head"] == "rnnt" and asr_cfg["decoder"]["prednet"]["pred_hidden"] == 32
    # a head override resizes the head as NeMo's yaml does (model_defaults), which then starts at random
    model, _, report, asr_cfg, _ = prepare(FinetuneOptions(
        train_manifest=corpus["train"], out_dir=tmp_path / "b", init_from=path, tokenizer_dir=path, head="rnnt",
        overrides=["model_defaults.pred_hidden=16"]))
    assert asr_cfg["joint"]["jointnet"]["pred_hidden"] == 16 == asr_cfg["decoder"]["prednet"]["pred_hidden"]
    assert report.line().endswith("the RNN-T head starts at random: it is not the checkpoint's size "
                                  "(decoder.prediction.embed.weight: (21, 32) there, (21, 16) here)"), \
        report.line()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items() if k.startswith("encoder."))
    # --init-skip naming a head tensor leaves the whole head out
    model, _, report, _, _ = prepare(FinetuneOptions(
        train_manifest=corpus["train"], out_dir=tmp_path / "e", init_from=path, tokenizer_dir=path, head="rnnt",
        init_skip=["joint.enc."]))
    assert report.line().endswith("; its RNN-T head is left out, as include/exclude or --init-skip name "
                                  "joint.enc.bias"), report.line()
    assert not torch.equal(model.state_dict()["joint.pred.weight"], theirs["joint.pred.weight"])
    # a CTC fine-tuning from the RNN-T archive: its encoder only
    model, tok, report, _, _ = prepare(FinetuneOptions(
        train_manifest=corpus["train"], out_dir=tmp_path / "c", init_from=path, tokenizer_dir=path, head="ctc"))
    assert report.line().endswith("; its RNN-T head is left out (this model's head is CTC)"), report.line()
    assert report.loaded == report.encoder_tensors > 0
    assert model.decoder.decoder_layers[0].weight.shape[0] == tok.vocab_size + 1
    # an RNN-T fine-tuning from a CTC archive: its encoder only, the RNN-T head of the yaml (and overrides)
    ctc = exported["ctc"]
    ctc_encoder = {k: v for k, v in load_asr(ctc)[0].state_dict().items() if k.startswith("encoder.")}
    model, tok, report, asr_cfg, _ = prepare(FinetuneOptions(
        train_manifest=corpus["train"], out_dir=tmp_path / "d", init_from=ctc, tokenizer_dir=ctc, head="rnnt",
        overrides=HEAD))
    assert report.line().endswith("; its CTC head is left out (this model's head is RNN-T)"), report.line()
    assert report.loaded == report.encoder_tensors == len(ctc_encoder)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ctc_encoder.items())
    assert asr_cfg["joint"]["num_classes"] == tok.vocab_size and asr_cfg["model_defaults"]["joint_hidden"] == 40
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_what_nest_ssl_cannot_run_of_an_rnnt_nemo_is_one_line(runs, tmp_path, capsys):
    from nest_ssl.cli import main

    corpus, _, exported = runs
    bpe = exported["bpe"]
    wav = str(wavs_of(corpus, 1)[0])

    def transcribe(path, *needles):
        code = main(["transcribe", str(path), wav])
        return _one_line_exit_2(code, capsys.readouterr().err, str(path), *needles)

    def hybrid(c):
        c["target"] = f"{NEMO_MODELS}.hybrid_rnnt_ctc_bpe_models.EncDecHybridRNNTCTCBPEModel"
        c["aux_ctc"] = {"ctc_loss_weight": 0.3, "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder"}}

    hybrid_path = rewrite(bpe, tmp_path / "hybrid.nemo", config=hybrid)
    transcribe(hybrid_path, "target is nemo.collections.asr.models.hybrid_rnnt_ctc_bpe_models."
               "EncDecHybridRNNTCTCBPEModel (a hybrid RNN-T + CTC model", "EncDecRNNTBPEModel")
    cases = [
        (lambda c: c.update(aux_ctc={"ctc_loss_weight": 0.3}), "aux_ctc is set: a hybrid RNN-T + CTC model"),
        (lambda c: c["decoder"].update(_target_="nemo.collections.asr.modules.StatelessTransducerDecoder"),
         "decoder._target_ is 'nemo.collections.asr.modules.StatelessTransducerDecoder'"),
        (lambda c: c["joint"].update(_target_="nemo.collections.asr.modules.SampledRNNTJoint"),
         "joint._target_ is 'nemo.collections.asr.modules.SampledRNNTJoint'"),
        (lambda c: c["joint"].update(num_extra_outputs=5), "joint.num_extra_outputs is 5: a TDT"),
        (lambda c: c["loss"].update(loss_name="tdt"), "loss.loss_name is 'tdt'"),
        (lambda c: c["decoder"].update(normalization_mode="layer"), "decoder.normalization_mode is 'layer'"),
        (lambda c: c["decoder"].update(blank_as_pad=False), "decoder.blank_as_pad is False"),
        (lambda c: c["encoder"].update(_target_="nemo.collections.asr.modules.ConvASREncoder"),
         "encoder._target_ is nemo.collections.asr.modules.ConvASREncoder"),
    ]
    for i, (edit, needle) in enumerate(cases):
        transcribe(rewrite(bpe, tmp_path / f"bad{i}.nemo", config=edit), needle)
    extra = rewrite(bpe, tmp_path / "extra.nemo", weights=lambda sd: sd.update({"joint.x": torch.zeros(2)}))
    transcribe(extra, "has no place for: joint.x")
    # decode, --tokenizer and --init-from name the option, and write nothing
    code = main(["decode", "--model", str(hybrid_path), "--test", f"t={corpus['test']}", "--out-dir",
                 str(tmp_path / "d")])
    _one_line_exit_2(code, capsys.readouterr().err, f"model {hybrid_path}", "hybrid")
    code = main(["finetune", "--head", "rnnt", "--train-manifest", str(corpus["train"]), "--out-dir",
                 str(tmp_path / "ft"), "--tokenizer", str(hybrid_path), *TINY])
    _one_line_exit_2(code, capsys.readouterr().err, f"--tokenizer {hybrid_path}", "hybrid")
    code = main(["finetune", "--head", "rnnt", "--train-manifest", str(corpus["train"]), "--out-dir",
                 str(tmp_path / "ft"), "--init-from", str(hybrid_path), "--tokenizer-type", "char", *TINY])
    _one_line_exit_2(code, capsys.readouterr().err, f"--init-from {hybrid_path}", "hybrid")
    assert not (tmp_path / "d").exists() and not (tmp_path / "ft").exists()
