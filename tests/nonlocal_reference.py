"""An independent float64 NumPy non-local block, written from PAPER.md.

It sums over explicit (query, key) pairs and restricts the grouped affinities
with a mask built from position coordinates, so it shares no reshaping logic
with the library. Masks are applied the same explicit way: a pooled key is
valid when every position of its window is (as the unpadded input's 'valid'
pooling, which drops a last partial window), and an invalid query position is
returned unchanged.
"""

import itertools

import numpy as np


def max_pool(x, pool):
    """Non-overlapping 'valid' max pooling of (B, *S, C)."""
    return masked_max_pool(x, np.ones(x.shape[:-1], bool), pool)[0]


def masked_max_pool(x, mask, pool):
    """Pooling of the windows whose positions are all valid (`mask`, (B, *S) bool).

    Returns the pooled (B, *S', C) values (0 where a window held a masked
    position) and the (B, *S') mask of the windows that held none.
    """
    out_sizes = [s // p for s, p in zip(x.shape[1:-1], pool)]
    out = np.zeros((x.shape[0], *out_sizes, x.shape[-1]))
    out_mask = np.zeros((x.shape[0], *out_sizes), bool)
    for b in range(x.shape[0]):
        for idx in itertools.product(*map(range, out_sizes)):
            window = tuple(slice(i * p, (i + 1) * p) for i, p in zip(idx, pool))
            block = x[b][window].reshape(-1, x.shape[-1])
            valid = mask[b][window].reshape(-1)
            if valid.all():
                out[(b,) + idx] = block.max(axis=0)
                out_mask[(b,) + idx] = True
    return out, out_mask


def _positions(sizes):
    return np.array(list(itertools.product(*map(range, sizes))), dtype=int).reshape(
        -1, len(sizes)
    )


def allowed_pairs(query_sizes, key_sizes, pool, affinity, frames_per_group=None):
    """mask[i, j]: may query position i attend to pooled key position j?"""
    q = _positions(query_sizes)
    k = _positions(key_sizes)
    if frames_per_group is not None:  # the key frame's first input frame is in i's group
        return q[:, None, 0] // frames_per_group == (k[None, :, 0] * pool[0]) // frames_per_group
    if affinity == "spacetime":
        return np.ones((len(q), len(k)), bool)
    q_cell = q // np.asarray(pool)  # the pooled cell a query falls in
    if affinity == "space":  # same (pooled) frame
        return q_cell[:, None, 0] == k[None, :, 0]
    # time: same (pooled) spatial location
    return np.all(q_cell[:, None, 1:] == k[None, :, 1:], axis=-1)


def nonlocal_block(x, weights, mode, pool, affinity="spacetime", use_scale=True, bn=None,
                   mask=None, attention_mask=None, frames_per_group=None):
    """z = x + BN(W_z y), y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j); float64.

    `weights` maps theta/phi/g/w_z to (kernel, bias) and w_f to a (2C, 1)
    kernel; `bn` is (gamma, beta, mean, var, eps) or None. `mask` is a
    (B, *S) boolean of valid positions; `attention_mask` a (B, N_q, N_k)
    boolean over (query position, pooled key position) pairs, both in
    row-major order. A query with no allowed key gets y_i = 0.
    """
    x = np.asarray(x, np.float64)
    batch, channels = x.shape[0], x.shape[-1]
    if mask is None:
        mask = np.ones(x.shape[:-1], bool)
    pooled, key_mask = masked_max_pool(x, np.asarray(mask, bool), pool)
    pairs = allowed_pairs(x.shape[1:-1], pooled.shape[1:-1], pool, affinity, frames_per_group)
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
        allowed = pairs & key_mask[b].reshape(1, -1)
        if attention_mask is not None:
            allowed = allowed & np.asarray(attention_mask[b], bool)
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
            f = np.where(allowed, f, -np.inf)
            row_max = np.where(allowed.any(axis=1, keepdims=True),
                               f.max(axis=1, keepdims=True), 0.0)
            f = np.exp(f - row_max)
            norm = f.sum(axis=1, keepdims=True)
        else:
            f = np.where(allowed, f, 0.0)
            norm = allowed.sum(axis=1, keepdims=True)
        ys.append(f / np.maximum(norm, 1e-300) @ g[b])
    y = np.stack(ys)
    z = project("w_z", y)
    if bn is not None:
        gamma, beta, mean, var, eps = bn
        z = gamma * (z - mean) / np.sqrt(var + eps) + beta
    z = np.where(np.asarray(mask, bool).reshape(batch, -1, 1), z, 0.0)
    return x + z.reshape(x.shape)
