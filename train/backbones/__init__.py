"""Backbones: networks that map an aligned face chip to an embedding.

``dlib_resnet.DlibResNet``: dlib's ResNet-29, converted from dlib's model file. Modules are not
imported here, so ``python -m train.backbones.dlib_resnet`` runs without runpy's double import.
"""
