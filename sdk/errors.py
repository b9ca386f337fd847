"""The SDK's own exceptions: integrators catch FaceSDKError (or one of these) and nothing else.

Each also derives from the built-in it refines (ValueError, RuntimeError, ...), so generic
handlers keep working.
"""

from __future__ import annotations


class FaceSDKError(Exception):
    """Base of every error the SDK raises on purpose."""


class InvalidArgumentError(FaceSDKError, ValueError, TypeError):
    """An argument of the wrong type or value: an identity name, a threshold, k, a colour order.
    Also a TypeError, so handlers written for the built-in it replaces keep working."""


class InvalidImageError(FaceSDKError, ValueError):
    """An input image is missing, unreadable, corrupt, of the wrong type, shape or size."""


class InvalidModelError(FaceSDKError, ValueError):
    """A model file that is not a facesdk model, or whose metadata this runtime must not trust
    (a threshold no unit-vector model allows, a table out of order, a graph that contradicts it)."""


class GalleryError(FaceSDKError, RuntimeError):
    """The gallery file is corrupt, foreign, locked, or the operation is not possible."""


class ModelMismatchError(GalleryError):
    """The gallery holds embeddings of another model (or dimension) than the one in use."""


class BackendUnavailableError(FaceSDKError, RuntimeError):
    """A requested backend or execution provider is not available on this machine."""


class EngineMismatchError(BackendUnavailableError):
    """A TensorRT engine cannot run here: built for another TensorRT or GPU, or its metadata is
    missing, corrupt or describes another file. The message holds the command that rebuilds it."""


class TensorRTError(FaceSDKError, RuntimeError):
    """A CUDA or TensorRT call failed while running an engine."""


class NoFaceError(FaceSDKError, ValueError):
    """An image that must hold a face (enrolment, verify, identify) holds none."""


class LowQualityError(FaceSDKError, ValueError):
    """A face is below the Verifier's ``min_quality`` where a good one is required (enrolment,
    identify)."""


class AmbiguousFaceError(FaceSDKError, ValueError):
    """An enrolment image holds several faces and the caller did not say which one to enrol
    (``face=`` an index or box, ``largest=True``; CLI ``--largest``)."""


class DuplicateFaceError(FaceSDKError, ValueError):
    """The face is already enrolled under another identity (``other``); ``force=True`` enrols it anyway."""

    def __init__(self, message: str, other: str | None = None) -> None:
        super().__init__(message)
        self.other = other


class InconsistentFaceError(FaceSDKError, ValueError):
    """The face does not agree with the rest of the identity's template (likely someone else);
    ``force=True`` enrols it anyway."""


class CentreUnavailableError(FaceSDKError, ConnectionError):
    """A site's centre (its HTTP service or its PostgreSQL) cannot be reached now; a replica keeps
    matching from its local copy and retries."""


class ChangeRefusedError(FaceSDKError, ValueError):
    """A site refuses a change: made for another model, or an add older than a removal of the
    identity (a removal wins)."""
