"""Layout 'records' (retrieval): an image-caption ArrayRecord directory of the training format.

Reads `records.ImageTextSource(path)` (shards + manifest.json, as `cloob_jax.data.convert`
writes them); `num_examples` caps the number of images. Detected by its manifest.json.
"""

from __future__ import annotations

from cloob_jax import paths
from cloob_jax.data import records as records_lib
from cloob_jax.evaluators.sources import base
from cloob_jax.evaluators.sources import registry


class RecordsRetrieval(base.RetrievalSource):
  """An image-caption ArrayRecord directory (`records.ImageTextSource`).

  Records that share a key (one image written once per caption) become one image with all
  their captions; otherwise every record is one image with one caption.
  """

  def __init__(self, directory: str, max_images: int | None = None):
    self._source = records_lib.ImageTextSource(directory)
    first: dict[str, int] = {}
    self._index: list[int] = []
    self.captions = []
    chunk = 1024  # records read per call: one seek per record is slow on big directories
    for start in range(0, len(self._source), chunk):
      indices = list(range(start, min(start + chunk, len(self._source))))
      for i, r in zip(indices, self._source.__getitems__(indices)):
        if r["key"] in first:
          self.captions[first[r["key"]]].append(r["caption"])
          continue
        if max_images is not None and len(self._index) >= max_images:
          continue
        first[r["key"]] = len(self._index)
        self._index.append(i)
        self.captions.append([r["caption"]])

  def get(self, index):
    data = self._source[self._index[index]]["image_bytes"]
    try:
      return records_lib.decode_image(data)
    except records_lib.BadRecord as e:
      raise ValueError(f"cannot read image {index} of {self._source}: {e}") from e


def detect(path: str, split: str | None = None) -> bool:
  """A folder with a records manifest.json."""
  del split
  return (paths.path(path, "eval data path").is_dir()
          and paths.exists(records_lib.manifest_path(path)))


@registry.register("records", task="retrieval", detect=detect, order=20)
def open_records(data: dict, image_size: int, name: str) -> RecordsRetrieval:
  del image_size, name  # resized when batched
  return RecordsRetrieval(data["path"], data.get("num_examples"))
