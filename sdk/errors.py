"""The SDK's own exceptions: integrators catch FaceSDKError (or one of these) and nothing else.

Each also derives from the built-in it refines (ValueError, RuntimeError, ...), so generic
handlers keep working.
"""

from __future__ import annotations


class FaceSDKError(Exception):
    """Base of every error the SDK raises on purpose."""


class InvalidImageError(FaceSDKError, ValueError):
    """An input image is missing, unreadable, corrupt, of the wrong type, shape or size."""


class GalleryError(FaceSDKError, RuntimeError):
    """The gallery file is corrupt, foreign, locked, or the operation is not possible."""


class ModelMismatchError(GalleryError):
    """The gallery holds embeddings of another model (or dimension) than the one in use."""


class BackendUnavailableError(FaceSDKError, RuntimeError):
    """A requested backend or execution provider is not available on this machine."""
