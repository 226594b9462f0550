"""Option values known before torch is imported.

The command line shows and checks these (``sktransfer --help`` answers without importing
torch, timm or scikit-learn), and the estimators, the backbone module and the datasets
use the same objects: the extractor's defaults, the global poolings, the preprocessing
presets (timm's constants, pinned against timm by ``tests/test_first_hour.py``), the image
file endings and the chunk size of a distributed run.
"""

DEFAULT_MODEL = "efficientnet_b0.ra_in1k"
DEFAULT_WEIGHTS = "pretrained"
DEFAULT_BATCH_SIZE = 32
DEFAULT_DEVICE = "auto"
CHUNK_SIZE = 256

POOLINGS = ("avg", "max", "avgmax", "token")

# Named normalisations of the ``preprocessing`` parameter: timm.data's constants.
PREPROCESSING_PRESETS = {
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    "inception": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    "clip": {
        "mean": (0.48145466, 0.4578275, 0.40821073),
        "std": (0.26862954, 0.26130258, 0.27577711),
    },
}

IMAGE_EXTENSIONS = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)
