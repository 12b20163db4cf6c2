"""Log-mel front end with NeMo 2.7.3's `AudioToMelSpectrogramPreprocessor` arguments, math and buffer names.

NeMo 2.7.3 facts this file reproduces (they differ from the release-time code NEST checkpoints were trained with):
- STFT: centred, zero (`constant`) padding of n_fft//2 per side, so the tensor has 1 + N_max // hop frames;
- lengths: `seq_len = (N + 2*(n_fft//2) - n_fft) // hop`, i.e. N // hop for even n_fft (no `+ 1`); 0 stays 0;
- pre-emphasis output is zeroed at and after each utterance's length (padding invariance).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

# NeMo's CONSTANT: added to the per-feature std (not the variance), and the sqrt guard when gradients flow.
_EPS = 1e-5

_WINDOWS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "blackman": torch.blackman_window,
    "bartlett": torch.bartlett_window,
}


def _hz_to_slaney_mel(hz: torch.Tensor) -> torch.Tensor:
    # Slaney's Auditory Toolbox scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above.
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    linear = hz / f_sp
    logpart = min_log_mel + torch.log(hz.clamp(min=min_log_hz) / min_log_hz) / logstep
    return torch.where(hz >= min_log_hz, logpart, linear)


def _slaney_mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    linear = f_sp * mel
    logpart = min_log_hz * torch.exp(logstep * (mel - min_log_mel))
    return torch.where(mel >= min_log_mel, logpart, linear)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                          norm: str | None = "slaney") -> torch.Tensor:
    """Triangular mel filters (n_mels, n_fft//2+1) as float32, equal to librosa.filters.mel(htk=False).

    Computed in float64 the way librosa does (numpy-style linspace with an exact end point, triangles rounded to
    float32 before the float64 area normalisation) so the float32 result matches NeMo's buffer to the last bit or so.
    """
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (1.0 / (n_fft * (1.0 / sample_rate)))
    lo, hi = _hz_to_slaney_mel(torch.tensor([float(fmin), float(fmax)], dtype=torch.float64))
    n_pts = n_mels + 2
    mels = torch.arange(n_pts, dtype=torch.float64) * ((hi - lo) / (n_pts - 1)) + lo
    mels[-1] = hi  # numpy.linspace ends exactly on `stop`
    mel_f = _slaney_mel_to_hz(mels)
    fdiff = mel_f[1:] - mel_f[:-1]
    ramps = mel_f[:, None] - freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0).to(torch.float32)
    if norm == "slaney":
        enorm = 2.0 / (mel_f[2:] - mel_f[:-2])
        weights = (weights.to(torch.float64) * enorm[:, None]).to(torch.float32)
    elif norm is not None:
        raise NotImplementedError(f"mel_norm={norm!r} is not implemented; use 'slaney' or None")
    return weights


class FilterbankFeatures(nn.Module):
    """Waveform (B, N) -> normalised log-mel (B, nfilt, T_pad); buffers `window` and `fb` as in NeMo."""

    def __init__(
        self,
        sample_rate=16000,
        n_window_size=320,
        n_window_stride=160,
        window="hann",
        normalize="per_feature",
        n_fft=None,
        preemph=0.97,
        nfilt=64,
        lowfreq=0,
        highfreq=None,
        log=True,
        log_zero_guard_type="add",
        log_zero_guard_value=2**-24,
        dither=1e-5,
        pad_to=16,
        max_duration=16.7,
        frame_splicing=1,
        exact_pad=False,
        pad_value=0,
        mag_power=2.0,
        use_grads=False,
        rng=None,
        nb_augmentation_prob=0.0,
        nb_max_freq=4000,
        mel_norm="slaney",
        stft_exact_pad=False,
        stft_conv=False,
    ):
        super().__init__()
        if stft_exact_pad or stft_conv:
            log.warning("stft_exact_pad/stft_conv are deprecated in NeMo and ignored; use exact_pad instead")
        for name, value in (("n_window_size", n_window_size), ("n_window_stride", n_window_stride)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if exact_pad and n_window_stride % 2 == 1:
            raise NotImplementedError("exact_pad=True needs an even hop (n_window_stride)")
        if window not in _WINDOWS:
            raise NotImplementedError(f"window={window!r} is not implemented; choose one of {sorted(_WINDOWS)}")
        if log_zero_guard_type not in ("add", "clamp"):
            raise ValueError(f"log_zero_guard_type must be 'add' or 'clamp', got {log_zero_guard_type!r}")
        if isinstance(log_zero_guard_value, str) and log_zero_guard_value not in ("tiny", "eps"):
            raise ValueError(f"log_zero_guard_value must be a number, 'tiny' or 'eps', got {log_zero_guard_value!r}")
        if nb_augmentation_prob and nb_max_freq < sample_rate / 2:
            raise NotImplementedError("narrow-band augmentation (nb_augmentation_prob > 0) is not implemented")
        if normalize and not isinstance(normalize, str):
            raise NotImplementedError(f"normalize={normalize!r} (fixed mean/std) is not implemented")
        if normalize and normalize not in ("per_feature", "all_features"):
            # NeMo silently skips normalisation for unknown names; keep that, but say so.
            log.warning("normalize=%r is not 'per_feature' or 'all_features': features are not normalised", normalize)
        if not (pad_to == "max" or isinstance(pad_to, int)):
            raise ValueError(f"pad_to must be an int or 'max', got {pad_to!r}")

        self.sample_rate = sample_rate
        self.win_length = n_window_size
        self.hop_length = n_window_stride
        self.n_fft = n_fft or 2 ** math.ceil(math.log2(n_window_size))
        self.exact_pad = exact_pad
        # exact_pad replaces centring by a (n_fft - hop)//2 zero pad so that frames == N // hop.
        self.stft_pad_amount = (self.n_fft - self.hop_length) // 2 if exact_pad else None
        self.normalize = normalize
        self.log = log
        self.log_zero_guard_type = log_zero_guard_type
        self.log_zero_guard_value = log_zero_guard_value
        self.dither = dither
        self.frame_splicing = frame_splicing
        self.nfilt = nfilt
        self.preemph = preemph
        self.pad_to = pad_to
        self.pad_value = pad_value
        self.mag_power = mag_power
        self.use_grads = use_grads
        self.nb_augmentation_prob = 0.0

        self.register_buffer("window", _WINDOWS[window](self.win_length, periodic=False))
        highfreq = highfreq or sample_rate / 2
        fb = slaney_mel_filterbank(sample_rate, self.n_fft, nfilt, lowfreq, highfreq, norm=mel_norm)
        self.register_buffer("fb", fb.unsqueeze(0))

        # Plain integer arithmetic (same formula as get_seq_len), so the module can be built on the meta device.
        pad_amount = self.stft_pad_amount * 2 if self.stft_pad_amount is not None else self.n_fft // 2 * 2
        max_length = int((max_duration * sample_rate + pad_amount - self.n_fft) // self.hop_length)
        self.max_length = max_length + (pad_to - max_length % pad_to if isinstance(pad_to, int) and pad_to > 0 else 0)

    @property
    def filter_banks(self) -> torch.Tensor:
        return self.fb

    def get_seq_len(self, seq_len: torch.Tensor) -> torch.Tensor:
        """Valid frames per utterance; with centring this is N // hop (the last, half-padded frame is dropped)."""
        pad_amount = self.stft_pad_amount * 2 if self.stft_pad_amount is not None else self.n_fft // 2 * 2
        return torch.floor_divide(seq_len + pad_amount - self.n_fft, self.hop_length).to(torch.long)

    def _guard(self, x: torch.Tensor) -> float:
        if self.log_zero_guard_value == "tiny":
            return torch.finfo(x.dtype).tiny
        if self.log_zero_guard_value == "eps":
            return torch.finfo(x.dtype).eps
        return self.log_zero_guard_value

    def forward(self, x: torch.Tensor, seq_len: torch.Tensor, linear_spec: bool = False):
        # The whole front end is an fp32 island under autocast: in bf16 the STFT power, the log of values near the
        # zero guard and the mean/std would round visibly, and the clean features are the quantizer's targets.
        # Outside autocast this changes nothing (fp32 inputs stay as they are).
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        with torch.autocast(x.device.type, enabled=False):
            if self.use_grads:
                return self._features(x, seq_len, linear_spec)
            with torch.no_grad():
                return self._features(x, seq_len, linear_spec)

    def _features(self, x, seq_len_time, linear_spec):
        # Negative counts can only come from exact_pad with N < hop; they mean "no frame".
        seq_len = torch.where(seq_len_time == 0, 0, self.get_seq_len(seq_len_time)).clamp(min=0)

        if self.stft_pad_amount is not None:
            x = F.pad(x, (self.stft_pad_amount, self.stft_pad_amount))
        if self.training and self.dither > 0:
            # NeMo adds the dither in place, changing the caller's tensor; ours leaves it alone (same values).
            x = x + self.dither * torch.randn_like(x)
        if self.preemph is not None:
            x = torch.cat((x[:, :1], x[:, 1:] - self.preemph * x[:, :-1]), dim=1)
            # Zero everything from each length on, so features do not depend on how much padding the batch has.
            beyond = torch.arange(x.shape[1], device=x.device)[None, :] >= seq_len_time[:, None]
            x = x.masked_fill(beyond, 0.0)

        spec = torch.stft(
            x, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
            center=not self.exact_pad, window=self.window.to(dtype=torch.float, device=x.device),
            return_complex=True, pad_mode="constant",
        )
        # Same op sequence as NeMo (not .abs(), which rounds differently); guard keeps sqrt differentiable at 0.
        x = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + (_EPS if self.use_grads else 0))
        if self.mag_power != 1.0:
            x = x.pow(self.mag_power)
        if linear_spec:
            return x, seq_len

        x = torch.matmul(self.fb.to(x.dtype), x)
        if self.log:
            if self.log_zero_guard_type == "add":
                x = torch.log(x + self._guard(x))
            else:
                x = torch.log(torch.clamp(x, min=self._guard(x)))
        if self.frame_splicing > 1:
            # NeMo's splice_frames concatenates unshifted copies, i.e. it just repeats the features.
            x = torch.cat([x] * self.frame_splicing, dim=1)
        if self.normalize == "per_feature":
            x = _normalize_per_feature(x, seq_len)
        elif self.normalize == "all_features":
            x = _normalize_all_features(x, seq_len)

        beyond = torch.arange(x.shape[-1], device=x.device)[None, :] >= seq_len[:, None]
        x = x.masked_fill(beyond[:, None, :], self.pad_value)
        if self.pad_to == "max":
            x = F.pad(x, (0, self.max_length - x.shape[-1]), value=self.pad_value)
        elif self.pad_to > 0 and x.shape[-1] % self.pad_to:
            x = F.pad(x, (0, self.pad_to - x.shape[-1] % self.pad_to), value=self.pad_value)
        return x, seq_len


