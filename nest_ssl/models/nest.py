"""NESTModel: NeMo's EncDecDenoiseMaskedTokenPredModel, without Lightning or NeMo's class hierarchy.

One training example is a clean utterance and a noisy version of it (noise or another speaker mixed in). The clean
features give the targets: every 8 frames (one encoder frame) go through a frozen random projection and are
quantised to the nearest of 8192 random unit codewords. The noisy features are block-masked and encoded, and the
decoder predicts the clean tokens at the masked positions. Submodule names, and so the state-dict keys, are NeMo's,
so checkpoints move between the two toolkits unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nest_ssl.config import ConfigError, instantiate
from nest_ssl.modules.loss import fit_tokens

log = logging.getLogger(__name__)

# Keys of NeMo checkpoints written before NeMo dropped the unused duplicate decoder (NeMo PR #12390, Feb 2025).
LEGACY_PREFIXES = ("decoder_ssl.",)


@dataclass
class StepOutput:
    """What one forward pass with the loss gives the trainer.

    The counts and the flag are device tensors, not Python numbers: reading them makes the host wait for the device,
    and the trainer sums them on the device and reads them once per optimizer step.
    """

    loss: torch.Tensor  # scalar; a graph-connected zero when no token was masked (empty_mask)
    log_probs: torch.Tensor  # (B, T', num_classes, num_books) (or squeezed (B, T', num_classes)), every token
    encoded_len: torch.Tensor  # (B,)
    masks: torch.Tensor  # (B, D, T) 1.0 on masked frames
    tokens: torch.Tensor  # (B, T', num_books) (or (B, T')) target codes of the clean audio, fitted to T'
    selected: torch.Tensor  # (B, T') bool: the masked tokens, the ones the loss is computed on
    valid: torch.Tensor  # (B, T') bool: the unpadded tokens (t < encoded_len)
    num_masked_tokens: torch.Tensor  # 0-dim int64: selected tokens
    num_tokens: torch.Tensor  # 0-dim int64: valid (unpadded) tokens
    empty_mask: torch.Tensor  # 0-dim bool: no token passed the mask threshold (the loss is a flagged zero, not NaN)


@dataclass
class _Silence:
    """The fields of an AudioNoiseBatch that training_output reads (the stand-in of an all-rejected batch)."""

    audio: torch.Tensor
    audio_len: torch.Tensor
    noisy_audio: torch.Tensor
    noisy_audio_len: torch.Tensor


class PostConvMasking(nn.Module):
    """Masks the subsampled features (mask_position: post_conv) by standing in for the encoder's `pre_encode`.

    Its submodule names (`pre_encode`, `masking`) are those NeMo's wrapper gives, so post_conv checkpoints load too.
    """

    def __init__(self, pre_encode: nn.Module, masking: nn.Module):
        super().__init__()
        self.pre_encode = pre_encode
        self.masking = masking
        self.apply_mask = False
        self.current_mask: torch.Tensor | None = None
        self.current_feats: torch.Tensor | None = None

    def forward(self, x, lengths):
        feats, lengths = self.pre_encode(x=x, lengths=lengths)
        self.current_feats = feats.detach()
        if not self.apply_mask:
            self.current_mask = torch.zeros_like(feats)
            return feats, lengths
        masked, mask = self.masking(input_feats=feats.transpose(1, 2), input_lengths=lengths)
        self.current_mask = mask
        # The masked features are a fixed input: no gradient flows back into the subsampler through them.
        return masked.transpose(1, 2).detach(), lengths


class NESTModel(nn.Module):
    def __init__(self, cfg: DictConfig):
        super().__init__()
        cfg = _post_conv_adjusted(cfg)
        self.cfg = cfg
        # Registration order gives NeMo's state-dict order: preprocessor, encoder, quantizer, mask_processor, decoder.
        self.preprocessor = instantiate(cfg.preprocessor)
        self.encoder = instantiate(cfg.encoder)
        self.loss = instantiate(cfg.loss)
        # NeMo builds SpecAugment but NEST never applies it (it has no state); kept so the config stays NeMo's.
        self.spec_augmentation = instantiate(cfg.spec_augment) if cfg.get("spec_augment") is not None else None
        self.quantizer = instantiate(cfg.quantizer)
        self.mask_processor = instantiate(cfg.masking)
        self.decoder = instantiate(cfg.decoder)
        self.pre_encoder: PostConvMasking | None = None
        if self.mask_position == "post_conv":
            self.pre_encoder = PostConvMasking(self.encoder.pre_encode, self.mask_processor)
            self.encoder.pre_encode = self.pre_encoder

    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg_model: DictConfig | Mapping[str, Any]) -> "NESTModel":
        """Builds the model from a `model:` config section (ours or NeMo's, a DictConfig or a plain dict)."""
        if not isinstance(cfg_model, DictConfig):
            cfg_model = OmegaConf.create(dict(cfg_model))
        cfg_model = cfg_model.copy()
        # `${model.*}` interpolations cannot resolve once the `model:` section stands alone: resolve them first.
        for key in ("preprocessor", "encoder", "quantizer", "masking", "decoder", "loss"):
            if cfg_model.get(key) is None:
                raise ConfigError(f"model config has no `{key}` section; start from nest_ssl/conf/nest_fast-conformer.yaml")
        OmegaConf.resolve(cfg_model)
        return cls(cfg_model)

    @property
    def mask_position(self) -> str:
        return self.cfg.get("mask_position", "pre_conv")

    @property
    def num_weights(self) -> int:
        """Trainable parameters, as NeMo counts them (the frozen quantizer and mask vector are excluded)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ----------------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_signal=None,
        input_signal_length=None,
        processed_signal=None,
        processed_signal_length=None,
        noise_signal=None,  # accepted as NeMo does; unused
        noise_signal_length=None,
        processed_noise_signal=None,
        processed_noise_signal_length=None,
        noisy_input_signal=None,
        noisy_input_signal_length=None,
        processed_noisy_input_signal=None,
        processed_noisy_input_signal_length=None,
        apply_mask=False,
    ):
        """Returns `(log_probs, encoded_len, masks, tokens)` with NeMo's shapes.

        Give the clean audio (`input_signal`) or its features (`processed_signal`), and likewise the noisy one;
        without noisy audio the clean audio is used for both (no denoising), which is what extraction wants.
        """
        encoded, encoded_len, masks, tokens = self.encode(
            input_signal, input_signal_length, processed_signal, processed_signal_length,
            noisy_input_signal, noisy_input_signal_length, processed_noisy_input_signal,
            processed_noisy_input_signal_length, apply_mask,
        )
        log_probs = self.decoder(encoder_output=encoded)
        return log_probs, encoded_len, masks, tokens

    def encode(
        self,
        input_signal=None,
        input_signal_length=None,
        processed_signal=None,
        processed_signal_length=None,
        noisy_input_signal=None,
        noisy_input_signal_length=None,
        processed_noisy_input_signal=None,
        processed_noisy_input_signal_length=None,
        apply_mask=False,
    ):
        """Everything of forward() but the decoder: `(encoded (B, d_model, T'), encoded_len, masks, tokens)`."""
        clean, clean_len = self._features(input_signal, input_signal_length, processed_signal, processed_signal_length, "input")
        if noisy_input_signal is None and processed_noisy_input_signal is None:
            noisy, noisy_len = clean, clean_len
        else:
            noisy, noisy_len = self._features(
                noisy_input_signal,
                noisy_input_signal_length,
                processed_noisy_input_signal,
                processed_noisy_input_signal_length,
                "noisy_input",
            )

        if self.pre_encoder is not None:
            # The subsampler takes (B, T, D); NeMo 2.7.3 passes (B, D, T) here and fails, so this path is our fix.
            # The targets come from these subsampled clean features: an fp32 island under autocast (as the
            # quantizer is), so bf16 training predicts the tokens fp32 training would.
            with torch.autocast(clean.device.type, enabled=False):
                feats, _ = self.pre_encoder.pre_encode(x=clean.transpose(1, 2), lengths=clean_len)
                _, tokens = self.quantizer(input_signal=feats.transpose(1, 2))
            self.pre_encoder.apply_mask = apply_mask
            encoded, encoded_len = self.encoder(audio_signal=noisy, length=noisy_len)
            masks = self.pre_encoder.current_mask
        else:
            _, tokens = self.quantizer(input_signal=clean)
            if apply_mask:
                masked, masks = self.mask_processor(input_feats=noisy, input_lengths=noisy_len)
            else:
                masked, masks = noisy, torch.zeros_like(noisy)
            encoded, encoded_len = self.encoder(audio_signal=masked, length=noisy_len)
        return encoded, encoded_len, masks, tokens

    def _features(self, signal, signal_len, processed, processed_len, name):
        has_signal = signal is not None and signal_len is not None
        has_processed = processed is not None and processed_len is not None
        if has_signal == has_processed:
            raise ValueError(
                f"give either `{name}_signal` and `{name}_signal_length` or the processed (feature) pair, not both or neither"
            )
        if has_processed:
            return processed, processed_len
        return self.preprocessor(input_signal=signal, length=signal_len)

    # ----------------------------------------------------------------------------------------------------------
    def training_output(self, batch, apply_mask: bool = True) -> StepOutput:
        """Forward and loss on an AudioNoiseBatch (or anything with its fields), as NeMo's training_step.

        Nothing here reads a value on the host (no `.item()`, no boolean indexing), so the forward never waits for
        the device. A batch whose every cut was rejected by the loader (no row) runs on a stand-in (`_stand_in`).
        """
        if batch.audio.shape[0] == 0:
            return self._stand_in(batch.audio.device, apply_mask)
        encoded, encoded_len, masks, tokens = self.encode(
            input_signal=batch.audio,
            input_signal_length=batch.audio_len,
            noisy_input_signal=batch.noisy_audio,
            noisy_input_signal_length=batch.noisy_audio_len,
            apply_mask=apply_mask,
        )
        log_probs = self.decoder(encoder_output=encoded)
        loss = self.loss(masks=masks, decoder_outputs=log_probs, targets=tokens, decoder_lengths=encoded_len)
        selected = self.loss.token_mask(masks)  # (B, T')
        num_masked = selected.sum()
        valid = torch.arange(selected.shape[1], device=selected.device)[None, :] < encoded_len[:, None]
        return StepOutput(
            loss=loss,
            log_probs=log_probs,
            encoded_len=encoded_len,
            masks=masks,
            tokens=fit_tokens(tokens, selected.shape[1]),
            selected=selected,
            valid=valid,
            num_masked_tokens=num_masked,
            num_tokens=valid.sum(),
            empty_mask=num_masked == 0,
        )

    def _stand_in(self, device, apply_mask: bool) -> StepOutput:
        """A batch whose every cut was rejected by the data loader: the forward runs on one second of silence and
        its result is weighted by zero, so that this rank runs the same collectives as the others (SyncBatchNorm's
        all-reduces in the forward, DDP's gradient all-reduce in the backward: skipping the forward on one rank
        would hang the others), while the loss, its gradients and the counts are exactly zero. The silence does
        enter this step's BatchNorm statistics (one second among the step's batches)."""
        n = int(self.cfg.get("sample_rate", 16000))
        silence = torch.zeros(1, n, device=device)
        length = torch.full((1,), n, dtype=torch.int64, device=device)
        stand_in = _Silence(audio=silence, audio_len=length, noisy_audio=silence, noisy_audio_len=length)
        out = self.training_output(stand_in, apply_mask=apply_mask)
        zero = torch.zeros((), dtype=torch.int64, device=device)
        return StepOutput(
            loss=out.loss * 0.0, log_probs=out.log_probs, encoded_len=out.encoded_len, masks=out.masks,
            tokens=out.tokens, selected=torch.zeros_like(out.selected), valid=torch.zeros_like(out.valid),
            num_masked_tokens=zero, num_tokens=zero,
            empty_mask=torch.ones((), dtype=torch.bool, device=device),
        )

    @property
    def trains_every_parameter(self) -> bool:
        """False for mask_position: post_conv, where the subsampler gets no gradient in training (its output is
        masked and detached, as in NeMo): DDP must then look for unused parameters (find_unused_parameters)."""
        return self.pre_encoder is None

    # ----------------------------------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Loads ours or NeMo's state dict; legacy `decoder_ssl.*` keys of older NeMo checkpoints are dropped."""
        legacy = [k for k in state_dict if k.startswith(LEGACY_PREFIXES)]
        if legacy:
            log.warning(
                "dropping %d keys of the unused duplicate decoder (%s...) that NeMo checkpoints from before "
                "February 2025 carry; the model has no such module",
                len(legacy),
                legacy[0],
            )
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(LEGACY_PREFIXES)}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _post_conv_adjusted(cfg: DictConfig) -> DictConfig:
    """For post_conv masking, quantizer, masking and loss work at the encoder's frame rate.

    NeMo rewrites four keys (quantizer and masking feat_in, block size, loss combine_time_steps) but leaves the
    quantizer stacking 8 encoder frames, which cannot match the loss's one token per frame; we also set the
    quantizer's combine_time_steps to 1 so that post_conv trains.
    """
    position = cfg.get("mask_position", "pre_conv")
    if position not in ("pre_conv", "post_conv"):
        raise ConfigError(f"model.mask_position is {position!r}; choose pre_conv or post_conv")
    if position == "pre_conv":
        return cfg
    cfg = cfg.copy()
    cfg.quantizer.feat_in = cfg.encoder.d_model
    cfg.masking.feat_in = cfg.encoder.d_model
    cfg.masking.block_size = cfg.masking.block_size // cfg.encoder.subsampling_factor
    cfg.loss.combine_time_steps = 1
    cfg.quantizer.combine_time_steps = 1
    return cfg
