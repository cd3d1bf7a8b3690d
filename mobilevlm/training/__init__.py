"""Training the default model's parts on Shapes-VQA: ``python -m mobilevlm.training``.

The LDPv2 projector, a LoRA adapter on SmolLM2-135M and EfficientNet-Lite0's last
blocks learn; the rest stays frozen. One file each, in the order the data flows:
config (the recipe) -> data (cached encoder features, tokenized conversations, the
language replay) -> grounding (what each image token should say) -> losses -> loop
(stage 1, stage 2) -> __main__ (the command line); checkpoints saves and restores.
language_check measures how much of the LLM's language the trained model keeps.
"""
