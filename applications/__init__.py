"""Video ResNets with non-local blocks, and the non-local Mask R-CNN."""
