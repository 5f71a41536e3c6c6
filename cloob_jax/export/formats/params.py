"""`--format=params`: OUT.npz, numpy arrays named by their '/'-joined linen paths
('params/visual/...', 'batch_stats/...'), the way big_vision stores params; every tower."""

from __future__ import annotations

import io

from cloob_jax.export import registry
from cloob_jax.export import writing


def load_hint(name: str, config, output: str) -> str:
  del name, config
  return (f"numpy.load({output!r}) -> '/'-joined linen paths; metadata in "
          f"{writing.side_json(output)}")


@registry.register("params", suffixes=(".npz",), clip_towers=False, load_hint=load_hint)
def write(variables, config, info) -> bytes:
  del config, info  # the metadata goes beside the file, as OUT.json
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cloob_jax.interop import keymap  # pylint: disable=g-import-not-at-top
  arrays = {"/".join((collection,) + path): np.asarray(value)
            for collection, path, value in keymap.leaves(variables)}
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()
