"""Networks (nn.Modules only): backbones, the CAM classifier, segmentation heads."""
