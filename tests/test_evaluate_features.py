"""Batched extraction: utterances of different lengths padded together give the hidden states (and stacked fbank)
of one utterance at a time; and `nest-ssl evaluate` puts OpenMP's passive wait policy in place before torch loads."""

import os
import subprocess
import sys

import torch

from evaluate_corpus import make_corpus, tiny_checkpoint
from nest_ssl.evaluate import features
from nest_ssl.evaluate.data import SPLITS, load_split


def test_length_batches_sort_by_length_and_respect_the_padded_size():
    lengths = [50, 10, 30, 10, 200, 40]
    batches = features.length_batches(lengths, max_samples=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every utterance once
    flat = [i for b in batches for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths) and flat[:2] == [1, 3]  # by length, ties by index
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
    assert [4] in batches  # longer than the limit: alone


def test_batched_extraction_matches_one_utterance_at_a_time(tmp_path):
    cuts = make_corpus(tmp_path / "corpus", per_speaker=(2, 1, 1))
    model, _ = features.load_pretrained(tiny_checkpoint(tmp_path / "tiny.ckpt"))
    splits = {s: load_split(cuts[s], s, ["phone"], 16000) for s in SPLITS}
    assert len({len(u.audio) for u in splits["train"]}) > 1  # padding really happens
    for kw in ({}, {"fbank_factor": 8}):
        one = features.extract_feature_set(model, splits, "m", None, max_samples=1, **kw)  # a batch per utterance
        batched = features.extract_feature_set(model, splits, "m", None, **kw)
        for s in SPLITS:
            assert len(batched.splits[s]) == len(splits[s])
            for u, a, b in zip(splits[s], one.splits[s], batched.splits[s]):
                assert a.shape == b.shape, u.cut_id
                torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
        # and one utterance alone through the single-utterance function: the same as its batched rows
        u = splits["train"][0]
        alone = (features.stacked_fbank(model, torch.from_numpy(u.audio), 8) if kw
                 else features.layer_outputs(model, torch.from_numpy(u.audio)))
        torch.testing.assert_close(features._normalised(alone), batched.splits["train"][0], atol=1e-4, rtol=1e-4)


def _policy_after_cli_setup(env):
    code = ("import os, sys\n"
            "from nest_ssl.cli import build_parser\n"
            "build_parser()\n"
            "assert 'torch' not in sys.modules, 'building the parser imported torch'\n"
            "from nest_ssl.cli import evaluate\n"
            "evaluate._set_wait_policy()\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def test_evaluate_sets_a_passive_wait_policy_before_torch_unless_the_user_chose_one():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy_after_cli_setup(env) == "PASSIVE"
    assert _policy_after_cli_setup(dict(env, OMP_WAIT_POLICY="ACTIVE")) == "ACTIVE"
