"""Named sets of eval entries that several configs share."""

import ml_collections

from cloob_jax.data import synthetic


def synthetic_world(*, n=512, retrieval_n=512, probe_n=1024, seed=0, log_steps=1000,
                    probe=True, attributes=True) -> ml_collections.ConfigDict:
  """Every zero-shot task of the synthetic world, retrieval, the embedding analyses, a
  linear probe of the shape of a single object (the hard feature, own images: seed + 1) and
  the attribute probes of image and text embeddings (probe_n scenes; evaluators/attribute_probe.py)."""
  evals = ml_collections.ConfigDict(sort_keys=False)  # run and report in this order
  for task in synthetic.zeroshot_tasks():
    evals[task] = dict(type="zeroshot_classification", log_steps=log_steps,
                       data=dict(source="synthetic", task=task, num_examples=n, seed=seed))
  evals.retrieval = dict(
      type="retrieval", log_steps=log_steps,
      data=dict(source="synthetic_retrieval", num_examples=retrieval_n, seed=seed,
                captions_per_image=5))
  evals.embedding_analysis = dict(
      type="embedding_analysis", log_steps=log_steps,
      data=dict(source="synthetic_retrieval", num_examples=retrieval_n, seed=seed,
                captions_per_image=1))
  if attributes:
    evals.attribute_probe = dict(type="attribute_probe", log_steps=log_steps,
                                 num_examples=probe_n, seed=seed + 2)
  if probe:
    evals.shape_probe = dict(
        type="linear_probe", log_steps=log_steps,
        train_data=dict(source="synthetic", task="shape", num_examples=probe_n, seed=seed + 1),
        test_data=dict(source="synthetic", task="shape", num_examples=n, seed=seed))
  return evals
