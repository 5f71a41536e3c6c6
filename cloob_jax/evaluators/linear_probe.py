"""Linear probe: multinomial logistic regression on frozen image embeddings.

    evals.probe = ConfigDict(type='linear_probe', log_steps=10000,
                             train_data=dict(source='folder', path='/data/x/train'),
                             test_data=dict(source='folder', path='/data/x/test'))

The L2 strength is chosen on a validation split (`val_data`, or a random `val_fraction` of
the training set) from a log grid, by validation top-1 (ties go to the stronger penalty);
the probe is then refit on train + validation and scored on the test set. Features are
standardised with the train + validation statistics (no labels involved). The fit is a
full-batch L-BFGS in jax (optax), compiled once and reused for every strength.
Yields top1 (test), val_top1 and l2 (the chosen strength).

On several processes each one embeds its share of every split's images; the embeddings and
labels are gathered to every process (`common.embed_labelled`), which all fit the same probe.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cloob_jax.evaluators import common
from cloob_jax.evaluators import sources

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def _fit(x, y, weights, l2, *, num_classes: int, max_iter: int, tol: float = 1e-6):
  """L-BFGS on mean_w(cross-entropy) + l2/2 ||W||^2.

  Args:
    x: float32 [n, d] features; y: int32 [n] labels; weights: float32 [n] per-example weights
      (0 leaves a row out, so one compiled function serves every split); l2: scalar.

  Returns:
    {'w': [d, num_classes], 'b': [num_classes]}.
  """

  def loss(params):
    logits = x @ params["w"] + params["b"]
    ce = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0]
    return (weights * ce).sum() / weights.sum() + 0.5 * l2 * (params["w"] ** 2).sum()

  params = {"w": jnp.zeros((x.shape[1], num_classes), x.dtype),
            "b": jnp.zeros((num_classes,), x.dtype)}
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(params, updates), state

  def unfinished(carry):
    _, state = carry
    count = optax.tree_utils.tree_get(state, "count")
    grad = optax.tree_utils.tree_get(state, "grad")
    return (count == 0) | ((count < max_iter) & (optax.tree_utils.tree_norm(grad) >= tol))

  params, _ = jax.lax.while_loop(unfinished, step, (params, opt.init(params)))
  return params


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float,
                 weights: np.ndarray | None = None, max_iter: int = 500) -> dict[str, np.ndarray]:
  """Multinomial logistic regression: x float [n, d], y int [n] -> {'w': [d, C], 'b': [C]}."""
  x = jnp.asarray(x, jnp.float32)
  weights = jnp.ones(x.shape[0], jnp.float32) if weights is None else jnp.asarray(weights,
                                                                                  jnp.float32)
  params = _fit(x, jnp.asarray(y, jnp.int32), weights, jnp.float32(l2),
                num_classes=int(num_classes), max_iter=int(max_iter))
  return jax.tree.map(np.asarray, params)


def predict(params, x: np.ndarray) -> np.ndarray:
  return np.argmax(np.asarray(x, np.float32) @ params["w"] + params["b"], axis=-1)


def probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
          test: tuple[np.ndarray, np.ndarray], num_classes: int,
          l2_grid: Sequence[float] = DEFAULT_L2_GRID, max_iter: int = 500) -> dict[str, float]:
  """Chooses the L2 strength on `val`, refits on train + val, scores `test`.

  Each argument is (features float [n, d], labels int [n]).

  Returns:
    {'top1': test accuracy, 'val_top1': best validation accuracy, 'l2': chosen strength}.
  """
  x = np.concatenate([train[0], val[0]]).astype(np.float64)
  y = np.concatenate([train[1], val[1]])
  mean, std = x.mean(axis=0), x.std(axis=0) + 1e-8
  standardise = lambda f: ((np.asarray(f, np.float64) - mean) / std).astype(np.float32)
  x = standardise(x)
  n_train = train[0].shape[0]
  train_only = (np.arange(x.shape[0]) < n_train).astype(np.float32)
  x_val = x[n_train:]
  best = None
  for l2 in sorted(l2_grid):
    params = fit_logistic(x, y, num_classes, l2, train_only, max_iter)
    acc = float((predict(params, x_val) == val[1]).mean())
    if best is None or acc >= best[0]:  # >=: ties go to the stronger penalty
      best = (acc, l2)
  params = fit_logistic(x, y, num_classes, best[1], None, max_iter)
  top1 = float((predict(params, standardise(test[0])) == test[1]).mean())
  return {"top1": top1, "val_top1": best[0], "l2": best[1]}


@common.register("linear_probe")
class LinearProbe(common.Evaluator):
  """Logistic-regression probe of frozen image embeddings.

  Args:
    name: the task name.
    embedder: a common.Embedder.
    train_data, test_data: classification data configs (or sources); labels must agree.
    val_data: optional validation data; else `val_fraction` of train_data (random, `seed`).
    l2_grid: candidate L2 strengths.
    max_iter: L-BFGS iterations per fit.
  """

  def __init__(self, name: str, embedder, *, train_data, test_data, val_data=None,
               val_fraction: float = 0.2, l2_grid: Sequence[float] = DEFAULT_L2_GRID,
               max_iter: int = 500, seed: int = 0, num_threads: int | None = None):
    super().__init__(name, embedder)
    for data in (train_data, test_data) + ((val_data,) if val_data is not None else ()):
      sources.check(data)
    if val_data is None and not 0 < val_fraction < 1:
      raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    self._data = {"train": train_data, "val": val_data, "test": test_data}
    self._sources = None
    self.val_fraction = val_fraction
    self.l2_grid = tuple(float(v) for v in l2_grid)
    self.max_iter = int(max_iter)
    self.seed = int(seed)
    self.num_threads = num_threads

  def _open(self):
    if self._sources is None:
      self._sources = {
          split: sources.classification_source(data, self.embedder.image_size,
                                               f"{self.name} {split}")
          for split, data in self._data.items() if data is not None}
    return self._sources

  def run(self, variables) -> common.Metrics:
    opened = self._open()
    num_classes = len(opened["train"].classnames)
    embedded = {split: common.embed_labelled(self.embedder, variables, src,
                                             desc=f"{self.name} {split}",
                                             num_threads=self.num_threads)
                for split, src in opened.items()}
    train = embedded["train"]
    if "val" in embedded:
      val = embedded["val"]
    else:
      order = np.random.default_rng(self.seed).permutation(train[0].shape[0])
      n_val = max(1, int(round(self.val_fraction * len(order))))
      val = (train[0][order[:n_val]], train[1][order[:n_val]])
      train = (train[0][order[n_val:]], train[1][order[n_val:]])
    result = probe(train, val, embedded["test"], num_classes, self.l2_grid, self.max_iter)
    for metric in ("top1", "val_top1", "l2"):
      yield self._metric(metric, result[metric])
