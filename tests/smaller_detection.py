"""The network the tests that start `nonlocal-train-detection` train.

Those tests check the command (stopping, resuming, skipping bad records,
evaluating, exporting), not the network, so they train R18 at 128x128 in place
of the shipped tiny YAMLs' R50 at 256x256 (the non-local block kept): it
builds, traces and exports about a quarter sooner. Measured alone on 2 cores:
the two-worker stop-and-resume test 79 -> 58 s, the hang-up test 104 -> 76 s
(with 60 steps; it trains 90 now).
"""

# The front of a --params_override (Model Garden's KEY=VALUE pairs).
OVERRIDES = "task.model.backbone.resnet_nonlocal.model_id=18,task.model.input_size=[128,128,3],"
