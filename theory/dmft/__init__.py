"""Feature learning at infinite width: dynamical mean-field theory (DMFT) of mean-field / muP networks.

Bordelon & Pehlevan 2022 ("Self-Consistent Dynamical Field Theory of Kernel Evolution in Wide Neural Networks"):

    sol = theory.dmft.solve(theory.MLP(2, "tanh"), x_train, y_train, x_test, gamma=1.0, learning_rate=0.5,
                            steps=20, key=jax.random.key(0))
    sol.loss, sol.f_test, sol.phi, sol.g, sol.ntk     # with sol.*_stderr

:func:`solve` (:mod:`theory.dmft.mlp`): MLPs with 1-4 hidden layers, any activation, full-batch gradient descent on
MSE; the feature kernels ``Phi^l(t, s)``, gradient kernels ``G^l(t, s)``, the NTK and the outputs over time, with
standard errors; one hidden layer by default samples the neurons in weight space (``method="particles"``,
:mod:`theory.dmft.particles`), and :func:`solve_outputs` follows its outputs and losses over long runs (thousands of
steps, hundreds of inputs). :func:`solve_resnet` (:mod:`theory.dmft.resnet`): the same for ResNets with
depth-scaled branches (Depth-muP; Bordelon et al. 2023), a few blocks and steps. Derivation, solvers, accuracy and
cost: docs/dmft.md.
"""

from theory.dmft.common import KERNEL_MODES, METHODS, DMFTConvergenceError, DMFTSolution
from theory.dmft.mlp import MAX_DEPTH, DMFTOutputs, solve, solve_outputs
from theory.dmft.resnet import solve_resnet

__all__ = ["KERNEL_MODES", "MAX_DEPTH", "METHODS", "DMFTConvergenceError", "DMFTOutputs", "DMFTSolution", "solve",
           "solve_outputs", "solve_resnet"]
