"""The Runge-Kutta methods offered by :func:`noderun.ode.odeint` and their registry.

Every method is a :class:`~noderun.ode.tableau.ButcherTableau`; one generic
step (:mod:`.rk_step`) serves all of them.  Fixed-step methods have no error
estimate; adaptive ones carry embedded weights and are step-size controlled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
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

# torchdiffeq's fixed-grid ``heun2`` and ``heun3``: the same coefficients, no error estimate.
HEUN2 = ButcherTableau(
    name="heun2",
    c=(0, 1),
    a=((), (1,)),
    b=(F(1, 2), F(1, 2)),
    order=2,
    source=(
        "Heun's second-order method (explicit trapezoidal rule): K. Heun, Neue Methoden zur "
        "approximativen Integration der Differentialgleichungen einer unabhaengigen Veraenderlichen, "
        "Z. Math. Phys. 45 (1900)."
    ),
)

HEUN3 = ButcherTableau(
    name="heun3",
    c=(0, F(1, 3), F(2, 3)),
    a=((), (F(1, 3),), (0, F(2, 3))),
    b=(F(1, 4), 0, F(3, 4)),
    order=3,
    source=(
        "Heun's third-order method: K. Heun, Z. Math. Phys. 45 (1900); "
        "Hairer, Norsett, Wanner, Solving ODEs I (2nd ed.), Table II.1.1."
    ),
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

def _expand_factored(scale: str, *factors: tuple) -> tuple:
    """Expand ``scale * prod(factors)`` (each factor a polynomial in theta, lowest degree
    first, coefficients as decimal strings) exactly, and return the coefficients of
    ``theta^1 .. theta^P`` (the constant term of a dense-output weight is 0)."""
    poly = [F(scale)]
    for factor in factors:
        coeffs = [F(x) for x in factor]
        out = [F(0)] * (len(poly) + len(coeffs) - 1)
        for i, p in enumerate(poly):
            for j, q in enumerate(coeffs):
                out[i + j] += p * q
        poly = out
    if poly[0] != 0:
        raise ValueError("a dense-output weight must vanish at theta = 0")
    return tuple(poly[1:])


# Tsitouras's continuous extension of order 4 (Comput. Math. Appl. 62 (2011), section 4): the
# weights b_i(theta) as the paper gives them, in factored form (OrdinaryDiffEq and diffrax use
# the same numbers).  ``THETA = ("0", "1")`` is the factor theta.
_THETA = ("0", "1")
_TSIT5_DENSE = (
    _expand_factored(
        "-1.0530884977290216", _THETA, ("-1.3299890189751412", "1"),
        ("0.7139816917074209", "-1.4364028541716351", "1"),
    ),
    _expand_factored("0.1017", _THETA, _THETA, ("1.2949852507374631", "-2.1966568338249754", "1")),
    _expand_factored(
        "2.490627285651252793", _THETA, _THETA, ("1.57803468208092486", "-2.38535645472061657", "1")
    ),
    _expand_factored(
        "-16.54810288924490272", _THETA, _THETA, ("-1.21712927295533244", "1"), ("-0.61620406037800089", "1")
    ),
    _expand_factored(
        "47.37952196281928122", _THETA, _THETA, ("-1.203071208372362603", "1"), ("-0.658047292653547382", "1")
    ),
    _expand_factored("-34.87065786149660974", _THETA, _THETA, ("-1.2", "1"), ("-0.666666666666666667", "1")),
    _expand_factored("2.5", _THETA, _THETA, ("-1", "1"), ("-0.6", "1")),
)  # fmt: skip

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
    dense=_TSIT5_DENSE,
    dense_order=4,
    source=(
        "Ch. Tsitouras, Runge-Kutta pairs of order 5(4) satisfying only the first column "
        "simplifying assumption, Comput. Math. Appl. 62 (2011); dense output: the paper's "
        "4th-order continuous extension b_i(theta)."
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

# Dense output of dopri8: a 7th-order continuous extension with six extra stages, derived for
# this tableau by benchmarks/derive_dopri8_dense.py (which prints these literals).  Hairer's
# DOP853 interpolant cannot be used: it belongs to the DOP853 tableau, a different 8th-order
# method.  RK8(7)13M's own 13 stages carry at most a 5th-order extension; two extra stages at
# the 5th-order interpolant (c = 0.3, 0.7) raise it to 6th order, four more at the 6th-order
# interpolant (c = 0.5, 0.15, 0.85, 0.95) to 7th, the order of the error estimate, so that
# interpolating costs no accuracy relative to stepping onto the time.  tests/ode/test_dense_output.py
# checks every order condition up to order 7 and measures the order.
_DOPRI8_DENSE_C = (3.0e-1, 7.0e-1, 5.0e-1, 1.5e-1, 8.5e-1, 9.5e-1)
_DOPRI8_DENSE_A = (
    (4.6653345768637870888e-2, 0.0, 0.0, 0.0, 0.0, 9.3871251320249374064e-2, 2.1003616602307009651e-1, -8.9854499356895338243e-2, 6.0310571096628469298e-2, -2.1832971054190966504e-2, 1.2180777981394690219e-3, -2.7948096926710315702e-3, 2.3928680970320565352e-3),
    (2.3930092589457286508e-2, 0.0, 0.0, 0.0, 0.0, -1.558023346444183298e-1, 3.0119380526708577014e-1, 5.0991415753140339749e-1, -8.3638382663413880907e-2, 9.9842930498994969325e-2, 4.2936225659703953941e-3, -3.0342364493677692297e-3, 3.3003453042881606454e-3, 0.0),
    (4.5666568606294896878e-2, 0.0, 0.0, 0.0, 0.0, 1.6229464705475361226e-1, 2.1111896738562808804e-1, -3.0728197102972917917e-2, 8.7854549109394436632e-2, 5.1096620107195039842e-2, 2.0833678300165637272e-2, -4.4943071588028676448e-2, 3.6219794298793591392e-2, 4.6254890269673312304e-2, -8.5668446440897020284e-2),
    (5.0989596339558759208e-2, 0.0, 0.0, 0.0, 0.0, -6.8721314126488267035e-2, 1.3601319430987024849e-1, 1.6382849019609003436e-1, -1.4092008785167783334e-1, 1.929121497538297453e-2, -1.8108776918285101521e-2, 4.2083568988439168114e-2, -3.3895156160620138938e-2, -4.1970975628414403023e-2, 4.1410245876144559153e-2, 0.0),
    (4.4051550580560225739e-2, 0.0, 0.0, 0.0, 0.0, 1.6049060655331552264e-2, 2.2237068867107998683e-1, 3.6815380898146566801e-1, -2.5949924007238602656e-1, 2.5607441345783793579e-1, 4.6137384971629104285e-2, -8.99389549131555477e-2, 7.7350070517246929148e-2, 4.2934997822915422016e-2, 1.2631621932747474899e-1, 0.0, 0.0),
    (5.5250790622870761803e-2, 0.0, 0.0, 0.0, 0.0, -3.0333639928394611668e-1, 1.6541341291972971801e-1, 8.3839330223199817242e-1, -8.282267281243393425e-1, 4.5876941415543250163e-1, 6.0713876504642224261e-2, -7.2424128314957088099e-2, 8.8999301846552449712e-2, 2.3210329893799629244e-1, 2.5434385850402042442e-1, 0.0, 0.0, 0.0),
)
_DOPRI8_DENSE = (
    (1.0, -7.3429647500328591545, 2.592378967646840759e+1, -4.926492142468226287e+1, 5.1483759914322507328e+1, -2.7855356884010396982e+1, 6.0957301251234461907, 1.7108339526881435906e-3),
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (0.0, -2.0702166095461711591e+1, 1.4843334875202930276e+2, -3.3491204864855848909e+2, 2.9552323236470061878e+2, -7.4773941506755527347e+1, -1.3732349224044788839e+1, 1.084720294793560094e-1),
    (0.0, -4.8230463174960409015e+1, 3.8580312092761466257e+2, -1.107089977302831652e+3, 1.5015895826302028474e+3, -9.8278543456077846432e+2, 2.509625756626790305e+2, -1.0091374724835070965e-2),
    (0.0, -2.8510560463335430389e+1, 2.8340610475380020459e+2, -1.1067252286760869089e+3, 2.0129253545344084632e+3, -1.7000964579518990797e+3, 5.3995176110360719101e+2, -2.4746263109099668206e-1),
    (0.0, 1.6886196239881306705e+1, -2.0010532035354866493e+2, 9.1903681381156285737e+2, -1.8479386516270273755e+3, 1.659106113127675385e+3, -5.4799564905568753615e+2, 2.5073824332956655811e-1),
    (0.0, -3.04211572465419279e+1, 2.8942926502646359819e+2, -1.0749019891388683335e+3, 1.8841870523083455058e+3, -1.5519185495299743469e+3, 4.8439579299645618861e+2, -1.0985138495839799335e-1),
    (0.0, -6.9006656531340504641, 6.5071949663461948062e+1, -2.390740642222620367e+2, 4.1559913995316952483e+2, -3.4032138539984526973e+2, 1.0577216159513484767e+2, 1.1051545985159664013e-2),
    (0.0, 1.2286986638143184343e+1, -1.1153095741432647892e+2, 3.9027413475263502581e+2, -6.5189811948987838391e+2, 5.1834441533303515958e+2, -1.5767492757152309981e+2, -3.9641786838269905223e-2),
    (0.0, -1.1122760472382530495e+1, 1.0385920291354900509e+2, -3.7696116450301701788e+2, 6.4901916273545478905e+2, -5.2780851611451928244e+2, 1.6322900091604929805e+2, 3.5074524865738620789e-2),
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (0.0, 4.8186917795122560757e+1, -4.0234931280075062909e+2, 1.2397543449403460498e+3, -1.8125042094225378223e+3, 1.2764727218986260712e+3, -3.4956046241080622789e+2, -2.5024820000378220445e-15),
    (0.0, 6.3495113978343679535e+1, -4.7035605772896034344e+2, 1.3032015679822290582e+3, -1.7295073301880221493e+3, 1.1137865926020691828e+3, -2.8061988664565942185e+2, -5.8334165698669669768e-15),
    (0.0, 1.2879158195070913836e+1, -1.1487764559827138169e+2, 3.9369279921598878069e+2, -6.5124983426067432337e+2, 5.1995986347982624576e+2, -1.6040434103194023379e+2, -1.4383772933254639876e-15),
    (0.0, -5.0363499071272616635e-1, -2.7074878175296307901, 4.2969733213544929141e+1, -1.1722913945246420203e+2, 1.1788993550655032312e+2, -4.0419406459388693694e+1, 4.2629489119596356136e-16),
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
    dense=_DOPRI8_DENSE,
    dense_order=7,
    dense_c=_DOPRI8_DENSE_C,
    dense_a=_DOPRI8_DENSE_A,
    source=(
        "P. J. Prince, J. R. Dormand, High order embedded Runge-Kutta formulae, "
        "J. Comput. Appl. Math. 7 (1981), RK8(7)13M; dense output: a 7th-order continuous "
        "extension by bootstrapping (Enright, Jackson, Norsett, Thomsen, ACM TOMS 12 (1986)), "
        "derived in benchmarks/derive_dopri8_dense.py."
    ),
)  # fmt: skip


@dataclass(frozen=True)
class MethodSpec:
    """A method of ``odeint``: a Runge-Kutta tableau, or ``scipy_solver`` (no tableau).

    name: the ``method`` string; adaptive: whether it controls the step size; tableau: the
    Butcher tableau every step loop of :mod:`.integrate` runs (``None`` for ``scipy_solver``,
    which only ``odeint`` accepts: it has no gradients); source: the citation.
    """

    name: str
    adaptive: bool
    tableau: Optional[ButcherTableau] = None
    source: str = ""

    @classmethod
    def runge_kutta(cls, tableau: ButcherTableau) -> "MethodSpec":
        return cls(name=tableau.name, adaptive=tableau.adaptive, tableau=tableau, source=tableau.source)


# The Runge-Kutta methods: every step loop (odeint, odeint_adjoint, events) runs these.
RUNGE_KUTTA_METHODS: dict = {
    tab.name: MethodSpec.runge_kutta(tab)
    for tab in (EULER, MIDPOINT, RK4, HEUN2, HEUN3, ADAPTIVE_HEUN, FEHLBERG2, BOSH3, DOPRI5, TSIT5, DOPRI8)
}

# The method used when ``method=None`` (as in torchdiffeq).
DEFAULT_METHOD = "dopri5"

# torchdiffeq's wrapper of ``scipy.integrate.solve_ivp`` (see :mod:`.scipy_solver`): a valid
# ``method`` of ``odeint`` (SciPy must be installed when it runs), but not a Runge-Kutta tableau.
SCIPY_SOLVER = "scipy_solver"

# Every valid ``method`` of ``odeint``, as torchdiffeq's SOLVERS lists its own.
METHODS: dict = {
    **RUNGE_KUTTA_METHODS,
    SCIPY_SOLVER: MethodSpec(
        name=SCIPY_SOLVER, adaptive=True,
        source="scipy.integrate.solve_ivp (Virtanen et al., Nature Methods 17 (2020)); float64, no gradients",
    ),
}

# torchdiffeq method names that are refused, each with a one-line reason naming an alternative.
# (In torchdiffeq 0.2.5 all three are fixed-grid Adams-Bashforth(-Moulton) solvers.)
_MULTISTEP = (
    "{name!r} is a multistep (Adams) method, which noderun.ode does not implement; "
    "use method='rk4' with options={{'step_size': ...}} for fixed steps, or 'dopri5' for adaptive steps"
)
UNSUPPORTED_METHODS: dict = {
    name: _MULTISTEP.format(name=name) for name in ("explicit_adams", "implicit_adams", "fixed_adams")
}


def scipy_available() -> bool:
    """Whether SciPy (needed by ``method='scipy_solver'``) can be imported."""
    import importlib.util

    return importlib.util.find_spec("scipy") is not None


def method_names() -> list:
    """The methods ``odeint`` can run here: every one of METHODS, but ``scipy_solver`` only where
    SciPy is installed."""
    return [name for name in METHODS if name != SCIPY_SOLVER or scipy_available()]


def get_method(name: str) -> MethodSpec:
    """Look up a Runge-Kutta method by name (what the step loops and ``odeint_adjoint`` run).

    Raises ``ValueError`` for the Adams names (with the reason and an alternative), for
    ``scipy_solver`` (not a tableau: only ``odeint`` accepts it) and, listing the valid names,
    for any other unknown name.
    """
    try:
        return RUNGE_KUTTA_METHODS[name]
    except (KeyError, TypeError):
        pass
    if isinstance(name, str) and name in UNSUPPORTED_METHODS:
        raise ValueError(UNSUPPORTED_METHODS[name])
    if name == SCIPY_SOLVER:
        raise ValueError(
            "'scipy_solver' wraps scipy.integrate.solve_ivp and is accepted only by odeint (no gradients); "
            f"use a Runge-Kutta method here, e.g. {DEFAULT_METHOD!r}"
        )
    raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(method_names())}")
