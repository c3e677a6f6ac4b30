"""The Runge-Kutta methods offered by :func:`noderun.ode.odeint` and their registry.

Every method is a :class:`~noderun.ode.tableau.ButcherTableau`; one generic
step (:mod:`.rk_step`) serves all of them.  Fixed-step methods have no error
estimate; adaptive ones carry embedded weights and are step-size controlled.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F

from .tableau import ButcherTableau

# ---------------------------------------------------------------------------
# Fixed-step methods
# ---------------------------------------------------------------------------

EULER = ButcherTableau(
    name="euler",
    c=(0,),
    a=((),),
    b=(1,),
    order=1,
    source="L. Euler, Institutiones calculi integralis (1768); forward Euler.",
)

MIDPOINT = ButcherTableau(
    name="midpoint",
    c=(0, F(1, 2)),
    a=((), (F(1, 2),)),
    b=(0, 1),
    order=2,
    source="Explicit midpoint rule (C. Runge, Math. Ann. 46, 1895).",
)

RK4 = ButcherTableau(
    name="rk4",
    c=(0, F(1, 2), F(1, 2), 1),
    a=((), (F(1, 2),), (0, F(1, 2)), (0, 0, 1)),
    b=(F(1, 6), F(1, 3), F(1, 3), F(1, 6)),
    order=4,
    source="Classic fourth-order Runge-Kutta method (W. Kutta, Z. Math. Phys. 46, 1901).",
)

# ---------------------------------------------------------------------------
# Adaptive methods (propagated order / embedded order)
# ---------------------------------------------------------------------------

ADAPTIVE_HEUN = ButcherTableau(
    name="adaptive_heun",
    c=(0, 1),
    a=((), (1,)),
    b=(F(1, 2), F(1, 2)),
    order=2,
    # b_hat = (1, 0): forward Euler embedded in Heun's method.
    b_error=(F(-1, 2), F(1, 2)),
    error_order=1,
    source="Heun's method (K. Heun, Z. Math. Phys. 45, 1900) with embedded Euler step.",
)

FEHLBERG2 = ButcherTableau(
    name="fehlberg2",
    c=(0, F(1, 2), 1),
    a=((), (F(1, 2),), (F(1, 256), F(255, 256))),
    # The second-order solution is propagated (local extrapolation); the
    # first-order weights (1/256, 255/256, 0) are the embedded ones.  Because of
    # this the last stage is not evaluated at the propagated solution: no FSAL.
    b=(F(1, 512), F(255, 256), F(1, 512)),
    order=2,
    b_error=(F(-1, 512), 0, F(1, 512)),
    error_order=1,
    source="E. Fehlberg, Low-order classical Runge-Kutta formulas with stepsize control, NASA TR R-315 (1969), RK1(2).",
)

BOSH3 = ButcherTableau(
    name="bosh3",
    c=(0, F(1, 2), F(3, 4), 1),
    a=((), (F(1, 2),), (0, F(3, 4)), (F(2, 9), F(1, 3), F(4, 9))),
    b=(F(2, 9), F(1, 3), F(4, 9), 0),
    order=3,
    # b_hat = (7/24, 1/4, 1/3, 1/8)
    b_error=(F(-5, 72), F(1, 12), F(1, 9), F(-1, 8)),
    error_order=2,
    fsal=True,
    source="P. Bogacki, L. F. Shampine, A 3(2) pair of Runge-Kutta formulas, Appl. Math. Lett. 2 (1989).",
)


def _dopri5_dense(b, d):
    """Quartic dense output of Dormand-Prince 5(4) as polynomial weights.

    Hairer, Norsett & Wanner (Solving ODEs I, II.6; routine CONTD5 of DOPRI5,
    after Shampine 1986) write the interpolant as::

        y(theta) = y0 + theta*(r2 + (1-theta)*(r3 + theta*(r4 + (1-theta)*r5)))
        r2 = h*sum(b k),  r3 = h*k1 - r2,  r4 = r2 - h*k7 - r3,  r5 = h*sum(d k)

    Expanding in powers of theta gives, with unit vectors e1 and e7,
    ``w(theta) = e1 theta + (3b - 2e1 - e7 + d) theta^2 + (-2b + e1 + e7 - 2d) theta^3
    + d theta^4``.
    """
    s = len(b)
    e1 = [1 if j == 0 else 0 for j in range(s)]
    e7 = [1 if j == s - 1 else 0 for j in range(s)]
    return tuple(
        (
            e1[j],
            3 * b[j] - 2 * e1[j] - e7[j] + d[j],
            -2 * b[j] + e1[j] + e7[j] - 2 * d[j],
            d[j],
        )
        for j in range(s)
    )


_DOPRI5_B = (F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0)
_DOPRI5_B_HAT = (F(5179, 57600), 0, F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100), F(1, 40))
_DOPRI5_D = (
    F(-12715105075, 11282082432),
    0,
    F(87487479700, 32700410799),
    F(-10690763975, 1880347072),
    F(701980252875, 199316789632),
    F(-1453857185, 822651844),
    F(69997945, 29380423),
)

DOPRI5 = ButcherTableau(
    name="dopri5",
    c=(0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1),
    a=(
        (),
        (F(1, 5),),
        (F(3, 40), F(9, 40)),
        (F(44, 45), F(-56, 15), F(32, 9)),
        (F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)),
        (F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)),
        _DOPRI5_B[:6],
    ),
    b=_DOPRI5_B,
    order=5,
    b_error=tuple(x - y for x, y in zip(_DOPRI5_B, _DOPRI5_B_HAT)),
    error_order=4,
    fsal=True,
    dense=_dopri5_dense(_DOPRI5_B, _DOPRI5_D),
    dense_order=4,
    source=(
        "J. R. Dormand, P. J. Prince, A family of embedded Runge-Kutta formulae, "
        "J. Comput. Appl. Math. 6 (1980); dense output: L. F. Shampine, Math. Comp. 46 (1986) "
        "and Hairer, Norsett, Wanner, Solving ODEs I (2nd ed.), II.6."
    ),
)

# Tsitouras 5(4): coefficients as published to double precision.
_TSIT5_B = (
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
    0.0,
)

TSIT5 = ButcherTableau(
    name="tsit5",
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.897153057105493, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383),
        _TSIT5_B[:6],
    ),
    b=_TSIT5_B,
    order=5,
    b_error=(
        -0.00178001105222577714,
        -0.0008164344596567469,
        0.007880878010261995,
        -0.1447110071732629,
        0.5823571654525552,
        -0.45808210592918697,
        1.0 / 66.0,
    ),
    error_order=4,
    fsal=True,
    source=(
        "Ch. Tsitouras, Runge-Kutta pairs of order 5(4) satisfying only the first column "
        "simplifying assumption, Comput. Math. Appl. 62 (2011)."
    ),
)

_DOPRI8_B = (
    F(14005451, 335480064), 0, 0, 0, 0,
    F(-59238493, 1068277825), F(181606767, 758867731), F(561292985, 797845732),
    F(-1041891430, 1371343529), F(760417239, 1151165299), F(118820643, 751138087),
    F(-528747749, 2220607170), F(1, 4),
)  # fmt: skip
_DOPRI8_B_HAT = (
    F(13451932, 455176623), 0, 0, 0, 0,
    F(-808719846, 976000145), F(1757004468, 5645159321), F(656045339, 265891186),
    F(-3867574721, 1518517206), F(465885868, 322736535), F(53011238, 667516719),
    F(2, 45), 0,
)  # fmt: skip

DOPRI8 = ButcherTableau(
    name="dopri8",
    c=(
        0, F(1, 18), F(1, 12), F(1, 8), F(5, 16), F(3, 8), F(59, 400), F(93, 200),
        F(5490023248, 9719169821), F(13, 20), F(1201146811, 1299019798), 1, 1,
    ),
    a=(
        (),
        (F(1, 18),),
        (F(1, 48), F(1, 16)),
        (F(1, 32), 0, F(3, 32)),
        (F(5, 16), 0, F(-75, 64), F(75, 64)),
        (F(3, 80), 0, 0, F(3, 16), F(3, 20)),
        (F(29443841, 614563906), 0, 0, F(77736538, 692538347), F(-28693883, 1125000000),
         F(23124283, 1800000000)),
        (F(16016141, 946692911), 0, 0, F(61564180, 158732637), F(22789713, 633445777),
         F(545815736, 2771057229), F(-180193667, 1043307555)),
        (F(39632708, 573591083), 0, 0, F(-433636366, 683701615), F(-421739975, 2616292301),
         F(100302831, 723423059), F(790204164, 839813087), F(800635310, 3783071287)),
        (F(246121993, 1340847787), 0, 0, F(-37695042795, 15268766246), F(-309121744, 1061227803),
         F(-12992083, 490766935), F(6005943493, 2108947869), F(393006217, 1396673457),
         F(123872331, 1001029789)),
        (F(-1028468189, 846180014), 0, 0, F(8478235783, 508512852), F(1311729495, 1432422823),
         F(-10304129995, 1701304382), F(-48777925059, 3047939560), F(15336726248, 1032824649),
         F(-45442868181, 3398467696), F(3065993473, 597172653)),
        (F(185892177, 718116043), 0, 0, F(-3185094517, 667107341), F(-477755414, 1098053517),
         F(-703635378, 230739211), F(5731566787, 1027545527), F(5232866602, 850066563),
         F(-4093664535, 808688257), F(3962137247, 1805957418), F(65686358, 487910083)),
        (F(403863854, 491063109), 0, 0, F(-5068492393, 434740067), F(-411421997, 543043805),
         F(652783627, 914296604), F(11173962825, 925320556), F(-13158990841, 6184727034),
         F(3936647629, 1978049680), F(-160528059, 685178525), F(248638103, 1413531060), 0),
    ),
    b=_DOPRI8_B,
    order=8,
    b_error=tuple(x - y for x, y in zip(_DOPRI8_B, _DOPRI8_B_HAT)),
    error_order=7,
    source=(
        "P. J. Prince, J. R. Dormand, High order embedded Runge-Kutta formulae, "
        "J. Comput. Appl. Math. 7 (1981), RK8(7)13M."
    ),
)  # fmt: skip


@dataclass(frozen=True)
class MethodSpec:
    """A solver method: its tableau and whether it controls the step size."""

    tableau: ButcherTableau

    @property
    def name(self) -> str:
        return self.tableau.name

    @property
    def adaptive(self) -> bool:
        return self.tableau.adaptive


METHODS: dict = {
    tab.name: MethodSpec(tab)
    for tab in (EULER, MIDPOINT, RK4, ADAPTIVE_HEUN, FEHLBERG2, BOSH3, DOPRI5, TSIT5, DOPRI8)
}


def get_method(name: str) -> MethodSpec:
    """Look up a method by name; raise ``ValueError`` listing the valid ones."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}") from None
