"""Plain `nn.Module`s of the DeepLabV3+ family; the training logic lives one level up."""
from .deeplab import DeepLabV3Plus

__all__ = ["DeepLabV3Plus"]
