"""What the TRL stages (sft, preference, rl) share: ``data`` (dataset mixtures, message validation), ``templates``
(the training chat template) and ``trainer`` (the recipe keys and TRL arguments every stage has, the save-and-check
tail, the dry-run description)."""
