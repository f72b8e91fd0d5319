"""Executable theory: the quartic law (sympy derivation and numeric predictions), the AIC checker, the cosine null.

Modules:
    quartic: alignment-loss series for gradient flow / discrete GD on a quadratic fine-tune loss (``derive``,
        ``leading_coefficient``, ``predict_alignment_loss_gd``, ``exact_alignment_loss_gd``, ``fit_loglog_slope``).
    aic: ``check_aic`` — which conditions of the Alignment Instability Condition hold, and the predicted law.
    null: exact isotropic null of cos(random direction, fixed direction) in d dimensions and its thresholds.

Import from the submodules (``from theory.quartic import leading_coefficient``); this package file stays empty of
imports so that ``python -m theory.quartic`` runs cleanly.
"""
