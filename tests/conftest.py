import jax

# The suite checks float64 exactness; tests that want float32 pass float32 arrays explicitly.
jax.config.update("jax_enable_x64", True)
