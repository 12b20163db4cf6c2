"""The RNN-T head: NeMo's names and shapes, the loss against torchaudio's own reductions, learning a transducer task
(tests/rnnt_synthetic.py), greedy decoding independent of the batch, beam 1 = greedy; and through `nest-ssl`
(finetune --head rnnt, decode, transcribe) on the tone corpus of tests/asr_corpus.py, with real subprocesses.
Comparisons with NeMo itself are in tests/parity/test_parity_rnnt.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from asr_corpus import SENTENCES, TINY, make_asr_corpus  # noqa: E402
from rnnt_synthetic import D_ENC, SMALL, V, kwargs, sample, train  # noqa: E402

from nest_ssl.asr.ctc_model import asr_config  # noqa: E402
from nest_ssl.asr.heads import build_asr_model  # noqa: E402
from nest_ssl.asr.rnnt_decoder import RNNTDecoder  # noqa: E402
from nest_ssl.asr.rnnt_decoding import RNNTSearch, beam_search, decode_tokens, greedy_batch  # noqa: E402
from nest_ssl.asr.rnnt_joint import RNNTJoint  # noqa: E402
from nest_ssl.asr.rnnt_model import RNNTModel, reduce_losses, rnnt_sections  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*_rnnt_loss has been deprecated:UserWarning")  # torchaudio 2.9

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
# a small head that learns the tone corpus in ~100 steps (NeMo's 640/640 with dropout 0.2 is for real data)
HEAD = ["model_defaults.pred_hidden=32", "model_defaults.joint_hidden=64", "decoder.prednet.dropout=0",
        "joint.jointnet.dropout=0"]


def _nest_tiny():
    from nest_ssl.config import load_config

    return load_config(config_name="nest_tiny").model


def test_rnnt_model_has_nemo_names_shapes_defaults_and_blank_last():
    cfg = asr_config(_nest_tiny(), "char", list("abc "), head="rnnt")
    assert "decoder" in cfg and cfg["decoder"]["_target_"] == "nemo.collections.asr.modules.RNNTDecoder"
    assert cfg["decoder"]["prednet"] == {"pred_hidden": 640, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.2}
    assert cfg["joint"]["jointnet"] == {"joint_hidden": 640, "activation": "relu", "dropout": 0.2,
                                        "encoder_hidden": 96, "pred_hidden": 640}
    assert cfg["decoding"]["greedy"]["max_symbols"] == 10 and cfg["decoding"]["beam"]["beam_size"] == 2
    assert cfg["rnnt_reduction"] == "mean_volume"
    model = build_asr_model(cfg)
    assert isinstance(model, RNNTModel) and model.blank == 4
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(("decoder.", "joint."))}
    assert shapes == {
        "decoder.prediction.embed.weight": (5, 640),
        "decoder.prediction.dec_rnn.lstm.weight_ih_l0": (2560, 640),
        "decoder.prediction.dec_rnn.lstm.weight_hh_l0": (2560, 640),
        "decoder.prediction.dec_rnn.lstm.bias_ih_l0": (2560,),
        "decoder.prediction.dec_rnn.lstm.bias_hh_l0": (2560,),
        "joint.pred.weight": (640, 640), "joint.pred.bias": (640,),
        "joint.enc.weight": (640, 96), "joint.enc.bias": (640,),
        "joint.joint_net.2.weight": (5, 640), "joint.joint_net.2.bias": (5,),
    }
    sd = model.state_dict()
    assert not sd["decoder.prediction.embed.weight"][4].any()  # the blank embeds to zeros
    assert (sd["decoder.prediction.dec_rnn.lstm.bias_ih_l0"][640:1280] == 1).all()  # forget_gate_bias 1.0
    assert not sd["decoder.prediction.dec_rnn.lstm.bias_hh_l0"][640:1280].any()
    model.eval()
    enc, enc_len = model(torch.randn(2, 16000), torch.tensor([16000, 8000]))
    assert enc.shape[:2] == (2, 96) and enc_len.tolist()[0] > enc_len.tolist()[1]
    targets = [torch.tensor([0, 1, 2, 3]), torch.tensor([2])]
    logits, _, _ = model.joint_logits(enc, enc_len, targets)
    assert logits.shape == (2, int(enc_len.max()), 5, 5) and logits.dtype == torch.float32
    assert torch.isfinite(model.rnnt_loss(enc, enc_len, targets))
    assert len(model.decode(enc, enc_len, _CharTok())) == 2
    audio, audio_len = torch.randn(2, 16000), torch.tensor([16000, 8000])  # the fine-tuning loop's interface
    assert torch.allclose(model.loss(audio, audio_len, targets), model.rnnt_loss(*model(audio, audio_len), targets))
    assert model.greedy_texts(audio, audio_len, _CharTok()) == model.decode(*model(audio, audio_len), _CharTok())


class _CharTok:
    def decode(self, ids):
        return "".join("abc "[i] for i in ids)


def test_head_overrides_follow_model_defaults_and_unknown_keys_are_refused():
    from nest_ssl.config import ConfigError

    cfg = rnnt_sections(48, list("ab"), ["model_defaults.pred_hidden=16", "joint.jointnet.activation=tanh"])
    assert cfg["decoder"]["prednet"]["pred_hidden"] == 16 and cfg["joint"]["jointnet"]["pred_hidden"] == 16
    assert cfg["joint"]["jointnet"]["activation"] == "tanh" and cfg["joint"]["jointnet"]["encoder_hidden"] == 48
    with pytest.raises(ConfigError, match="pred_hiden"):
        rnnt_sections(48, list("ab"), ["model_defaults.pred_hiden=16"])


def test_reductions_agree_with_torchaudio_and_the_definitions():
    from torchaudio.functional import rnnt_loss

    torch.manual_seed(0)
    logits = torch.randn(3, 6, 4, V + 1)
    targets = torch.tensor([[1, 2, 3], [4, 0, 0], [5, 6, 0]], dtype=torch.int32)
    act, tl = torch.tensor([6, 5, 3], dtype=torch.int32), torch.tensor([3, 1, 2])
    per = rnnt_loss(logits, targets, act, tl.int(), blank=V, reduction="none")
    assert torch.allclose(reduce_losses(per, tl, "mean_batch"),
                          rnnt_loss(logits, targets, act, tl.int(), blank=V, reduction="mean"))
    assert torch.allclose(reduce_losses(per, tl, "sum"),
                          rnnt_loss(logits, targets, act, tl.int(), blank=V, reduction="sum"))
    assert torch.allclose(reduce_losses(per, tl, "mean_volume"), per.sum() / 6)
    assert torch.allclose(reduce_losses(per, tl, "mean"), (per / tl).mean())


@pytest.fixture(scope="module")
def trained():
    cfg = rnnt_sections(D_ENC, [chr(97 + i) for i in range(V)], SMALL)
    torch.manual_seed(0)
    dec, joint = RNNTDecoder(**kwargs(cfg["decoder"])), RNNTJoint(**kwargs(cfg["joint"]))
    losses = train(dec, joint)
    return dec, joint, losses


def test_the_loss_decreases_and_greedy_reads_the_task(trained):
    dec, joint, losses = trained
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.2 * first, (first, last)
    enc, lens, refs = sample(32, 0.5, 99)
    hyps = greedy_batch(dec, joint, enc.transpose(1, 2), lens)
    assert sum(h == r for h, r in zip(hyps, refs)) >= 16, (hyps, refs)  # 150 steps: most, not all


def test_greedy_does_not_depend_on_the_batch_and_max_symbols_caps_each_frame(trained):
    dec, joint, _ = trained
    enc, lens, _ = sample(12, 2.0, 5)
    together = greedy_batch(dec, joint, enc.transpose(1, 2), lens)
    alone = [greedy_batch(dec, joint, enc[i:i + 1, :, :int(n)].transpose(1, 2), lens[i:i + 1])[0]
             for i, n in enumerate(lens)]
    assert together == alone
    capped = greedy_batch(dec, joint, enc.transpose(1, 2), lens, max_symbols=1)
    assert all(len(h) <= int(n) for h, n in zip(capped, lens))


def test_beam_1_is_greedy_and_wider_beams_decode_the_task(trained):
    dec, joint, _ = trained
    enc, lens, refs = sample(16, 2.5, 7)
    greedy = decode_tokens(dec, joint, enc.transpose(1, 2), lens, RNNTSearch(beam_size=1))
    assert greedy == greedy_batch(dec, joint, enc.transpose(1, 2), lens)
    beam = [beam_search(dec, joint, e, int(n), 4) for e, n in zip(enc.transpose(1, 2), lens)]
    assert beam == decode_tokens(dec, joint, enc.transpose(1, 2), lens, RNNTSearch(beam_size=4))
    clean_enc, clean_lens, clean_refs = sample(16, 0.5, 8)
    for search in (RNNTSearch(beam_size=1), RNNTSearch(beam_size=4)):
        hyps = decode_tokens(dec, joint, clean_enc.transpose(1, 2), clean_lens, search)
        assert sum(h == r for h, r in zip(hyps, clean_refs)) >= 8, search


# ---- through the command line ----

def nest_ssl(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "nest_ssl.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_rnnt(tmp_path_factory):
    """A 1-step `finetune --head rnnt` run (in-process, seconds): for the checks that read a model, not its accuracy."""
    from nest_ssl.cli import main

    root = tmp_path_factory.mktemp("rnnt_quick")
    corpus = make_asr_corpus(root / "corpus")
    out = root / "run"
    assert main(["finetune", "--head", "rnnt", "--train-manifest", str(corpus["train"]), "--out-dir", str(out),
                 "--tokenizer-type", "char", "--steps", "1", "--save-every", "1", *TINY, *HEAD]) == 0
    return corpus, out


def test_rnnt_user_mistakes_give_one_line_exit_2_and_write_nothing(quick_rnnt, tmp_path, capsys):
    from nest_ssl.cli import main

    corpus, out = quick_rnnt
    assert torch.load(out / "step-1.ckpt", weights_only=False)["kind"] == "nest_ssl.asr.rnnt"
    capsys.readouterr()
    for args, needles in (
            (["decode", "--model", out, "--test", f"t={corpus['test']}", "--out-dir", tmp_path / "o1", "--lm-text",
              corpus["lm_text"]], ["--lm-text", "CTC"]),
            (["transcribe", out, corpus["test"].parent / "test" / "test-0.wav", "--lm", tmp_path / "o2.arpa"],
             ["--lm", "CTC"]),
            (["decode", "--model", out, "--test", f"t={corpus['test']}", "--out-dir", tmp_path / "o3",
              "--rnnt-beam-size", "0"], ["--rnnt-beam-size 0"]),
            (["finetune", "--head", "rnnt", "--train-manifest", corpus["train"], "--out-dir", tmp_path / "o4",
              "--tokenizer-type", "char", *TINY, "model_defaults.pred_hiden=8"], ["pred_hiden"])):
        code = main([str(a) for a in args])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("nest-ssl: error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
        assert all(n in errors[0] for n in needles), errors[0]
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
    assert not (tmp_path / "o2.arpa").exists()


def test_export_asr_writes_nemo_rnnt_model_config_and_our_weights(quick_rnnt, tmp_path, capsys):
    """The archive `export-asr` writes for a character RNN-T run (NeMo itself restores it in
    tests/parity/test_parity_rnnt_nemo.py); transcribe reads it back (tests/test_asr_nemo_rnnt_io.py: in detail)."""
    from nest_ssl.asr.model_io import load_asr
    from nest_ssl.checkpoint.nemo import read_nemo
    from nest_ssl.cli import main

    _, out = quick_rnnt
    path = tmp_path / "m.nemo"
    assert main(["export-asr", str(out), str(path)]) == 0
    cfg, state = read_nemo(path)
    ours, tok, _ = load_asr(out)
    assert cfg["target"] == "nemo.collections.asr.models.rnnt_models.EncDecRNNTModel"
    assert cfg["labels"] == cfg["joint"]["vocabulary"] == list(tok.characters)
    assert cfg["decoder"]["vocab_size"] == cfg["joint"]["num_classes"] == tok.vocab_size
    assert cfg["decoder"]["_target_"] == "nemo.collections.asr.modules.RNNTDecoder"
    assert cfg["joint"]["jointnet"]["encoder_hidden"] == cfg["model_defaults"]["enc_hidden"]
    assert cfg["decoding"]["strategy"] == "greedy_batch" and cfg["rnnt_reduction"] == "mean_volume"
    assert "tokenizer" not in cfg
    assert state.keys() == ours.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())
    wav = str(out.parent / "corpus" / "test" / "test-0.wav")
    capsys.readouterr()
    assert main(["transcribe", str(out), wav]) == 0
    from_run = capsys.readouterr().out
    assert main(["transcribe", str(path), wav]) == 0
    assert capsys.readouterr().out == from_run


def test_rnnt_resume_gives_the_same_losses(tmp_path, capsys):
    """Stopped after step 3 was logged but before its checkpoint, resumed: the log of an uninterrupted run (the
    head's dropout draws from the restored RNG)."""
    from nest_ssl.cli import main

    corpus = make_asr_corpus(tmp_path / "corpus")
    common = ["finetune", "--head", "rnnt", "--train-manifest", str(corpus["train"]), "--tokenizer-type", "char",
              "--save-every", "2", "--batch-size", "3", *TINY, "model_defaults.pred_hidden=16",
              "model_defaults.joint_hidden=16"]
    assert main([*common, "--out-dir", str(tmp_path / "whole"), "--steps", "6"]) == 0
    assert main([*common, "--out-dir", str(tmp_path / "cut"), "--steps", "3"]) == 0
    (tmp_path / "cut" / "step-3.ckpt").unlink()
    assert main([*common, "--out-dir", str(tmp_path / "cut"), "--steps", "6"]) == 0
    assert "resuming from" in capsys.readouterr().out
    whole = (tmp_path / "whole" / "log.tsv").read_text().splitlines()
    assert len(whole) == 7 and (tmp_path / "cut" / "log.tsv").read_text().splitlines() == whole


@pytest.mark.slow
def test_rnnt_finetune_decodes_its_utterances_exactly_greedy_and_beam(tmp_path):
    corpus = make_asr_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    p = nest_ssl("finetune", "--head", "rnnt", "--train-manifest", corpus["train"], "--dev-manifest", corpus["test"],
                 "--out-dir", out, "--tokenizer-type", "char", "--steps", 100, "--save-every", 50, "--lr", 5e-3,
                 *TINY, *HEAD)
    assert p.returncode == 0, p.stdout + p.stderr
    p = nest_ssl("decode", "--model", out, "--test", f"train={corpus['train']}", "--out-dir", tmp_path / "dec",
                 "--rnnt-beam-size", 4)
    assert p.returncode == 0, p.stdout + p.stderr
    for method in ("greedy", "beam"):
        assert f"train\t{method}\tWER 0.00\tCER 0.00\tRTF" in p.stdout, p.stdout
        recogs = (tmp_path / "dec" / f"recogs-train-{method}.txt").read_text().splitlines()
        assert [line.split("hyp=")[1] for line in recogs if "\thyp=" in line] == [str(s.split()) for s in
                                                                                   SENTENCES * 2]
    wavs = sorted((corpus["train"].parent / "train").glob("*.wav"))[:2]
    for extra in ([], ["--rnnt-beam-size", 3]):
        p = nest_ssl("transcribe", out, *wavs, *extra)
        assert p.returncode == 0, p.stderr
        assert p.stdout.splitlines() == [f"{w}\t{SENTENCES[i]}" for i, w in enumerate(wavs)]
