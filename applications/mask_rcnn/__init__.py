"""Mask R-CNN with a non-local ResNet backbone, registered with TF Model Garden."""
