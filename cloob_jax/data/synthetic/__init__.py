"""The embedded default dataset: a procedural world of coloured shapes with alt-text captions.

Ships as code, needs no files and no network. Every example is a scene of one to three
objects (colour, shape, size, grid cell) on a background, with a caption that mentions a
random subset of the scene and is always true of it. A fixed set of colour-shape pairs never
appears in training, so zero-shot accuracy on them measures composition.

Modules, by job:
  world.py      the vocabulary: colours, shapes, sizes, positions, backgrounds and the words
                for each, the held-out combinations, the splits.
  scenes.py     `Scene`, `sample_scene`, `family_member` (minimal pairs), `scene_labels`,
                and `Draws`, the uniform draws every random choice comes from.
  rendering.py  `render`: shapes as signed distance tables, drawn anti-aliased.
  captions.py   the caption grammar: `caption`, `CAPTION_MENTION`, `caption_mention`.
  source.py     `SyntheticWorld`, the grain source of examples (its fields, families, and
                its `train_shuffle` for the training pipeline).
  families.py   `shuffle_families`: a training order of whole families (imports grain, so
                it is imported when a pipeline asks for it, not here).
  tasks.py      `ZeroShotTask`, `zeroshot_tasks`, `task_examples`, `retrieval_examples`,
                `attribute_examples` (with `ATTRIBUTES`, `SCENE_ATTRIBUTES`).

Everything is a pure function of (seed, split, index): each example derives its own numpy
Generator, never global state, so grain workers, restarts and different hosts all see the
same data. The names below are the package's interface: `synthetic.SyntheticWorld`, ...
"""

from cloob_jax.data.synthetic.captions import CAPTION_MENTION
from cloob_jax.data.synthetic.captions import caption
from cloob_jax.data.synthetic.captions import caption_mention
from cloob_jax.data.synthetic.rendering import render
from cloob_jax.data.synthetic.scenes import Scene
from cloob_jax.data.synthetic.scenes import SceneObject
from cloob_jax.data.synthetic.scenes import family_member
from cloob_jax.data.synthetic.scenes import sample_scene
from cloob_jax.data.synthetic.scenes import scene_labels
from cloob_jax.data.synthetic.source import SyntheticWorld
from cloob_jax.data.synthetic.source import check_family_size
from cloob_jax.data.synthetic.tasks import ATTRIBUTES
from cloob_jax.data.synthetic.tasks import SCENE_ATTRIBUTES
from cloob_jax.data.synthetic.tasks import ZeroShotTask
from cloob_jax.data.synthetic.tasks import attribute_examples
from cloob_jax.data.synthetic.tasks import retrieval_examples
from cloob_jax.data.synthetic.tasks import task_examples
from cloob_jax.data.synthetic.tasks import zeroshot_tasks
from cloob_jax.data.synthetic.world import BACKGROUNDS
from cloob_jax.data.synthetic.world import COLOUR_RGB
from cloob_jax.data.synthetic.world import COLOUR_SYNONYMS
from cloob_jax.data.synthetic.world import COLOURS
from cloob_jax.data.synthetic.world import GENERIC_NOUNS
from cloob_jax.data.synthetic.world import HELDOUT_COMBOS
from cloob_jax.data.synthetic.world import MAX_OBJECTS
from cloob_jax.data.synthetic.world import POSITIONS
from cloob_jax.data.synthetic.world import SHAPE_NOUNS
from cloob_jax.data.synthetic.world import SHAPES
from cloob_jax.data.synthetic.world import SIZE_WORDS
from cloob_jax.data.synthetic.world import SIZES
