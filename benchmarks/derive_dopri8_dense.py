"""Derive the 7th-order continuous extension of dopri8 (RK8(7)13M) stored in methods.py.

Run:  python benchmarks/derive_dopri8_dense.py  (about a minute; prints the Python literals)

Why not DOP853's dense output: Hairer's DOP853 interpolant (3 extra stages) belongs to the
DOP853 tableau (c2 = 0.0526...), not to Prince & Dormand's RK8(7)13M that ``dopri8`` uses
(c2 = 1/18), so its coefficients do not apply here.  With only the 13 stages of RK8(7)13M the
order conditions of a continuous extension ``b(theta)`` are solvable up to order 5 (this script
prints the check).  Higher orders come from "bootstrapping" (Enright, Jackson, Norsett, Thomsen,
ACM TOMS 12, 1986): a new stage evaluated at ``(t + sigma h, y + h sum_j w_j(sigma) k_j)``, with
``w`` the weights of an order-q interpolant, has stage order q, and enlarges the space of
stage vectors.  Two such stages on the order-5 interpolant give order 6; four more on the order-6
interpolant give order 7.  Everything is linear algebra on the order conditions (rooted trees
up to order 8), done in 40-digit arithmetic:

1. ``b(theta) = sum_p d_p theta^p`` with, for every tree ``t`` of order <= q and every p <= q,
   ``Phi(t) . d_p = [rho(t) == p] / gamma(t)`` (minimum-norm solution), and
   ``d_{q+1} = b - sum_{p<=q} d_p`` so that ``b(1) = b``.
2. The last interpolant uses its remaining freedom (a one-dimensional null space) to minimise
   the order-8 residuals over theta in (0, 1].

The result is data (``_DOPRI8_DENSE_C``, ``_DOPRI8_DENSE_A``, ``_DOPRI8_DENSE``);
tests/ode/test_dense_output.py re-checks all order conditions up to order 7 and measures the
order on solves, independently of this script.
"""

from __future__ import annotations

from fractions import Fraction

import mpmath as mp

from noderun.ode.methods import DOPRI8
from noderun.ode.trees import rooted_trees as trees
from noderun.ode.trees import tree_gamma as gamma
from noderun.ode.trees import tree_order as order

mp.mp.dps = 40

# Nodes of the six extra stages: the first two use the order-5 interpolant, the other four the
# order-6 one.  Chosen among a few spreads over (0, 1) for the smallest order-8 residual.
SIGMAS = ("0.3", "0.7", "0.5", "0.15", "0.85", "0.95")


def to_mp(x):
    x = Fraction(x)
    return mp.mpf(x.numerator) / x.denominator


class Stages:
    """Nodes and the lower-triangular A of the method plus the extra stages added so far."""

    def __init__(self, tableau):
        self.c = [to_mp(x) for x in tableau.c]
        self.a = [[to_mp(x) for x in row] for row in tableau.a]
        self.b = [to_mp(x) for x in tableau.b]

    def add(self, sigma, row):
        self.c.append(sigma)
        self.a.append(list(row) + [mp.mpf(0)] * (len(self.a) - len(row)))
        self.b.append(mp.mpf(0))

    def phi(self):
        """``phi(t)[i]``: the elementary weight of tree ``t`` at stage ``i`` (without b)."""
        cache = {}

        def f(t):
            if t not in cache:
                v = [mp.mpf(1)] * len(self.a)
                for child in t:
                    u = f(child)
                    au = [mp.fsum(r[j] * u[j] for j in range(len(r))) for r in self.a]
                    v = [x * y for x, y in zip(v, au)]
                cache[t] = v
            return cache[t]

        return f


def _svd_solve(M, rhs, tol):
    U, S, V = mp.svd_r(M)
    x = [mp.mpf(0)] * M.cols
    utr = U.T * rhs
    for i in range(min(M.rows, M.cols)):
        if S[i] > tol * S[0]:
            for j in range(M.cols):
                x[j] += V[i, j] * utr[i] / S[i]
    return x


# Stages 2-5 of RK8(7)13M only feed later stages (their weights b are 0); the interpolants do
# not use them either, which keeps those weights exactly 0 instead of round-off noise.
UNUSED = frozenset({1, 2, 3, 4})


