"""``python -m rmlab.data <tool> [key=value ...]``: run one data tool, composed by Hydra like training.

Tools (``conf/tool/<tool>.yaml``): ``stats``, ``decontaminate``, ``select``, ``select_magpie``,
``rm_filter``. The tool name may also be given as ``tool=<tool>``; tool keys are set as ``tool.<key>=...``.
Each run writes its dataset and ``report.md`` / ``report.json`` into ``outputs/data/<tool>/<date>_<time>/``.
Only Hydra, OmegaConf and the tool schemas are imported before the config is valid.
"""

from __future__ import annotations

import importlib
import importlib.resources
import sys

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rmlab.config import ConfigError
from rmlab.data.recipe.config import TOOL_SCHEMAS, register_tool_configs

register_tool_configs()
RUNNERS = {schema: f"rmlab.data.recipe.{name}" for name, schema in TOOL_SCHEMAS.items()}


def tool_argv(argv: list[str]) -> list[str]:
    """``prog <tool> ...`` → ``prog ... tool=<tool>`` (the tool must be the first argument; the override goes
    last so that Hydra's flags such as ``-m`` may follow the tool name)."""
    if len(argv) > 1 and not argv[1].startswith("-") and "=" not in argv[1]:
        return [argv[0], *argv[2:], f"tool={argv[1]}"]
    return argv


def tools() -> list[str]:
    return sorted(entry.name[:-5] for entry in importlib.resources.files("rmlab.conf").joinpath("tool").iterdir()
                  if entry.name.endswith(".yaml"))


def usage() -> str:
    return ("usage: python -m rmlab.data <tool> [tool.<key>=<value> ...] [hydra options]\n"
            f"tools: {', '.join(tools())}\n"
            "help on one tool (its keys and defaults): python -m rmlab.data <tool> --cfg job")


@hydra.main(version_base="1.3", config_path="pkg://rmlab.conf", config_name="data_tools")
def main(cfg: DictConfig) -> None:
    from rmlab.data.formats import DataError

    try:
        tool_cfg = OmegaConf.to_object(cfg.tool)
    except (ConfigError, OmegaConfBaseException) as err:
        print(f"rmlab.data: config error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        importlib.import_module(RUNNERS[type(tool_cfg)]).run(tool_cfg)
    except (DataError, ConfigError) as err:
        print(f"rmlab.data: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    sys.argv = tool_argv(sys.argv)
    if not any(arg.startswith("tool=") for arg in sys.argv[1:]):
        asked = bool({"-h", "--help"} & set(sys.argv))
        print(usage(), file=sys.stdout if asked else sys.stderr)
        sys.exit(0 if asked else 2)
    main()
