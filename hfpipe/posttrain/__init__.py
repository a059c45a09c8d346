"""What the TRL stages (sft, preference, rl) share: ``data`` (dataset mixtures, message validation), ``templates``
(the training chat template), ``trainer`` (the recipe keys and TRL arguments every stage has, the save-and-check
tail, the dry-run description), ``launch`` (``accelerate launch`` of a stage's ranks and their worker entry point,
``python -m hfpipe.posttrain``; pretraining uses it too) and ``checkpoint`` (atomic trainer checkpoints, exact
resume, SIGTERM/SIGINT)."""
