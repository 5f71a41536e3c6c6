"""Hugging Face `transformers.CLIPModel`'s layout, as a renaming of the open_clip layout.

A ViT two-tower model only (HF's CLIP has no ModifiedResNet). The open_clip state dict
(`keymap.to_state_dict`) is renamed key by key, the way transformers' own conversion script
(`convert_clip_original_pytorch_to_hf.py`) maps OpenAI's weights:

- `[visual.]transformer.resblocks.N.*` -> `{vision,text}_model.encoder.layers.N.*`, with
  `ln_1/ln_2` -> `layer_norm1/2`, `mlp.c_fc/c_proj` -> `mlp.fc1/fc2`, and torch's fused
  `attn.in_proj_{weight,bias}` split into `self_attn.{q,k,v}_proj` (in that order);
- embeddings, `ln_pre` -> `pre_layrnorm` (HF's spelling), `ln_post` -> `post_layernorm`,
  `ln_final` -> `final_layer_norm`;
- `visual.proj` / `text_projection` ([width, embed], used as x @ P) become the bias-free
  Linear layers `visual_projection` / `text_projection`, whose weight is the transpose.

`config(model_config, ...)` is the matching `config.json`; `tokenizer_files()` the CLIP BPE
tokenizer built from the vocabulary the package ships (the one `cloob_jax.data.tokenizer`
reads), for `CLIPTokenizer.from_pretrained`.
"""

import gzip
import importlib.resources
import json
import re

import numpy as np

from cloob_jax.data import tokenizer as tokenizer_lib

