"""`--format=openai`: OUT.pt, a flat OpenAI-layout state dict of tensors saved with
`torch.save`, as OpenAI's `clip.load(path)` (WiSE-FT, FLYP) and open_clip's
`build_model_from_openai_state_dict` read it.

Those loaders infer the architecture from the key shapes (64-wide heads, MLP ratio 4) and, in
OpenAI's code, always use QuickGELU; both cast the Conv/Linear weights to float16 on load.
"""

from __future__ import annotations

import io

from cloob_jax.export import registry


def check(name: str, config) -> None:
  v, t = config.vision.open_clip_cfg(), config.text
  problems = []
  if v["head_width"] != 64:
    problems.append(f"image heads {v['head_width']} wide")
  if t.width != 64 * t.heads:
    problems.append(f"text heads {t.width / t.heads:g} wide")
  if v.get("mlp_ratio", 4) != 4:
    problems.append(f"image MLP ratio {v['mlp_ratio']:g}")
  if t.mlp_ratio != 4:
    problems.append(f"text MLP ratio {t.mlp_ratio:g}")
  step = v["patch_size"] or 32  # a ModifiedResNet (no patches) downsamples 32 times
  if v["image_size"] % step:
    problems.append(f"image size {v['image_size']} not a multiple of {step}")
  if problems:
    raise registry.ExportError(
        f"--format=openai: its loaders infer the architecture from the key shapes (64-wide "
        f"heads, MLP ratio 4, image size = grid x patch), and {name} has "
        f"{', '.join(problems)}; use --format=open_clip or params")


def load_hint(name: str, config, output: str) -> str:
  del name
  act = "" if config.quick_gelu else (
      "; the model uses GELU, so build it with open_clip.model."
      "build_model_from_openai_state_dict(sd, quick_gelu=False): OpenAI's clip.load "
      "always builds QuickGELU")
  return (f"torch.load({output!r}) -> an OpenAI-layout state dict (clip.load accepts the "
          f"path){act}")


@registry.register("openai", suffixes=(".pt", ".pth", ".bin"), check=check, load_hint=load_hint)
def write(variables, config, info) -> bytes:
  del info  # beside the file, as OUT.json
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cloob_jax.interop import keymap  # pylint: disable=g-import-not-at-top
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise registry.ExportError("--format=openai writes a torch file: pip install torch") from e
  buffer = io.BytesIO()
  torch.save({k: torch.from_numpy(np.asarray(v, np.float32, order="C"))
              for k, v in keymap.to_state_dict(variables, config).items()}, buffer)
  return buffer.getvalue()
