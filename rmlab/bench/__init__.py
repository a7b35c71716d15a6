"""``python -m rmlab.bench``: rmlab's training loop against TRL's RewardTrainer, side by side.

Every configuration runs in its own subprocess (so peak RSS is per run), and the runs are
interleaved round by round (``gemm rmlab trl-best``, then the reverse order, ...; by default 3 rounds of
the configurations the targets name, ``rmlab`` and ``trl-best``; ``--configs`` adds ``trl-defaults`` or
``rmlab-padded``), so a machine whose load drifts treats every side alike, and every ratio is taken per
round and reported as the median with the spread of the per-round values. Each round also measures the sustained
fp32 GEMM throughput of the model's own matrix shapes (``torch.mm``, forward, input-gradient and
weight-gradient products of the attention/MLP projections at a typical batch's token count); the best of these
measurements is the run's GEMM peak, against which every round's share is taken.

Both sides train on the same pairs, tokenized once by rmlab's chat template: the first
``--max-pairs`` rows of ``--data``, keeping the pairs whose chosen and rejected sequences fit
``--max-length`` untruncated (TRL drops the others; rmlab would truncate them). TRL gets the token
ids (``chosen_ids`` / ``rejected_ids``), so it neither re-renders nor adds an EOS. Same model,
micro-batch of ``--batch-size`` pairs per optimizer step, learning rate, fp32, one epoch, gradient
clipping at 1.0, dropout off (TRL's default ``disable_dropout=True``; rmlab: ``model.disable_dropout=true``, its default).

* ``rmlab``: the Hydra config (``model=minilm data=local logger=none callbacks=none``) composed as
  ``python -m rmlab`` composes it, then ``rmlab.train.build_trainer``, ``build_reward_model``,
  ``PreferenceDataModule`` and ``RewardModule`` and ``trainer.fit``. Differences from a user's run:
  no held-out split (``val_fraction=0``: all pairs train, as on the TRL side), no checkpoint
  (``trainer.enable_checkpointing=false``; TRL: ``save_strategy="no"``), no logger, no progress bar,
  and no evaluation/export after the fit.
* ``trl-defaults``: ``RewardConfig`` defaults (activation checkpointing on, random batches), but
  ``bf16=False`` (fp32, as the reference), the same lr/batch/max_length, no saving or reporting.
* ``trl-best``: plus ``train_sampling_strategy="group_by_length"`` over ``max(len(chosen), len(rejected))``
  and ``activation_checkpointing=False``.

Measured per run: the training loop's wall time (first step to last, Lightning ``on_train_start`` →
``on_train_end``, Trainer ``on_train_begin`` → ``on_train_end``), pairs/s and real tokens/s, the
real-token fraction of the processed batches (real tokens / tokens fed to the model, padding
included), achieved FLOP/s (``6 · N_non-embedding · real tokens / s``, less the last-layer work that packed
encoders skip: the FLOPs actually run), peak RSS of the process
(``wait4``), seconds from launch to the first step, and evaluation pairs/s afterwards (rmlab:
``rmlab.scoring.score_pairs``, as its evaluation runs; TRL: ``trainer.evaluate``).
"""
