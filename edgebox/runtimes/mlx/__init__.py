"""MLX runtime: MLX-format model directories through mlx-lm (Metal on Apple, CPU elsewhere)."""

from edgebox.runtimes.mlx.engine import MlxConfig
from edgebox.runtimes.mlx.runtime import MlxRuntime

__all__ = ["MlxConfig", "MlxRuntime"]
