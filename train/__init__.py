"""PyTorch training: datasets, backbones, triplet/MLS losses, mining, trainer."""
