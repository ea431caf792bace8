"""The layer program (``from theory import layers as nn``): layers, ``serial`` and the program analysis.

``theory.serial(nn.Conv((3, 3)), nn.Elementwise("relu"), nn.GlobalAvgPool(), nn.Dense())`` is a program;
``theory.MLP`` and ``theory.ResNet`` build programs. Each layer is one file's worth of code: its kernel map,
its finite initialisation and its finite map (see the README, "Add your own layer").
"""

from theory.layers.attention import AttentionScaling, AttentionWeights, SelfAttention
from theory.layers.base import KernelState, Layer, Shape, Stream, Weights, WeightScaling, pytree
from theory.layers.elementwise import Elementwise
from theory.layers.normalization import LayerNorm, NormWeights
from theory.layers.pooling import AvgPool, Flatten, GlobalAvgPool
from theory.layers.program import Program, Serial, analyse, serial, weight_layers
from theory.layers.residual import Identity, Residual
from theory.layers.weighted import Conv, Dense, WeightLayer

__all__ = [
    "AttentionScaling",
    "AttentionWeights",
    "AvgPool",
    "Conv",
    "Dense",
    "Elementwise",
    "Flatten",
    "GlobalAvgPool",
    "Identity",
    "KernelState",
    "Layer",
    "LayerNorm",
    "NormWeights",
    "Program",
    "Residual",
    "SelfAttention",
    "Serial",
    "Shape",
    "Stream",
    "WeightLayer",
    "WeightScaling",
    "Weights",
    "analyse",
    "pytree",
    "serial",
    "weight_layers",
]
