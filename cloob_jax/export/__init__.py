r"""Export: a trained model -> open_clip, Hugging Face, OpenAI or JAX params files.

  python -m cloob_jax.export --workdir=runs/demo --format=params --output=demo.npz
  python -m cloob_jax.export --workdir=DIR [--step=N] --format=open_clip --output=OUT_DIR
  python -m cloob_jax.export --checkpoint=RN50.safetensors --model=RN50 --format=openai \
      --output=rn50.pt [--overwrite]

The model comes from a training workdir (its latest checkpoint or --step; read as numpy on
any device topology, so a pod's run exports on a laptop) or from an open_clip / OpenAI state
dict read by `interop.open_clip.load` with the architecture --model. Formats, one module each
in `formats/` (what a format declares: `registry.py`):

- `open_clip` (`formats/open_clip.py`): a directory that
  `open_clip.create_model_and_transforms('local-dir:OUT')` loads; every CLIP tower.
- `hf` (`formats/hf.py`): a `transformers.CLIPModel` directory with its tokenizer; ViT towers.
- `openai` (`formats/openai.py`): OUT.pt, a flat OpenAI-layout state dict for `clip.load`
  (WiSE-FT, FLYP) and open_clip's `build_model_from_openai_state_dict`.
- `params` (`formats/params.py`): OUT.npz of '/'-joined linen paths, as big_vision stores
  params; every tower.

Every format records the model config, method, 1/tau, beta, step, source and the exporting
code's git commit (`record.py`; safetensors metadata under "cloob_jax", `INFO_FILE` in a
directory, OUT.json beside a file). Outputs are written under a temporary name and renamed
(a gs:// output object by object, the config last: `writing.py`). An existing output is
refused unless --overwrite; a tower that a format cannot hold is refused before anything is
read or written. The binary (`binary.py`): bad input ends with one line `error: ...` on stderr
and exit status 2.

    from cloob_jax import export
    export.export(variables, "ViT-B/32", config, "open_clip", "out", export.metadata(...))
"""

from cloob_jax.export import formats  # noqa: F401  the registered formats
from cloob_jax.export.binary import define_flags
from cloob_jax.export.binary import main
from cloob_jax.export.binary import run
from cloob_jax.export.formats.open_clip import CONFIG as OPEN_CLIP_CONFIG
from cloob_jax.export.formats.open_clip import WEIGHTS as OPEN_CLIP_WEIGHTS
from cloob_jax.export.record import metadata
from cloob_jax.export.registry import check_fits
from cloob_jax.export.registry import ExportError
from cloob_jax.export.registry import INFO_FILE
from cloob_jax.export.registry import names
from cloob_jax.export.registry import register
from cloob_jax.export.writing import export

FORMATS = names()  # the built-in formats; `names()` also lists any registered later
