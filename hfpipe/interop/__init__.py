"""Recipes and cards other Hugging Face projects can use.

- ``hfpipe.Recipe.load(path_or_card)`` (hfpipe.recipe) and the stage sections' ``to_*`` methods give the objects the
  libraries take, built by the same functions hfpipe's stages run with: ``recipe.sft.to_trl()`` (trl.SFTConfig),
  ``recipe.preference.to_trl()`` (DPO/KTO/ORPOConfig), ``recipe.rl.to_trl()`` (GRPO/RLOOConfig; ``reward_model=True``:
  RewardConfig), ``recipe.pretrain.to_transformers()`` (the model config), ``recipe.pretrain.to_accelerate()``,
  ``recipe.eval.to_lm_eval()`` (``lm_eval.simple_evaluate`` keyword arguments). Not yet: ``recipe.data.to_datatrove()``.
- ``hfpipe export`` (hfpipe.interop.export): files the upstream command lines accept as they are.
- ``hfpipe import`` (hfpipe.interop.importer): alignment-handbook / open-r1 recipes -> an hfpipe recipe.
- Committed cards (hfpipe.interop.cards): config fingerprints, and whether a committed card is stale.

Run the export of one stage: ``hfpipe export recipes/tiny.yaml --stage sft --to trl out/sft``.
"""
