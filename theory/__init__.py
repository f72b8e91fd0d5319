"""Executable theory: the quartic law (numeric predictions and their sympy derivation), the AIC, fits, the cosine null.

Modules (only ``derivation`` imports sympy; the others need numpy, and ``null`` and the fit's interval mpmath):
    quartic: the alignment-loss series for gradient flow and GD on a quadratic fine-tune loss, the F-weighted
        coupling γ = ‖F^{1/2} P_S H g‖ and the law γ²t⁴/8 (``gamma_f_weighted``, ``leading_law``, ``leading_law_gd``,
        ``leading_coefficient``, ``predict_alignment_loss_gd``, ``exact_alignment_loss_gd``).
    derivation: the sympy derivations behind ``quartic`` (``derive``, ``derive_f_weighted``;
        ``python -m theory.derivation [--f-weighted]``).
    aic: the Alignment Instability Condition from exact inputs (``check_aic``) or from measured scalars
        (``aic_verdict``), with the predicted exponent and law.
    fit: power-law fits on log-log axes (``fit_loglog_slope``, ``fit_loglog`` with a 95% interval of the exponent,
        ``RunningLogLogFit``).
    null: exact isotropic null of cos(random direction, fixed direction) in d dimensions and its thresholds.
    numerics: what the others share: input conversion (numpy/torch/lists to float64; a matrix or a Hessian-vector
        product as one operator) and a bisection root finder.

Import from the submodules (``from theory.quartic import leading_coefficient``); this package file imports nothing,
so that ``python -m theory.<module>`` runs cleanly and importing one module never pulls in sympy.
"""

__all__: list[str] = []
