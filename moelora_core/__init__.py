"""moelora_core: every MoE-LoRA architecture as a composition of explicit, typed linear maps."""

from .adapter import Adapter, RoutedAdapter
from .comol import CoMoL, CoMoLConfig
from .errors import (
    ArgumentTypeError,
    ConfigError,
    DTypeDeviceError,
    MoELoRAError,
    NonFiniteError,
    NotLinearError,
    ReductionError,
    ShapeError,
    input_checks,
)
from .hydralora import HydraLoRA, HydraLoRAConfig
from .lora import LoRA, LoRAConfig
from .maps import (
    BlockDiagonal,
    Compose,
    Dense,
    HeadLayout,
    Identity,
    KronIdentity,
    LinearMap,
    SoftmaxRouter,
    chain,
    topk_mask,
)
from .moelora import MoELoRA, MoELoRAConfig
from .registry import ARCHITECTURES, architecture, build, config_class, create
from .talklora import TalkLoRA, TalkLoRAConfig

__all__ = [
    "ARCHITECTURES",
    "Adapter",
    "ArgumentTypeError",
    "BlockDiagonal",
    "CoMoL",
    "CoMoLConfig",
    "Compose",
    "ConfigError",
    "DTypeDeviceError",
    "Dense",
    "HeadLayout",
    "HydraLoRA",
    "HydraLoRAConfig",
    "Identity",
    "KronIdentity",
    "LinearMap",
    "LoRA",
    "LoRAConfig",
    "MoELoRA",
    "MoELoRAConfig",
    "MoELoRAError",
    "NonFiniteError",
    "NotLinearError",
    "ReductionError",
    "RoutedAdapter",
    "ShapeError",
    "SoftmaxRouter",
    "TalkLoRA",
    "TalkLoRAConfig",
    "architecture",
    "build",
    "chain",
    "config_class",
    "create",
    "input_checks",
    "topk_mask",
]
