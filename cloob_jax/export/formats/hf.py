"""`--format=hf`: a `transformers.CLIPModel` directory (config.json, model.safetensors,
preprocessor_config.json, tokenizer files). ViT towers with CLIP's 49408-token vocabulary;
hidden_act as trained. The key and config mapping is `cloob_jax/interop/hf.py`."""

from __future__ import annotations

from cloob_jax.export import encode
from cloob_jax.export import registry

WEIGHTS = "model.safetensors"


def check(name: str, config) -> None:
  if config.vision.kind != "vit":
    raise registry.ExportError(
        f"--format=hf: {name} has a ModifiedResNet image tower, which Hugging Face's "
        "CLIPModel does not have (ViT only); it exports to --format=open_clip, openai or params")
  if config.text.vocab_size != 49408:
    raise registry.ExportError(
        f"--format=hf: {name} has a text vocabulary of {config.text.vocab_size}, not CLIP's "
        "49408 BPE tokens that the exported tokenizer holds; use --format=open_clip or params")


def load_hint(name: str, config, output: str) -> str:
  del name, config
  return f"transformers.CLIPModel.from_pretrained({output!r}), CLIPTokenizer likewise"


@registry.register("hf", check=check, load_hint=load_hint)
def write(variables, config, info) -> dict[str, bytes]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cloob_jax.interop import hf  # pylint: disable=g-import-not-at-top
  from cloob_jax.interop import keymap  # pylint: disable=g-import-not-at-top
  state_dict = keymap.to_state_dict(variables, config)
  pre = encode.preprocess_cfg(config)
  files = {WEIGHTS: encode.safetensors_bytes(hf.to_hf_state_dict(state_dict), info)}
  files.update({k: v.encode("utf-8")
                for k, v in hf.tokenizer_files(config.text.context_length).items()})
  files[hf.PREPROCESSOR_CONFIG] = encode.json_bytes(
      hf.preprocessor_config(pre["size"], pre["mean"], pre["std"]))
  logit_scale = float(np.asarray(variables["params"]["logit_scale"]))
  files["config.json"] = encode.json_bytes(hf.config(config, logit_scale))  # the config last
  return files
