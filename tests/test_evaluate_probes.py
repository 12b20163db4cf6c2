"""Probes on representations whose information content is known: the class lives in one layer only.

A working weighted-sum probe must learn the task and put its weight on that layer; per-layer probes must find it
there and score only the majority rate elsewhere; the CTC probe must overfit a small set to CER 0.
"""

import torch

from nest_ssl.evaluate import ctc, probes
from nest_ssl.evaluate.fit import fit_selected

L, D, C = 4, 16, 4
INFORMATIVE = 2


def _frames(n, generator):
    """(n, L, D) frames and labels; only layer INFORMATIVE carries the class (a fixed code + noise)."""
    labels = torch.multinomial(torch.tensor([0.4, 0.2, 0.2, 0.2]), n, replacement=True, generator=generator)
    codes = torch.randn(C, D, generator=torch.Generator().manual_seed(99)) * 2.0
    x = torch.randn(n, L, D, generator=generator)
    x[:, INFORMATIVE] += codes[labels]
    return x, labels


def _splits():
    g = torch.Generator().manual_seed(0)
    return {"train": _frames(600, g), "dev": _frames(200, g), "test": _frames(200, g)}


def test_phone_probe_learns_and_weights_the_informative_layer():
    splits = _splits()
    out = probes.phone_probe(splits, C, epochs=15, lr=1e-2, batch_size=64, seed=0)
    assert out.test["accuracy"] > 0.95
    weights = out.layer_weights
    assert abs(sum(weights) - 1.0) < 1e-5
    others = [w for i, w in enumerate(weights) if i != INFORMATIVE]
    assert weights[INFORMATIVE] > 1.5 * max(others), weights  # started equal (0.25 each)


def test_per_layer_probes_find_the_layer_and_the_others_score_the_majority_rate():
    splits = _splits()
    majority = probes.majority_rate(splits["train"][1], splits["test"][1])
    assert 0.3 < majority < 0.5  # class 0 is drawn 40% of the time
    accs = probes.per_layer_phone_probes(splits, C, epochs=15, lr=1e-2, batch_size=64, seed=0)
    assert len(accs) == L
    assert accs[INFORMATIVE] > 0.95
    for i in set(range(L)) - {INFORMATIVE}:
        assert accs[i] < majority + 0.1, (i, accs[i], majority)


def test_speaker_probe_on_pooled_utterances():
    g = torch.Generator().manual_seed(1)
    codes = torch.randn(3, D, generator=torch.Generator().manual_seed(5))

    def utts(n):
        spk = torch.arange(n) % 3
        reps = []
        for s in spk:
            x = torch.randn(int(torch.randint(5, 15, (1,), generator=g)), L, D, generator=g)
            x[:, INFORMATIVE] += codes[s]  # the speaker is constant over the utterance
            reps.append(x)
        return reps, spk

    splits = {"train": utts(30), "dev": utts(9), "test": utts(9)}
    out = probes.speaker_probe(splits, 3, epochs=40, lr=1e-2, batch_size=8, seed=0)
    assert out.test["accuracy"] == 1.0


def test_probes_are_deterministic_for_a_seed():
    splits = _splits()
    a = probes.phone_probe(splits, C, epochs=3, lr=1e-2, batch_size=64, seed=7)
    b = probes.phone_probe(splits, C, epochs=3, lr=1e-2, batch_size=64, seed=7)
    assert a.test == b.test and a.layer_weights == b.layer_weights


def test_fit_keeps_the_best_dev_epoch():
    """The weights left in the module are those of the best dev score, not the last epoch's."""
    module = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(module.weight)
    scores = iter([0.2, 0.9, 0.1])
    seen = []

    def dev_score():
        seen.append(float(module.weight.detach()))
        return next(scores)

    best, epoch = fit_selected(module, lambda e: [-(module.weight.sum())], dev_score, epochs=3, lr=0.1,
                               higher_is_better=True)
    assert (best, epoch) == (0.9, 1)
    assert float(module.weight.detach()) == seen[1] != seen[2]


def _ctc_utts(texts, generator, frames_per_char=2):
    """Per utterance (T, 2, 29): layer 0 a noisy one-hot of the character being 'spoken', layer 1 pure noise."""
    reps = []
    for text in texts:
        ids = ctc.encode_text(text).repeat_interleave(frames_per_char)
        x = torch.randn(len(ids), 2, len(ctc.VOCABULARY), generator=generator) * 0.3
        x[torch.arange(len(ids)), 0, ids] += 3.0
        reps.append(x)
    return reps


def test_ctc_probe_overfits_to_cer_zero():
    g = torch.Generator().manual_seed(0)
    texts = ["ab ba", "cab", "abc cba", "a bc", "cc a", "b'a"]
    reps = _ctc_utts(texts, g)
    # train = dev = test: overfitting a tiny set is the point
    splits = {s: (reps, texts) for s in ("train", "dev", "test")}
    out = ctc.asr_probe(splits, epochs=60, lr=2e-2, batch_size=3, seed=0, upsample=2)
    assert out.test == {"cer": 0.0, "wer": 0.0}, out.hypotheses
    assert out.hypotheses == texts


def test_phone_probes_side_by_side_equal_training_them_one_after_the_other():
    """One pass feeding the weighted probe and the per-layer probes the same minibatches gives exactly what each
    gives trained alone (phone_probe runs the shared fit_selected loop)."""
    splits = _splits()
    alone = probes.phone_probe(splits, C, epochs=4, lr=1e-2, batch_size=64, seed=3)
    layers_alone = probes.phone_probes(splits, C, epochs=4, lr=1e-2, batch_size=64, seed=3, weighted=False)[1]
    both, layers = probes.phone_probes(splits, C, epochs=4, lr=1e-2, batch_size=64, seed=3)
    assert (both.test, both.dev, both.epoch, both.layer_weights) == \
           (alone.test, alone.dev, alone.epoch, alone.layer_weights)
    assert layers == layers_alone and len(layers) == L
