"""Rooted trees: the index set of Runge-Kutta order conditions (Butcher).

A method (or a continuous extension) has order q when, for every rooted tree t with at most q
vertices, its elementary weight Phi(t) equals 1 / gamma(t). A tree is a sorted tuple of its
subtrees; the single vertex is ``()``. Used to check and derive interpolants
(tests/ode/test_dense_output.py, benchmarks/derive_dopri8_dense.py).
"""

from __future__ import annotations

import itertools
from functools import lru_cache


@lru_cache(maxsize=None)
def rooted_trees(n: int) -> tuple:
    """Every rooted tree with ``n`` vertices, each a sorted tuple of its subtrees, in sorted order."""
    if n == 1:
        return ((),)
    found = set()
    for sizes in _partitions(n - 1, n - 1):
        for children in itertools.product(*[rooted_trees(k) for k in sizes]):
            found.add(tuple(sorted(children)))
    return tuple(sorted(found))


def _partitions(m: int, largest: int):
    """The partitions of m into parts of at most `largest`, largest part first."""
    if m == 0:
        yield []
        return
    for k in range(min(m, largest), 0, -1):
        for rest in _partitions(m - k, k):
            yield [k] + rest


def tree_order(t: tuple) -> int:
    """The number of vertices of t."""
    return 1 + sum(tree_order(c) for c in t)


def tree_gamma(t: tuple) -> int:
    """Butcher's density gamma(t): the order condition is Phi(t) = 1 / gamma(t)."""
    g = tree_order(t)
    for c in t:
        g *= tree_gamma(c)
    return g
