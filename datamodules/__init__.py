"""PASCAL VOC 2012 + SBD data: reading, the paper's augmentation, the LightningDataModule, generated data."""
