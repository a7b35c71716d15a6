"""The data recipe of Skywork-Reward as Hydra-configured tools (``python -m rmlab.data <tool>``).

Modules: ``config`` (tool schemas), ``io`` (records, datasets, reports), ``stats`` (Table 1, Figure 1),
``decontaminate`` (Table 4), ``select`` (top fraction by score), ``rm_filter`` (keep what a reward model
ranks correctly), ``mixture`` (:func:`load_mixture`: sources with caps, weights and filters).
"""

from rmlab.data.recipe.mixture import load_mixture

__all__ = ["load_mixture"]
