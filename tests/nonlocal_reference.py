"""An independent float64 NumPy non-local block, written from PAPER.md.

It sums over explicit (query, key) pairs and restricts the grouped affinities
with a mask built from position coordinates, so it shares no reshaping logic
with the library.
"""

import itertools

import numpy as np


def max_pool(x, pool):
    """Non-overlapping 'valid' max pooling of (B, *S, C)."""
    out_sizes = [s // p for s, p in zip(x.shape[1:-1], pool)]
    out = np.empty((x.shape[0], *out_sizes, x.shape[-1]))
    for idx in itertools.product(*map(range, out_sizes)):
        window = tuple(slice(i * p, (i + 1) * p) for i, p in zip(idx, pool))
        block = x[(slice(None),) + window + (slice(None),)]
        out[(slice(None),) + idx + (slice(None),)] = block.reshape(
            x.shape[0], -1, x.shape[-1]
        ).max(axis=1)
    return out


def _positions(sizes):
    return np.array(list(itertools.product(*map(range, sizes))), dtype=int).reshape(
        -1, len(sizes)
    )


def allowed_pairs(query_sizes, key_sizes, pool, affinity):
    """mask[i, j]: may query position i attend to pooled key position j?"""
    q = _positions(query_sizes)
    k = _positions(key_sizes)
    if affinity == "spacetime":
        return np.ones((len(q), len(k)), bool)
    q_cell = q // np.asarray(pool)  # the pooled cell a query falls in
    if affinity == "space":  # same (pooled) frame
        return q_cell[:, None, 0] == k[None, :, 0]
    # time: same (pooled) spatial location
    return np.all(q_cell[:, None, 1:] == k[None, :, 1:], axis=-1)


def nonlocal_block(x, weights, mode, pool, affinity="spacetime", use_scale=True, bn=None):
    """z = x + BN(W_z y), y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j); float64.

    `weights` maps theta/phi/g/w_z to (kernel, bias) and w_f to a (2C, 1)
    kernel; `bn` is (gamma, beta, mean, var, eps) or None.
    """
    x = np.asarray(x, np.float64)
    batch, channels = x.shape[0], x.shape[-1]
    pooled = max_pool(x, pool)
    mask = allowed_pairs(x.shape[1:-1], pooled.shape[1:-1], pool, affinity)
    xq = x.reshape(batch, -1, channels)
    xk = pooled.reshape(batch, -1, channels)

    def project(name, t):
        kernel, bias = weights[name]
        return t @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)

    if mode == "gaussian":
        theta, phi = xq, xk
    else:
        theta, phi = project("theta", xq), project("phi", xk)
    g = project("g", xk)

    ys = []
    for b in range(batch):
        n_q, n_k = theta.shape[1], phi.shape[1]
        f = np.empty((n_q, n_k))
        for i in range(n_q):
            for j in range(n_k):
                if mode == "concatenation":
                    pair = np.concatenate([theta[b, i], phi[b, j]])
                    f[i, j] = max(pair @ np.asarray(weights["w_f"], np.float64)[:, 0], 0.0)
                else:
                    f[i, j] = theta[b, i] @ phi[b, j]
        if mode in ("gaussian", "embedded_gaussian"):
            if use_scale:
                f = f / np.sqrt(theta.shape[-1])
            f = np.exp(f - f.max(axis=1, keepdims=True)) * mask
            norm = f.sum(axis=1, keepdims=True)
        else:
            f = f * mask
            norm = mask.sum(axis=1, keepdims=True)
        ys.append((f / norm) @ g[b])
    y = np.stack(ys)
    z = project("w_z", y)
    if bn is not None:
        gamma, beta, mean, var, eps = bn
        z = gamma * (z - mean) / np.sqrt(var + eps) + beta
    return x + z.reshape(x.shape)