# (open_clip key pattern, HF key) for the keys that map one to one.
_BLOCK = [  # inside a residual block; group 1 is the block's index
    (r"ln_1\.(weight|bias)", r"layer_norm1.\2"),
    (r"ln_2\.(weight|bias)", r"layer_norm2.\2"),
    (r"attn\.out_proj\.(weight|bias)", r"self_attn.out_proj.\2"),
    (r"mlp\.c_fc\.(weight|bias)", r"mlp.fc1.\2"),
    (r"mlp\.c_proj\.(weight|bias)", r"mlp.fc2.\2"),
]
_RENAMES = [
    (r"token_embedding\.weight", "text_model.embeddings.token_embedding.weight"),
    (r"positional_embedding", "text_model.embeddings.position_embedding.weight"),
    (r"ln_final\.(weight|bias)", r"text_model.final_layer_norm.\1"),
    (r"visual\.class_embedding", "vision_model.embeddings.class_embedding"),
    (r"visual\.conv1\.weight", "vision_model.embeddings.patch_embedding.weight"),
    (r"visual\.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    (r"visual\.ln_pre\.(weight|bias)", r"vision_model.pre_layrnorm.\1"),
    (r"visual\.ln_post\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"logit_scale", "logit_scale"),
]
for _torch, _hf in (("transformer", "text_model"), ("visual\\.transformer", "vision_model")):
  _RENAMES += [(_torch + r"\.resblocks\.(\d+)\." + a, _hf + r".encoder.layers.\1." + b)
               for a, b in _BLOCK]
_RENAMES = [(re.compile(a), b) for a, b in _RENAMES]
_IN_PROJ = re.compile(r"(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)")
_PROJECTIONS = {"visual.proj": "visual_projection.weight",
                "text_projection": "text_projection.weight"}

PREPROCESSOR_CONFIG = "preprocessor_config.json"


def to_hf_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """An open_clip ViT state dict -> CLIPModel's; every key must be mapped (ValueError)."""
  out = {}
  for key, value in state_dict.items():
    if key in _PROJECTIONS:
      out[_PROJECTIONS[key]] = np.asarray(value.T, order="C")
      continue
    match = _IN_PROJ.fullmatch(key)
    if match:
      tower = "vision_model" if match.group(1) else "text_model"
      prefix = f"{tower}.encoder.layers.{match.group(2)}.self_attn"
      for name, part in zip("qkv", np.split(value, 3, axis=0)):
        out[f"{prefix}.{name}_proj.{match.group(3)}"] = np.asarray(part, order="C")
      continue
    for pattern, replacement in _RENAMES:
      match = pattern.fullmatch(key)
      if match:
        out[match.expand(replacement)] = value
        break
    else:
      raise ValueError(f"no Hugging Face CLIPModel key for {key!r}")
  return out


def hidden_act(quick_gelu: bool) -> str:
  """HF's name of the tower activation: QuickGELU or torch's exact (erf) GELU."""
  return "quick_gelu" if quick_gelu else "gelu"


def config(model_config, logit_scale: float) -> dict:
  """CLIPModel's config.json for a ViT `models.ModelConfig`."""
  v, t = model_config.vision, model_config.text
  act = hidden_act(model_config.quick_gelu)
  return {
      "architectures": ["CLIPModel"],
      "model_type": "clip",
      "projection_dim": model_config.embed_dim,
      "logit_scale_init_value": float(logit_scale),
      "initializer_factor": 1.0,
      "dtype": "float32",
      "text_config": {
          "model_type": "clip_text_model",
          "vocab_size": t.vocab_size,
          "hidden_size": t.width,
          "intermediate_size": int(t.width * t.mlp_ratio),
          "num_hidden_layers": t.layers,
          "num_attention_heads": t.heads,
          "max_position_embeddings": t.context_length,
          "hidden_act": act,
          "layer_norm_eps": 1e-5,
          "projection_dim": model_config.embed_dim,
          # Pooling at the first end-of-text id, which is the highest id: our tower's argmax.
          "bos_token_id": tokenizer_lib.SOT_TOKEN,
          "eos_token_id": tokenizer_lib.EOT_TOKEN,
          "pad_token_id": tokenizer_lib.EOT_TOKEN,
      },
      "vision_config": {
          "model_type": "clip_vision_model",
          "hidden_size": v.width,
          "intermediate_size": int(v.width * v.mlp_ratio),
          "num_hidden_layers": v.layers,
          "num_attention_heads": v.width // v.head_width,
          "num_channels": 3,
          "image_size": v.image_size,
          "patch_size": v.patch_size,
          "hidden_act": act,
          "layer_norm_eps": 1e-5,
          "projection_dim": model_config.embed_dim,
      },
  }


def preprocessor_config(image_size: int, mean, std) -> dict:
  """CLIPImageProcessor's settings: bicubic resize of the short side, centre crop, CLIP's
  mean/std (the project's eval transform, `data.transforms.resize_center_crop`)."""
  return {
      "image_processor_type": "CLIPImageProcessor",
      "processor_class": "CLIPProcessor",
      "do_resize": True,
      "size": {"shortest_edge": image_size},
      "resample": 3,  # PIL bicubic
      "do_center_crop": True,
      "crop_size": {"height": image_size, "width": image_size},
      "do_rescale": True,
      "rescale_factor": 1 / 255,
      "do_normalize": True,
      "image_mean": list(mean),
      "image_std": list(std),
      "do_convert_rgb": True,
  }


# The start/end tokens under the names `cloob_jax.data.tokenizer` (and open_clip 3) give them,
# ids 49406 and 49407, so that the vocabulary is the tokenizer's own and a caption that spells
# one out tokenizes alike (OpenAI's Hugging Face files call them <|startoftext|>, <|endoftext|>).
BOS_TOKEN, EOS_TOKEN = tokenizer_lib._SPECIAL_TOKENS  # pylint: disable=protected-access


def tokenizer_files(context_length: int) -> dict[str, str]:
  """{file name: text} of a CLIPTokenizer with the ids of `cloob_jax.data.tokenizer`.

  vocab.json and merges.txt come from the BPE file the package ships, in the order the
  tokenizer builds its vocabulary (bytes, bytes + '</w>', merges, the two special tokens).
  Rows pad with the end-of-text id (OpenAI's Hugging Face convention); the text tower pools
  at the first one, so padding does not change an embedding.

  CLIPTokenizer (transformers 5) normalises with NFC, whitespace collapsing and lower-casing
  only: CLIP's ftfy and HTML-unescaping are not applied. Text they change ('&amp;', mojibake)
  gets other ids unless it is cleaned first with `cloob_jax.data.tokenizer.clean_text`.
  """
  data = importlib.resources.files("cloob_jax.data").joinpath(
      tokenizer_lib._BPE_FILE).read_bytes()  # pylint: disable=protected-access
  lines = gzip.decompress(data).decode("utf-8").split("\n")
  merges = lines[1:1 + tokenizer_lib._NUM_MERGES]  # pylint: disable=protected-access
  byte_chars = list(tokenizer_lib._byte_to_unicode().values())  # pylint: disable=protected-access
  vocab = byte_chars + [c + "</w>" for c in byte_chars]
  vocab += ["".join(m.split()) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
  if len(vocab) != tokenizer_lib.VOCAB_SIZE:
    raise ValueError(f"expected {tokenizer_lib.VOCAB_SIZE} tokens, built {len(vocab)}")
  special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
             "pad_token": EOS_TOKEN}
  return {
      "vocab.json": json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False),
      "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
      "tokenizer_config.json": json.dumps(dict(
          special, tokenizer_class="CLIPTokenizer", model_max_length=context_length,
          do_lower_case=True, errors="replace", add_prefix_space=False,
          clean_up_tokenization_spaces=False), indent=1),
      "special_tokens_map.json": json.dumps(special, indent=1),
  }
