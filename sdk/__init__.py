"""Face-recognition SDK for edge devices (FaceNet embeddings, PFE scoring).

    import sdk
    v = sdk.Verifier()                  # default model, best detector, gallery file
    v.enroll("alice", ["alice1.jpg", "alice2.jpg"])
    for m in v.match(frame):            # frame: BGR uint8 array or image path
        print(m.identity, m.distance, m.accepted)
    labels = sdk.cluster(image_paths)   # group faces by identity
"""

from sdk.clustering import cluster
from sdk.errors import BackendUnavailableError, FaceSDKError, GalleryError, InvalidImageError, ModelMismatchError
from sdk.verifier import FaceStream, LowQualityError, Match, NoFaceError, Verification, Verifier

__version__ = "0.1.0"

__all__ = [
    "cluster",
    "FaceStream",
    "LowQualityError",
    "BackendUnavailableError",
    "FaceSDKError",
    "GalleryError",
    "InvalidImageError",
    "Match",
    "ModelMismatchError",
    "NoFaceError",
    "Verification",
    "Verifier",
]
