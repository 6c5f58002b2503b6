"""The model: every block, the U-Net, the depthwise paths, adding a variant, costs and ERF."""
