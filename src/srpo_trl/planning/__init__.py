"""Memory and time of a recipe, estimated on the meta device before anything is downloaded (issue 28).

- [`Recipe`]: the settings that memory and time depend on.
- [`estimate`]: the [`Plan`]: weights by component and dtype, the training state sharded as the engine shards it,
  activations measured on meta tensors (`measure`), model FLOPs.
- `meta`: pipelines and rewards built from configs on the meta device, the text cache's shapes per family.
"""

from .estimate import Measured, Plan, Recipe, estimate
from .meta import SHIPPED, CannotSize

__all__ = ["SHIPPED", "CannotSize", "Measured", "Plan", "Recipe", "estimate"]
