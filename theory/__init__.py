"""deeplimits' theory: infinite-width and infinite-depth kernels as pure functions.

Quick use::

    import theory
    from theory import layers as nn
    net = theory.MLP(depth=3, activation="relu", w_std=2**0.5, b_std=0.0)
    k = theory.kernels(net, x)          # Kernels(nngp=(N, N), ntk=(N, N))
    cnn = theory.serial(nn.Conv((3, 3), w_std=2**0.5), nn.Elementwise("relu"), nn.GlobalAvgPool(), nn.Dense())
    k_cnn = theory.kernels(cnn, images)  # images: (N, height, width, channels)
    mup = theory.parameterize(net, "mup", width=1024)   # the program as trained under muP (its NTK, its network)
    res = theory.ResNet(depth=64, activation="relu", depth_exponent=0.5)
    k_inf = theory.resnet_limit(res, x)   # width -> inf, then depth -> inf (an ODE in t = l / L)
    theory.criticality("tanh")           # PDLT's universality class and critical (C_W, C_b)
    theory.parameterizations.mup("adam").classify(depth=3).regime   # 'feature learning' (TP IV / TP V)

Nothing here does I/O or keeps state; randomness, where it ever enters, is an explicit JAX key.
"""

from theory import (
    activations,
    deep_classifiers,
    deep_linear,
    depth_diffusion,
    dmft,
    finite_width,
    kernels,
    layers,
    linear_resnet_training,
    parameterizations,
    predict,
    signal_propagation,
    signature_kernels,
    solvers,
    training_dynamics,
)
from theory.activations import Activation
from theory.architectures import MLP, ResNet, Transformer
from theory.depth_limits import residual_stream_limit, resnet_limit
from theory.kernels import Kernels, QuadratureAccuracyError
from theory.layers import Serial, serial
from theory.parameterizations import parameterize
from theory.signal_propagation import critical_line, criticality, edge_of_chaos
from theory.signature_kernels import neural_signature_kernel, signature_kernel

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "Activation",
    "Kernels",
    "QuadratureAccuracyError",
    "ResNet",
    "Serial",
    "Transformer",
    "__version__",
    "activations",
    "critical_line",
    "criticality",
    "deep_classifiers",
    "deep_linear",
    "depth_diffusion",
    "dmft",
    "edge_of_chaos",
    "finite_width",
    "kernels",
    "layers",
    "linear_resnet_training",
    "neural_signature_kernel",
    "parameterizations",
    "parameterize",
    "predict",
    "residual_stream_limit",
    "resnet_limit",
    "serial",
    "signal_propagation",
    "signature_kernel",
    "signature_kernels",
    "solvers",
    "training_dynamics",
]
