"""NeMo's RNN-T prediction network (`nemo.collections.asr.modules.RNNTDecoder`), with its module and state-dict
names: `prediction.embed` (an embedding of V+1 rows, the blank, index V, its padding row, so it embeds to zeros) and
`prediction.dec_rnn.lstm` (a torch LSTM; the forget-gate bias initialised to `forget_gate_bias`, or NeMo's chrono
init with `t_max`), dropout after the last LSTM layer.

The prediction for "nothing emitted yet" is the LSTM run on a zero vector from a zero state: the blank's embedding,
which is why the blank must be the padding row (`blank_as_pad`, the only mode built here; NeMo's default).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]


class LSTMDropout(nn.Module):
    """NeMo's `LSTMDropout`: `self.lstm` is a torch LSTM (so the keys are `lstm.weight_ih_l0` ...)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float,
                 forget_gate_bias: float | None, t_max: int | None, weights_init_scale: float,
                 hidden_hidden_bias_scale: float, proj_size: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                            dropout=dropout if num_layers > 1 else 0.0, proj_size=proj_size)
        with torch.no_grad():
            for name, p in self.lstm.named_parameters():
                if "bias" not in name:
                    continue
                h = p.numel() // 4  # gate order i, f, g, o
                if t_max is not None:  # chrono init: forget bias log U(1, t_max-1), input bias its negative
                    p.zero_()
                    p[h:2 * h] = torch.log(nn.init.uniform_(torch.empty(h), 1, t_max - 1))
                    p[:h] = -p[h:2 * h]
                elif forget_gate_bias is not None:
                    if "bias_ih" in name:
                        p[h:2 * h] = forget_gate_bias
                    else:
                        p[h:2 * h] *= float(hidden_hidden_bias_scale)
            for name, p in self.named_parameters():
                p.mul_(float(weights_init_scale))
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        x, state = self.lstm(x, state)
        if self.dropout is not None:
            x = self.dropout(x)
        return x, state


class RNNTDecoder(nn.Module):
    """`prednet`: {pred_hidden, pred_rnn_layers, and optionally forget_gate_bias (1.0), t_max (None),
    weights_init_scale (1.0), hidden_hidden_bias_scale (0.0), dropout (0.0), rnn_hidden_size (-1)};
    `vocab_size` excludes the blank."""

    def __init__(self, prednet: Mapping[str, Any], vocab_size: int, normalization_mode: str | None = None,
                 random_state_sampling: bool = False, blank_as_pad: bool = True):
        super().__init__()
        if normalization_mode is not None:
            raise ValueError(f"RNNTDecoder: normalization_mode={normalization_mode!r} is not built; use null")
        if not blank_as_pad:
            raise ValueError("RNNTDecoder: only blank_as_pad=true (NeMo's default) is built")
        self.pred_hidden = int(prednet["pred_hidden"])
        self.pred_rnn_layers = int(prednet["pred_rnn_layers"])
        self.vocab_size = int(vocab_size)
        self.blank_idx = self.vocab_size
        self.random_state_sampling = bool(random_state_sampling)
        rnn_hidden = int(prednet.get("rnn_hidden_size", -1) or -1)
        self.rnn_hidden = rnn_hidden if rnn_hidden > 0 else self.pred_hidden
        self.prediction = nn.ModuleDict({
            "embed": nn.Embedding(self.vocab_size + 1, self.pred_hidden, padding_idx=self.blank_idx),
            "dec_rnn": LSTMDropout(
                self.pred_hidden, self.rnn_hidden, self.pred_rnn_layers, float(prednet.get("dropout", 0.0) or 0.0),
                prednet.get("forget_gate_bias", 1.0), prednet.get("t_max"),
                float(prednet.get("weights_init_scale", 1.0)), float(prednet.get("hidden_hidden_bias_scale", 0.0)),
                self.pred_hidden if self.pred_hidden < self.rnn_hidden else 0),
        })

    def initialize_state(self, batch: int, like: torch.Tensor) -> State:
        """Zeros (random normal when `random_state_sampling` and training), (layers, batch, hidden) each."""
        make = torch.randn if self.random_state_sampling and self.training else torch.zeros
        h = make(self.pred_rnn_layers, batch, self.pred_hidden, dtype=like.dtype, device=like.device)
        c = make(self.pred_rnn_layers, batch, self.rnn_hidden, dtype=like.dtype, device=like.device)
        return h, c

    def predict(self, y: torch.Tensor | None, state: State | None = None, add_sos: bool = True,
                batch_size: int | None = None) -> tuple[torch.Tensor, State]:
        """Labels (B, U) (None: one zero input, "nothing emitted") -> outputs (B, U[+1], H), LSTM state.
        `add_sos` puts the zero start vector first (training); no state = zeros (or random, see above)."""
        param = self.prediction["embed"].weight
        if y is not None:
            x = self.prediction["embed"](y.to(param.device).long())
        else:
            b = batch_size if batch_size is not None else (1 if state is None else state[0].size(1))
            x = torch.zeros(b, 1, self.pred_hidden, dtype=param.dtype, device=param.device)
        if add_sos:
            x = torch.cat([x.new_zeros(x.size(0), 1, x.size(2)), x], dim=1)
        if state is None and self.random_state_sampling and self.training:
            state = self.initialize_state(x.size(0), x)
        g, state = self.prediction["dec_rnn"](x.transpose(0, 1), state)
        return g.transpose(0, 1), state

    def forward(self, targets: torch.Tensor, target_length: torch.Tensor, states: State | None = None):
        """NeMo's training call: targets (B, U) -> (outputs (B, H, U+1), target_length, state)."""
        g, state = self.predict(targets, state=states, add_sos=True)
        return g.transpose(1, 2), target_length, state
