"""Face-recognition SDK for edge devices (FaceNet embeddings, PFE scoring)."""

__version__ = "0.1.0"
