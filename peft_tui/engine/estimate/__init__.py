"""Will it fit, and how long will it take: a run's peak memory and time, estimated before it starts.

    model_config, lengths = inputs_for(config)                  # the model's config, the rows' token lengths
    inputs_for(config, data, cache_dir=store.cache_dir)        # ModelFacts + lengths kept in the store's cache
    cal = calibration(store_root / "calibration.json", device)  # measured once per machine, then read
    est = estimate(config, model_config, lengths, device, cal, free_mb=available)
    est.peak_mb, est.parts, est.total_s, est.fits(available), est.suggestions, est.to_dict()
    eta(est, steps_done, elapsed_s, total_steps)                # the run's own rate from step 20 on
    grade(est, result)                                          # the estimate against what the run measured
    grade_run(row)                                              # the same for a stored run, where it is read

No training happens here, and importing this module imports no torch. With the store's cache
(`plan(..., cache_dir=...)`), the token counts (lengths.py) and the wrapped model's shape (`shape_of`) are
kept there, so a command estimating a model, method and data seen before imports neither torch nor
transformers (see tests/test_first_step.py). The classifier is built on the
meta device (no memory, no weights read) and wrapped by the method's own `apply`, so parameter counts
are exact, and what trains (and from which layer on) is read from the wrapped model.

Memory, from its parts (MB, adding up to `peak_mb`):
- weights: every parameter in fp32 (the engine loads fp32 and autocasts), plus under bf16/fp16 the
  compute-dtype copy of each matrix that autocast keeps for the backward pass. No separate fp32 master
  copy: the stored weights already are fp32.
- grads: fp32, trainable parameters only. optimizer: AdamW's two fp32 states per trainable parameter.
- activations: what autograd keeps for the backward pass of the widest batch (the batch size x the
  longest row after truncation, padded on CUDA to its width bucket, batching.cuda_width), per layer from the hidden size,
  feed-forward size and heads: attention scores (CPU with attention dropout: softmax output, dropout
  noise, dropped probabilities; fused attention keeps none), q/k/v, norm inputs, dropout noise, the
  feed-forward activation; plus the input of every module whose weights train, and of every learned
  scale (what the method keeps). Prefix tokens lengthen keys and values, prompt tokens the sequence;
  layers below the first trainable module keep nothing. Checked against the tensors autograd saves
  (tests/test_estimate.py). The backward pass's largest temporary comes on top, evaluation's peak is
  compared, and on CPU the allocator's retention of freed blocks (RETENTION_CPU, measured).
- overhead: CPU, the peak RSS of a fresh process after importing torch, transformers and peft and a few
  micro training steps (+ pandas for file data), the tokenizer and the data held as Python lists;
  CUDA, the context. Measured once by `calibration`.

Time: matrix-product FLOPs (forward 2 per weight per token, and 4*w*w'*h per row and layer for attention;
backward 2 more for input gradients where gradients flow, 2 more for the weight gradients of trainable
matrices) over the measured matrix-product rate, plus the element-wise work per element (softmax,
dropout, norms, activation: measured forward and backward), a fixed cost per leaf module (Python,
dispatch, autograd: measured on a micro BERT's training step) and the fused AdamW step per trainable
parameter. Steps are the trainer's own length-grouped batches for the run's seed, so padding counts
exactly. benchmarks/estimate_accuracy.py grades all of this against real runs.

The package: calibrate.py (the machine, measured once), shape.py (the model config, token lengths,
the wrapped model's shape), cost.py (memory and time of a step), planning.py (the estimate, will it fit,
the ETA and the grade)."""

from __future__ import annotations

from peft_tui.engine.estimate.calibrate import (  # noqa: F401
    CALIBRATION_VERSION,
    NOMINAL_CPU,
    OVERHEAD_PROBE,
    Calibration,
    calibration,
    leaf_modules,
    machine_key,
    machine_precision,
    machine_precision_path,
    measure,
    measure_precision_once,
    measured_choice,
    peak_rss_mb,
    read_calibration,
    resolved_auto,
)
from peft_tui.engine.estimate.cost import (  # noqa: F401
    ATTENTION_HEAD_DIMS,
    BYTES_PER_TEXT_TOKEN,
    BYTES_PER_TOKEN_ID,
    BYTES_PER_VOCAB_ENTRY,
    MB,
    PROBE_FIT_S,
    RETENTION_CPU,
    RETENTION_CPU_FROZEN,
    activation_bytes,
    attention_rate,
    eval_bytes,
    fixed_mb,
    forward_seconds,
    mapped_bytes,
    memory_parts,
    probe_fit_seconds,
    step_seconds,
)
from peft_tui.engine.estimate.planning import (  # noqa: F401
    DEFAULT_MAX_TIME_S,
    ETA_SWITCH_STEPS,
    MEASURED_RANGE,
    MEMORY_RANGE,
    TIME_RANGE,
    Estimate,
    Eta,
    batch_widths,
    duration_text,
    estimate,
    eta,
    free_memory_mb,
    grade,
    grade_run,
    plan,
    refusal,
    suggest,
    time_limit,
)
from peft_tui.engine.estimate.shape import (  # noqa: F401
    ATTENTION_INPUTS,
    LAYER_INDEX,
    SHARED_INPUT,
    ModelFacts,
    NotEstimable,
    Shape,
    inputs_for,
    model_config,
    model_facts,
    model_shape,
    shape_of,
)
