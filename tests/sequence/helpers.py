"""Small HMM families for the sequence tests, written independently of the library's samplers."""

import functools
import itertools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("num_envs", "num_states", "num_symbols", "sparse"))
def random_family(key, num_envs=5, num_states=3, num_symbols=4, sparse=False):
    """E random HMMs with a shared uniform start; ``sparse`` zeroes some emissions."""
    k1, k2, k3 = jax.random.split(key, 3)
    log_init = jnp.full((num_states,), -jnp.log(num_states))
    log_trans = jax.nn.log_softmax(2.0 * jax.random.normal(k1, (num_envs, num_states, num_states)))
    logits = 2.0 * jax.random.normal(k2, (num_envs, num_states, num_symbols))
    if sparse:
        # Each state emits only half the vocabulary: many prefixes rule environments out.
        keep = jax.random.bernoulli(k3, 0.5, logits.shape).at[..., 0].set(True)
        logits = jnp.where(keep, logits, -jnp.inf)
    return log_init, log_trans, jax.nn.log_softmax(logits, axis=-1)


def sample_symbols(key, log_init, log_trans, log_emit, num_steps):
    """One sequence from one HMM (a plain loop: a test oracle independent of the library)."""
    keys = jax.random.split(key, 2 * num_steps + 1)
    z = int(_categorical(keys[0], log_init))
    out = []
    for t in range(num_steps):
        out.append(int(_categorical(keys[2 * t + 1], log_emit[z])))
        z = int(_categorical(keys[2 * t + 2], log_trans[z]))
    return jnp.array(out)


_categorical = jax.jit(jax.random.categorical)


TOY_STEPS = 10
"""Sequence length of :func:`toy_problem`."""


def toy_problem():
    """Two factors (2 x 2) pick a family of 4 environments over 3 states and 4 symbols.

    Returns ``((log_init, log_trans, log_emit), table, sample_fn)``: ``table`` ``(4, 2)`` holds
    each environment's factors (environment ``e = 2 * f0 + f1``) and ``sample_fn(key, batch_size)
    -> (factors (B, 2), symbols (B, 10))`` draws environments uniformly.
    """
    li, lt, le = random_family(jax.random.key(11), num_envs=4, sparse=True)
    table = jnp.array(list(itertools.product(range(2), range(2))))

    def sample_fn(key, batch_size):
        e_key, s_key = jax.random.split(key)
        envs = jax.random.randint(e_key, (batch_size,), 0, 4)

        def one(k, e):
            k0, k1 = jax.random.split(k)

            def step(z, kk):
                a, b = jax.random.split(kk)
                return jax.random.categorical(b, lt[e, z]), jax.random.categorical(a, le[e, z])

            first = jax.random.categorical(k0, li)
            return jax.lax.scan(step, first, jax.random.split(k1, TOY_STEPS))[1]

        return table[envs], jax.vmap(one)(jax.random.split(s_key, batch_size), envs)

    return (li, lt, le), table, sample_fn
