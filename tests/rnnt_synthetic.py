"""A transducer task small enough to learn in seconds, for the RNN-T tests: "encoder outputs" are fixed random
vectors, one per token, each followed by a frame of the blank's vector, with noise; a prediction network and joint
(NeMo's RNN-T sections, small) learn to read them. Returns trained, realistic decoder + joint weights."""

from __future__ import annotations

import torch

V = 7  # tokens; the blank is index V
D_ENC = 24
SMALL = ["model_defaults.pred_hidden=32", "model_defaults.joint_hidden=40", "decoder.prednet.pred_rnn_layers=2",
         "joint.fuse_loss_wer=false"]  # NeMo's fused joint returns the loss, not the joint


def kwargs(section):
    return {k: v for k, v in section.items() if k != "_target_"}


def sample(n: int, noise: float, seed: int):
    """n utterances: (encoder outputs (n, D_ENC, T), lengths (n,), [token ids])."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(V + 1, D_ENC, generator=torch.Generator().manual_seed(1234)) * 2
    utts = []
    for _ in range(n):
        tokens = torch.randint(0, V, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        frames = [V] * int(torch.randint(0, 3, (1,), generator=g))
        for t in tokens:
            frames += [t, V]
        utts.append((tokens, frames))
    width = max(len(f) for _, f in utts)
    enc = torch.zeros(n, D_ENC, width)
    for i, (_, frames) in enumerate(utts):
        x = table[frames] + noise * torch.randn(len(frames), D_ENC, generator=g)
        enc[i, :, :len(frames)] = x.T
    return enc, torch.tensor([len(f) for _, f in utts]), [t for t, _ in utts]


def train(decoder, joint, steps: int = 150, seed: int = 0) -> list[float]:
    """Trains decoder + joint on the task with our RNN-T loss (mean_batch); the losses."""
    import warnings

    from torchaudio.functional import rnnt_loss

    warnings.filterwarnings("ignore", message=".*rnnt_loss has been deprecated", category=UserWarning)

    from nest_ssl.asr.rnnt_model import reduce_losses

    torch.manual_seed(seed)
    params = [*decoder.parameters(), *joint.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    decoder.train(), joint.train()
    losses = []
    for step in range(steps):
        enc, lens, targets = sample(16, 0.5, seed * 1000 + step)
        tl = torch.tensor([len(t) for t in targets])
        padded = torch.full((len(targets), int(tl.max())), V)
        for i, t in enumerate(targets):
            padded[i, :len(t)] = torch.tensor(t)
        g, _, _ = decoder(padded, tl)
        logits = joint.joint_logits(enc.transpose(1, 2), g.transpose(1, 2))
        loss = reduce_losses(rnnt_loss(logits, padded.int(), lens.int(), tl.int(), blank=V, reduction="none"), tl,
                             "mean_batch")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    decoder.eval(), joint.eval()
    return losses
