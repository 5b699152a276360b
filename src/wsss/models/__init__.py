"""Networks (nn.Modules only): backbones, the CAM classifier, segmentation heads."""

# The backbone modules register themselves in `backbones.BACKBONES` on import; importing them
# here (not from `backbones.py`, which they import) keeps the import graph free of cycles.
from wsss.models import backbones, resnet38, resnet_caffe, vgg  # noqa: F401
