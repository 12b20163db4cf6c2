"""Downstream evaluation of pretrained encoders (docs/evaluation.md).

    data       the labelled CutSets (text, speaker, phone alignments), checked for what each task needs
    features   model loading (.ckpt / .nemo), random-init baselines, every hidden state, stacked fbank
    probes     SUPERB-style weighted-layer-sum probes: phone frames, speaker, per-layer phone probes
    ctc        character CTC head, greedy decoding, the frozen CTC asr probe
    finetune   CTC fine-tuning of the whole encoder
    fit        the shared train-for-a-budget, select-on-dev loop
    metrics    accuracy, CER, WER (kaldialign)
    report     results.json rows, tables, layer_weights.png
    run        evaluate(): all of it in one call

`from nest_ssl.evaluate.run import evaluate, EvalOptions`; errors the user can fix are EvaluationError.
"""

from nest_ssl.evaluate.errors import EvaluationError

__all__ = ["EvaluationError"]
