"""The model contract shared by training (which writes it) and serving (which validates it).

Only stdlib, pydantic and numpy may be imported here: training imports this package, and the
serving image must not need torch or the `tokenizers` library to read a model.
"""

from __future__ import annotations

from service.contract.artifact import (
    MANIFEST_FILE,
    ONNX_FILE,
    ArtifactError,
    load_artifact,
    load_manifest,
    save_artifact,
    sha256_file,
)
from service.contract.manifest import (
    SCHEMA_VERSION,
    CharTokenizerSpec,
    IOSpec,
    ModelManifest,
    SamplingDefaults,
    StateTensor,
    TrainingSummary,
    Variant,
    WordTokenizerSpec,
)
from service.contract.tokenizers import (
    CharTokenizer,
    Tokenizer,
    UnknownCharactersError,
    WordTokenizer,
    tokenizer_from_spec,
)

__all__ = [
    "MANIFEST_FILE",
    "ONNX_FILE",
    "SCHEMA_VERSION",
    "ArtifactError",
    "CharTokenizer",
    "CharTokenizerSpec",
    "IOSpec",
    "ModelManifest",
    "SamplingDefaults",
    "StateTensor",
    "Tokenizer",
    "TrainingSummary",
    "UnknownCharactersError",
    "Variant",
    "WordTokenizer",
    "WordTokenizerSpec",
    "load_artifact",
    "load_manifest",
    "save_artifact",
    "sha256_file",
    "tokenizer_from_spec",
]