def _normalize_per_feature(x: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
    """Per utterance and bin: mean and unbiased std over valid frames, std + 1e-5, applied to all frames.

    Same arithmetic as NeMo for >= 2 frames; for 1 frame NeMo's NaN std becomes 0 and so does ours; for 0 frames
    we divide by 1 instead of 0 (NeMo makes NaN there, which its padding fill then overwrites, as does ours).
    """
    valid = (torch.arange(x.shape[2], device=x.device)[None, :] < seq_len[:, None])[:, None, :]
    count = valid.sum(dim=2).to(x.dtype)
    mean = torch.where(valid, x, 0.0).sum(dim=2) / count.clamp(min=1)
    sq = torch.where(valid, x - mean[:, :, None], 0.0) ** 2
    std = torch.sqrt(torch.sum(sq, dim=2) / (count - 1.0).clamp(min=1)) + _EPS
    return (x - mean[:, :, None]) / std[:, :, None]


def _normalize_all_features(x: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
    # Not used by NEST; a per-utterance loop with torch's own mean/std keeps NeMo's rounding.
    mean = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    std = torch.zeros_like(mean)
    for i, n in enumerate(seq_len.tolist()):
        if n > 0:
            mean[i] = x[i, :, :n].mean()
            std[i] = x[i, :, :n].std() if n * x.shape[1] > 1 else 0.0
    return (x - mean[:, None, None]) / (std + _EPS)[:, None, None]


class AudioToMelSpectrogramPreprocessor(nn.Module):
    """NeMo's preprocessor: forward(input_signal (B,N), length (B,)) -> (feats (B,features,T_pad), feat_len int64).

    Always runs in float32 without gradients (NeMo found low precision hurts); output takes the dtype the module
    was cast to (via a non-persistent sentinel buffer, as in NeMo). Dither is applied only in training mode.
    """

    def __init__(
        self,
        sample_rate=16000,
        window_size=0.02,
        window_stride=0.01,
        n_window_size=None,
        n_window_stride=None,
        window="hann",
        normalize="per_feature",
        n_fft=None,
        preemph=0.97,
        features=64,
        lowfreq=0,
        highfreq=None,
        log=True,
        log_zero_guard_type="add",
        log_zero_guard_value=2**-24,
        dither=1e-5,
        pad_to=16,
        frame_splicing=1,
        exact_pad=False,
        pad_value=0,
        mag_power=2.0,
        rng=None,
        nb_augmentation_prob=0.0,
        nb_max_freq=4000,
        mel_norm="slaney",
        use_torchaudio: bool = False,
        stft_exact_pad=False,
        stft_conv=False,
    ):
        super().__init__()
        if use_torchaudio:
            log.warning("use_torchaudio is deprecated in NeMo 2.7.3 and ignored")
        if window_size and n_window_size:
            raise ValueError("give only one of window_size and n_window_size (set window_size=None)")
        if window_stride and n_window_stride:
            raise ValueError("give only one of window_stride and n_window_stride (set window_stride=None)")
        if window_size:
            n_window_size = int(window_size * sample_rate)
        if window_stride:
            n_window_stride = int(window_stride * sample_rate)
        self._sample_rate = sample_rate
        self.win_length = n_window_size
        self.hop_length = n_window_stride
        self.register_buffer("dtype_sentinel_tensor", torch.tensor((), dtype=torch.float32), persistent=False)
        self.featurizer = FilterbankFeatures(
            sample_rate=sample_rate, n_window_size=n_window_size, n_window_stride=n_window_stride, window=window,
            normalize=normalize, n_fft=n_fft, preemph=preemph, nfilt=features, lowfreq=lowfreq, highfreq=highfreq,
            log=log, log_zero_guard_type=log_zero_guard_type, log_zero_guard_value=log_zero_guard_value,
            dither=dither, pad_to=pad_to, frame_splicing=frame_splicing, exact_pad=exact_pad, pad_value=pad_value,
            mag_power=mag_power, rng=rng, nb_augmentation_prob=nb_augmentation_prob, nb_max_freq=nb_max_freq,
            mel_norm=mel_norm, stft_exact_pad=stft_exact_pad, stft_conv=stft_conv,
        )

    @property
    def filter_banks(self) -> torch.Tensor:
        return self.featurizer.filter_banks

    def get_features(self, input_signal, length):
        return self.featurizer(input_signal, length)

    @torch.no_grad()
    def forward(self, input_signal: torch.Tensor, length: torch.Tensor):
        feats, feat_len = self.get_features(input_signal.to(torch.float32), length.to(input_signal.device))
        return feats.to(self.dtype_sentinel_tensor.dtype), feat_len


class SpectrogramAugmentation(nn.Module):
    """NeMo's SpecAugment wrapper; NEST configures it with no masks, where it is the identity (all we implement)."""

    def __init__(self, freq_masks=0, time_masks=0, freq_width=10, time_width=10, rect_masks=0, rect_time=5,
                 rect_freq=20, rng=None, mask_value=0.0, use_vectorized_spec_augment: bool = True,
                 use_numba_spec_augment: bool = False):
        super().__init__()
        if freq_masks or time_masks or rect_masks:
            raise NotImplementedError(
                "SpectrogramAugmentation with masks is not implemented (NEST uses freq_masks=time_masks=0); got "
                f"freq_masks={freq_masks}, time_masks={time_masks}, rect_masks={rect_masks}"
            )

    def forward(self, input_spec: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        return input_spec
