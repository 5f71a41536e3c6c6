"""Evaluation data: labelled images for classification, captioned images for retrieval.

A data config (a dict or ConfigDict, the `data=` of an evaluator) names where the data is:

  source='synthetic', task='colour', num_examples=512, seed=0        # synthetic.task_examples
  source='synthetic_retrieval', num_examples=256, captions_per_image=5  # retrieval_examples
  source='folder', path=DIR                 # DIR/<class>/**/<image>; class = folder name
  source='clip_benchmark', path=DIR, split='test'   # webdataset tars: KEY.jpg|png|webp + KEY.cls
  source='tfds', path=NAME, split='test', data_dir=None   # tfds.data_source (ArrayRecord);
                                            # tfds_split=..., when TFDS names the split otherwise
  source='records', path=DIR                # records.ImageTextSource shards, for retrieval
  source='arrays', images=..., labels=..., classnames=...  # in memory (or captions=...)
  path=... without source                   # detected: see `registry.detect_source`

Common keys: `num_examples` (an evenly spread subset, for quick evals), `classnames` and
`templates` (a list, a built-in name or a file path), `default_classnames` and
`default_templates` (used when neither the user nor the dataset gives any; the order is in
`names.names_and_templates`). `path=None` with a `hint` marks a dataset the user has not
located: `check` raises `DataUnavailable(hint)` and the eval binary skips it.

One module per layout (folder, clip_benchmark, tfds, records, synthetic, arrays), each
registering itself in `registry`; a new layout is one module registered with
`@registry.register(NAME, detect=...)` and imported (here, or by whoever uses it). Images are
batched by `batches.image_batches`.
"""

# The layouts register themselves on import (their detection order is `registry`'s).
from cloob_jax.evaluators.sources import arrays
from cloob_jax.evaluators.sources import base
from cloob_jax.evaluators.sources import batches
from cloob_jax.evaluators.sources import clip_benchmark
from cloob_jax.evaluators.sources import folder
from cloob_jax.evaluators.sources import names
from cloob_jax.evaluators.sources import records
from cloob_jax.evaluators.sources import registry
from cloob_jax.evaluators.sources import synthetic
from cloob_jax.evaluators.sources import tfds
from cloob_jax.evaluators.sources.base import ArrayClassification
from cloob_jax.evaluators.sources.base import ArrayRetrieval
from cloob_jax.evaluators.sources.base import ClassificationSource
from cloob_jax.evaluators.sources.base import DataUnavailable
from cloob_jax.evaluators.sources.base import IMAGE_EXTENSIONS
from cloob_jax.evaluators.sources.base import RetrievalSource
from cloob_jax.evaluators.sources.base import VIDEO_EXTENSIONS
from cloob_jax.evaluators.sources.batches import image_batches
from cloob_jax.evaluators.sources.clip_benchmark import CLASSNAMES_FILE
from cloob_jax.evaluators.sources.clip_benchmark import ClipBenchmarkClassification
from cloob_jax.evaluators.sources.clip_benchmark import TEMPLATES_FILE
from cloob_jax.evaluators.sources.folder import FolderClassification
from cloob_jax.evaluators.sources.names import Carried
from cloob_jax.evaluators.sources.names import names_and_templates
from cloob_jax.evaluators.sources.records import RecordsRetrieval
from cloob_jax.evaluators.sources.registry import check
from cloob_jax.evaluators.sources.registry import classification_source
from cloob_jax.evaluators.sources.registry import detect_source
from cloob_jax.evaluators.sources.registry import register
from cloob_jax.evaluators.sources.registry import retrieval_source
from cloob_jax.evaluators.sources.registry import unregister
from cloob_jax.evaluators.sources.synthetic import SyntheticClassification
from cloob_jax.evaluators.sources.tfds import TfdsClassification

__all__ = [
    "ArrayClassification", "ArrayRetrieval", "CLASSNAMES_FILE", "Carried",
    "ClassificationSource", "ClipBenchmarkClassification", "DataUnavailable",
    "FolderClassification", "IMAGE_EXTENSIONS", "RecordsRetrieval", "RetrievalSource",
    "SyntheticClassification", "TEMPLATES_FILE", "TfdsClassification", "VIDEO_EXTENSIONS",
    "arrays", "base", "batches", "check", "classification_source", "clip_benchmark",
    "detect_source", "folder", "image_batches", "names", "names_and_templates", "records",
    "register", "registry", "retrieval_source", "synthetic", "tfds", "unregister",
]