def continuous_extension(st, q, optimise=False, unused=UNUSED):
    """Polynomial weights ``d[j] = (d_j1, ..., d_j(q+1))`` of an order-q extension, or None.

    ``d_1 = e_1`` (the interpolant's slope at theta = 0 is f(t0, y0), as every consistent
    extension allows since stage 1 has no predecessors); ``d_2 .. d_q`` solve the conditions.
    """
    phi = st.phi()
    s = len(st.c)
    cols = [j for j in range(s) if j not in unused]
    rows = [t for n in range(1, q + 1) for t in trees(n)]
    M = mp.matrix([[phi(t)[j] for j in cols] for t in rows])
    parts = [[mp.mpf(1) if j == 0 else mp.mpf(0) for j in range(s)]]
    for p in range(2, q + 1):
        rhs = mp.matrix([mp.mpf(1) / gamma(t) if order(t) == p else 0 for t in rows])
        x = _svd_solve(M, rhs, mp.mpf("1e-20"))
        residual = max(abs(r) for r in (M * mp.matrix(x) - rhs))
        if residual > 1e-12:  # inconsistent systems miss by > 1e-4; round-off is < 1e-14
            return None
        full = [mp.mpf(0)] * s
        for j, v in zip(cols, x):
            full[j] = v
        parts.append(full)
    if optimise:
        parts = [parts[0]] + _minimise_next_order(st, q, parts[1:], M, cols)
    parts.append([st.b[j] - mp.fsum(d[j] for d in parts) for j in range(s)])
    return [[parts[p][j] for p in range(q + 1)] for j in range(s)]


def _minimise_next_order(st, q, parts, M, cols):
    """Move each of d_2 .. d_q within the null space of M to minimise the order-(q+1) residuals."""
    _, S, V = mp.svd_r(M, full_matrices=True)
    rank = sum(1 for i in range(min(M.rows, M.cols)) if S[i] > mp.mpf("1e-20") * S[0])
    null = []
    for i in range(rank, M.cols):
        full = [mp.mpf(0)] * len(st.c)
        for j, col in enumerate(cols):
            full[col] = V[i, j]
        null.append(full)
    if not null:
        return parts
    phi = st.phi()
    k = len(null)
    lhs, rhs = [], []
    for theta in [mp.mpf(i) / 16 for i in range(1, 17)]:
        for t in trees(q + 1):
            ph = phi(t)
            const = theta ** (q + 1) * (mp.fsum(b * x for b, x in zip(st.b, ph)) - mp.mpf(1) / gamma(t))
            coeffs = []
            const += (theta - theta ** (q + 1)) * ph[0]  # d_1 = e_1
            for p in range(2, q + 1):
                fac = theta**p - theta ** (q + 1)
                const += fac * mp.fsum(x * y for x, y in zip(parts[p - 2], ph))
                coeffs += [fac * mp.fsum(x * y for x, y in zip(nv, ph)) for nv in null]
            lhs.append(coeffs)
            rhs.append(-const)
    z = _svd_solve(mp.matrix(lhs), mp.matrix(rhs), mp.mpf("1e-30"))
    out = []
    for p in range(2, q + 1):
        d = list(parts[p - 2])
        for m, nv in enumerate(null):
            d = [x + z[(p - 2) * k + m] * y for x, y in zip(d, nv)]
        out.append(d)
    return out


def weights(d, theta):
    return [mp.fsum(c * theta ** (p + 1) for p, c in enumerate(row)) for row in d]


def derive():
    st = Stages(DOPRI8)
    for q in (6, 7):
        assert continuous_extension(st, q) is None, f"13 stages unexpectedly reach order {q}"
    current, q = continuous_extension(st, 5), 5
    for sigma in (mp.mpf(x) for x in SIGMAS):
        st.add(sigma, weights(current, sigma))
        current = [row for row in current] + [[mp.mpf(0)] * len(current[0])]
        if q + 1 == 7:
            # The order-7 interpolant does not need the two stages built on the order-5 one
            # (they only feed the later extra stages); leaving them out keeps their weights 0.
            better = continuous_extension(st, 7, optimise=True, unused=UNUSED | {13, 14})
        else:
            better = continuous_extension(st, q + 1)
        if better is not None:
            current, q = better, q + 1
    assert q == 7, q
    return st, current


def _fmt(x):
    return mp.nstr(x, 20, min_fixed=-1, max_fixed=1) if x != 0 else "0.0"


def main():
    st, d = derive()
    n = len(DOPRI8.c)
    print("_DOPRI8_DENSE_C = (" + ", ".join(_fmt(c) for c in st.c[n:]) + ")")
    print("_DOPRI8_DENSE_A = (")
    for row in st.a[n:]:
        print("    (" + ", ".join(_fmt(x) for x in row if True) + "),")
    print(")")
    print("_DOPRI8_DENSE = (")
    for row in d:
        print("    (" + ", ".join(_fmt(x) for x in row) + "),")
    print(")")


if __name__ == "__main__":
    main()
