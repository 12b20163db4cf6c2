"""NeMo ASR `.nemo` interchange without NeMo (tests/parity checks NeMo itself restores and agrees): what
`nest-ssl export-asr` writes (NeMo's layout, config keys and tokenizer artifacts), our own reading of it back
(decode, transcribe, finetune --init-from), and the one-line refusals of what cannot be loaded."""

import io
import re
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from asr_corpus import TINY, make_asr_corpus  # noqa: E402

NEMO_MODELS = "nemo.collections.asr.models"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """2-step `nest-ssl finetune` runs (in-process, seconds), SentencePiece and characters."""
    from nest_ssl.cli import main

    root = tmp_path_factory.mktemp("asr_nemo_io")
    corpus = make_asr_corpus(root / "corpus")
    out = {}
    for kind in ("bpe", "char"):
        extra = ["--vocab-size", "20"] if kind == "bpe" else []
        assert main(["finetune", "--train-manifest", str(corpus["train"]), "--out-dir", str(root / kind),
                     "--tokenizer-type", kind, *extra, "--steps", "2", "--save-every", "1", *TINY]) == 0
        out[kind] = root / kind
    return corpus, out


def members(path):
    with tarfile.open(path, "r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def rewrite(src, dst, config=None, weights=None, drop=()):
    """A copy of a .nemo with its config (and weights) changed by the given functions, members dropped."""
    files = members(src)
    if config is not None:
        cfg = yaml.safe_load(files["./model_config.yaml"])
        config(cfg)
        files["./model_config.yaml"] = yaml.safe_dump(cfg, allow_unicode=True).encode()
    if weights is not None:
        sd = torch.load(io.BytesIO(files["./model_weights.ckpt"]), weights_only=True)
        weights(sd)
        buf = io.BytesIO()
        torch.save(sd, buf)
        files["./model_weights.ckpt"] = buf.getvalue()
    with tarfile.open(dst, "w:") as tar:
        for name, blob in files.items():
            if any(name.endswith(d) for d in drop):
                continue
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return dst


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    from nest_ssl.cli import main

    _, run = runs
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for kind in ("bpe", "char"):
        out[kind] = root / f"{kind}.nemo"
        assert main(["export-asr", str(run[kind]), str(out[kind]), "--avg", "2"]) == 0
    return out


def test_bpe_export_is_nemo_layout_with_the_tokenizer_inside(runs, exported):
    from nest_ssl.asr.average import average_state_dicts
    from nest_ssl.checkpoint import load_checkpoint

    _, run = runs
    files = members(exported["bpe"])
    cfg = yaml.safe_load(files["./model_config.yaml"])
    assert cfg["target"] == f"{NEMO_MODELS}.ctc_bpe_models.EncDecCTCModelBPE" and cfg["nemo_version"] == "2.7.3"
    # the tokenizer: three nemo: artifacts beside the config, byte for byte the run's files
    tok = cfg["tokenizer"]
    assert tok["type"] == "bpe"
    for key, base in (("model_path", "tokenizer.model"), ("vocab_path", "vocab.txt"),
                      ("spe_tokenizer_vocab", "tokenizer.vocab")):
        assert re.fullmatch(rf"nemo:[0-9a-f]{{32}}_{re.escape(base)}", tok[key]), tok[key]
        assert files["./" + tok[key][5:]] == (run["bpe"] / "tokenizer" / base).read_bytes()
    assert len(files) == 5
    # NeMo's sections and _target_s; data stubs without data
    for section in ("train_ds", "validation_ds", "test_ds"):
        assert cfg[section]["manifest_filepath"] is None and cfg[section]["sample_rate"] == 16000
    assert cfg["validation_ds"]["use_start_end_token"] is False
    assert cfg["preprocessor"]["_target_"] == "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor"
    assert cfg["spec_augment"]["_target_"] == "nemo.collections.asr.modules.SpectrogramAugmentation"
    assert cfg["encoder"]["_target_"] == "nemo.collections.asr.modules.ConformerEncoder"
    assert "activation_checkpointing" not in cfg["encoder"]
    assert cfg["encoder"]["n_layers"] == 1 and cfg["encoder"]["d_model"] == 48
    pieces = [line.split("\t")[0] for line in (run["bpe"] / "tokenizer" / "tokenizer.vocab").read_text().splitlines()]
    assert cfg["decoder"] == {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 48,
                              "num_classes": 20, "vocabulary": pieces}
    assert {"optim", "interctc", "ctc_reduction"} <= set(cfg)
    # the weights: NeMo's keys, the mean of the last two checkpoints (--avg 2)
    sd = torch.load(io.BytesIO(files["./model_weights.ckpt"]), weights_only=True)
    mean = average_state_dicts([load_checkpoint(run["bpe"] / f"step-{s}.ckpt")["state_dict"] for s in (1, 2)])
    assert sd.keys() == mean.keys() and all(torch.equal(sd[k], mean[k]) for k in sd)
    assert sd["decoder.decoder_layers.0.weight"].shape == (21, 48, 1)


def test_char_export_is_an_encdecctcmodel_with_labels(runs, exported):
    _, run = runs
    files = members(exported["char"])
    assert set(files) == {"./model_config.yaml", "./model_weights.ckpt"}
    cfg = yaml.safe_load(files["./model_config.yaml"])
    chars = (run["char"] / "tokenizer" / "vocab.txt").read_text().split("\n")[:-1]
    assert cfg["target"] == f"{NEMO_MODELS}.ctc_models.EncDecCTCModel" and "tokenizer" not in cfg
    assert " " in chars and cfg["decoder"]["vocabulary"] == chars == cfg["labels"] == cfg["train_ds"]["labels"]
    assert cfg["decoder"]["num_classes"] == len(chars)


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_an_export_reads_back_into_ours_with_the_same_outputs(kind, runs, exported, tmp_path, capsys):
    from nest_ssl.asr.model_io import load_asr
    from nest_ssl.cli import main

    corpus, run = runs
    a, tok_a, _ = load_asr(run[kind], avg=2)
    b, tok_b, paths = load_asr(exported[kind])
    assert paths == [exported[kind]] and tok_b.kind == kind and tok_a.tokens() == tok_b.tokens()
    g = torch.Generator().manual_seed(0)
    x, lengths = torch.randn(2, 24000, generator=g) * 0.1, torch.tensor([24000, 17000])
    with torch.no_grad():
        assert torch.equal(a(x, lengths)[0], b(x, lengths)[0])
    # decode and transcribe take the .nemo where they take a run folder
    wavs = sorted((corpus["test"].parent / "test").glob("*.wav"))[:2]
    assert main(["transcribe", str(run[kind]), "--avg", "2", *map(str, wavs)]) == 0
    from_run = capsys.readouterr().out
    assert main(["transcribe", str(exported[kind]), *map(str, wavs)]) == 0
    assert capsys.readouterr().out == from_run and from_run.count("\n") == 2
    assert main(["decode", "--model", str(exported[kind]), "--test", f"t={corpus['test']}", "--out-dir",
                 str(tmp_path / "d")]) == 0
    assert f"model: {exported[kind]}" in capsys.readouterr().out
    assert (tmp_path / "d" / "wer-summary-t-greedy.txt").is_file()
    # a hand-written config with NeMo's interpolations reads the same
    def interpolate(cfg):
        cfg["preprocessor"]["sample_rate"] = "${model.sample_rate}"
        cfg["encoder"]["feat_in"] = "${preprocessor.features}"
    c, _, _ = load_asr(rewrite(exported[kind], tmp_path / "interpolated.nemo", config=interpolate))
    assert c.cfg["preprocessor"]["sample_rate"] == 16000 and c.cfg["encoder"]["feat_in"] == 40
    with torch.no_grad():
        assert torch.equal(a(x, lengths)[0], c(x, lengths)[0])


def test_finetune_init_from_a_ctc_nemo_continues_its_head_only_with_its_tokenizer(runs, exported, tmp_path):
    from nest_ssl.asr.finetune import FinetuneOptions, prepare
    from nest_ssl.asr.model_io import load_asr

    corpus, _ = runs
    source, _, _ = load_asr(exported["bpe"])
    same = FinetuneOptions(train_manifest=corpus["train"], out_dir=tmp_path / "a", init_from=exported["bpe"],
                           tokenizer_dir=exported["bpe"])
    model, tok, report, _, _ = prepare(same)
    assert re.fullmatch(rf"initialised (\d+) of \1 encoder tensors \(and 2 preprocessor buffers\) from "
                        rf"{re.escape(str(exported['bpe']))}; and its CTC head \(21 classes, the tokenizer being the "
                        r"same\)", report.line()), report.line()
    theirs = source.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    # another tokenizer (characters trained from the transcripts): the encoder only, the head at random
    other = FinetuneOptions(train_manifest=corpus["train"], out_dir=tmp_path / "b", init_from=exported["bpe"],
                            tokenizer_type="char")
    model, tok, report, _, _ = prepare(other)
    assert report.line().endswith("the CTC head starts at random: the run's tokenizer is not the checkpoint's "
                                  "(pass --tokenizer with the .nemo itself to continue its head)"), report.line()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items() if k.startswith("encoder."))
    assert model.decoder.decoder_layers[0].weight.shape[0] == tok.vocab_size + 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _one_line_exit_2(code, err, *needles):
    errors = [line for line in err.strip().splitlines() if line.startswith("nest-ssl: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_what_cannot_be_loaded_is_one_line_naming_the_key(runs, exported, tmp_path, capsys):
    from evaluate_corpus import tiny_checkpoint
    from nest_ssl.cli import main

    corpus, run = runs
    wav = str(sorted((corpus["test"].parent / "test").glob("*.wav"))[0])

    def transcribe(path, *needles):
        code = main(["transcribe", str(path), wav])
        return _one_line_exit_2(code, capsys.readouterr().err, str(path), *needles)

    bpe = exported["bpe"]
    citrinet = rewrite(bpe, tmp_path / "citrinet.nemo", config=lambda c: c["encoder"].update(
        _target_="nemo.collections.asr.modules.ConvASREncoder"))
    transcribe(citrinet, "encoder._target_ is nemo.collections.asr.modules.ConvASREncoder", "ConformerEncoder")
    rnnt = rewrite(bpe, tmp_path / "rnnt.nemo", config=lambda c: c.update(
        target=f"{NEMO_MODELS}.rnnt_bpe_models.EncDecRNNTBPEModel"))
    transcribe(rnnt, "decoder._target_ is 'nemo.collections.asr.modules.ConvASRDecoder'", "RNNTDecoder")
    wpe = rewrite(bpe, tmp_path / "wpe.nemo", config=lambda c: c["tokenizer"].update(type="wpe"))
    transcribe(wpe, "tokenizer.type is 'wpe'")
    no_blank = rewrite(bpe, tmp_path / "noblank.nemo", config=lambda c: c["decoder"].update(add_blank=False))
    transcribe(no_blank, "decoder.add_blank is False")
    abs_pos = rewrite(bpe, tmp_path / "abs.nemo", config=lambda c: c["encoder"].update(self_attention_model="abs_pos"))
    transcribe(abs_pos, "self_attention_model='abs_pos' is not implemented")
    adapter = rewrite(bpe, tmp_path / "adapter.nemo", weights=lambda sd: sd.update(
        {"encoder.layers.0.adapter_layer.a.weight": torch.zeros(2)}))
    transcribe(adapter, "encoder.layers.0.adapter_layer.a.weight", "adapters are not implemented")
    extra = rewrite(bpe, tmp_path / "extra.nemo", weights=lambda sd: sd.update({"joint.x": torch.zeros(2)}))
    transcribe(extra, "has no place for: joint.x; a NeMo feature")
    no_tok = rewrite(bpe, tmp_path / "notok.nemo", drop=("_tokenizer.model",))
    transcribe(no_tok, "the archive has no", "_tokenizer.model")
    # a NEST .nemo (pretraining, no recognizer)
    nest = tmp_path / "nest.nemo"
    assert main(["export", str(tiny_checkpoint(tmp_path / "nest.ckpt")), str(nest)]) == 0
    capsys.readouterr()
    transcribe(nest, "EncDecDenoiseMaskedTokenPredModel", "a pretrained NEST model: fine-tune it with --init-from")
    # --init-from and --tokenizer name the option
    code = main(["finetune", "--train-manifest", str(corpus["train"]), "--out-dir", str(tmp_path / "ft"),
                 "--init-from", str(citrinet), "--tokenizer-type", "char", *TINY])
    _one_line_exit_2(code, capsys.readouterr().err, f"--init-from {citrinet}", "encoder._target_")
    code = main(["finetune", "--train-manifest", str(corpus["train"]), "--out-dir", str(tmp_path / "ft"),
                 "--tokenizer", str(wpe), *TINY])
    _one_line_exit_2(code, capsys.readouterr().err, f"--tokenizer {wpe}", "tokenizer.type")
    # export-asr and decode misuse
    code = main(["decode", "--model", str(bpe), "--avg", "2", "--test", f"t={corpus['test']}", "--out-dir",
                 str(tmp_path / "d")])
    _one_line_exit_2(code, capsys.readouterr().err, "--avg 2", "is one model")
    code = main(["export-asr", str(run["bpe"]), str(tmp_path / "x.ckpt")])
    _one_line_exit_2(code, capsys.readouterr().err, "name the output *.nemo")
    code = main(["export-asr", str(tmp_path / "nest.ckpt"), str(tmp_path / "x.nemo")])
    _one_line_exit_2(code, capsys.readouterr().err, "not an ASR model of `nest-ssl finetune`")
    code = main(["export", str(run["bpe"] / "step-2.ckpt"), str(tmp_path / "y.nemo")])
    _one_line_exit_2(code, capsys.readouterr().err, "nest-ssl export-asr")
    assert not any((tmp_path / n).exists() for n in ("ft", "d", "x.ckpt", "x.nemo", "y.nemo"))
