"""ASR on top of the pretrained encoder: tokenizers (.tokenizer), transcript manifests (.manifest), the CTC model
(.ctc_model, .spec_augment, .init), the RNN-T model (.rnnt_model, .rnnt_decoder, .rnnt_joint,
.rnnt_decoding; .models builds either), fine-tuning (.finetune), checkpoint averaging (.average), word n-gram language
models in ARPA format (.lm), decoding (.decode) and icefall-style results (.results). See docs/asr.md.

Sits above checkpoint/data/export and below evaluate and cli in the import layering.
"""
