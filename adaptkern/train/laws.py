"""The demo's per-shape laws: anchored at the measured step-0 loss, fitted after the early
transient, checked, and replaced by the measured curve itself when the form does not fit.

* Form: E(C) = c + (L0 - c)(1 + C/d)^-b (``fit_shape_law(..., initial_loss=L0)``; see
  ``adaptkern.scaling.shape_law`` for where it comes from), L0 the run's eval at step 0.
* Transient rule (``TRANSIENT_RULE``): only evals after the learning-rate warmup enter the
  fit (during warmup the loss follows the warmup, not the compute); the anchor stands for
  the start.
* The transient is measured, not extrapolated (``JoinedCurve``): between the anchor and the
  first fitted eval the planner follows the run's own evals (a training run starts with the
  same warmup), then the law. The law alone would be an extrapolation back to the anchor
  over the stretch where much of the early descent happens, and a plan may switch shape
  inside it.
* Checks: the fit must converge, warn of nothing and have no parameter on a bound of its
  box (``fit_info["at_bound"]``). A law that fails is not used silently: the plan uses the
  run's measured curve instead (``EmpiricalCurve``, every eval, monotone, interpolated
  linearly in log(1 + C / C_1)), and the report says which shapes fell back and why.
"""

import warnings

import numpy as np

from ..scaling import fit_shape_law

TRANSIENT_RULE = "evals after the learning-rate warmup (step > warmup_steps); the step-0 eval is the anchor L0"


class EmpiricalCurve:
    """A measured loss curve as a law: the running minimum of the evals (strictly
    decreasing points only), with (0, L0) first, linear in u = log(1 + C / C_1) (C_1 the
    first eval's compute) between points. Never extrapolated: below its last loss it
    needs infinite compute (its asymptote ``c`` is that last loss, minus nothing)."""

    name = "empirical"

    def __init__(self, compute, loss, initial_loss):
        order = np.argsort(compute)
        compute, loss = np.asarray(compute, float)[order], np.asarray(loss, float)[order]
        keep_c, keep_l = [0.0], [float(initial_loss)]
        for c, l in zip(compute, loss):
            if l < keep_l[-1]:
                keep_c.append(float(c))
                keep_l.append(float(l))
        if len(keep_c) < 2:
            raise ValueError("EmpiricalCurve: the loss never fell below the initial loss")
        self.scale = keep_c[1]
        self.u = np.log1p(np.array(keep_c) / self.scale)
        self.loss = np.array(keep_l)
        self.c = float(self.loss[-1])  # below the last measured loss: never (no extrapolation)
        self.fit_info = {"n_points": len(keep_c), "converged": True, "at_bound": [], "rms_log_residual": 0.0}

    def params(self) -> dict:
        return {"compute": (np.expm1(self.u) * self.scale).tolist(), "loss": self.loss.tolist()}

    def predict(self, C):
        u = np.log1p(np.asarray(C, float) / self.scale)
        return np.interp(u, self.u, self.loss)

    def inverse(self, L):
        L = np.asarray(L, float)
        u = np.interp(-L, -self.loss, self.u)  # loss decreasing in u
        out = np.expm1(u) * self.scale
        out = np.where(L >= self.loss[0], 0.0, out)
        return np.where(L > self.c, out, np.inf)

    def d_inverse(self, L):
        L = np.asarray(L, float)
        i = np.clip(np.searchsorted(-self.loss, -L, side="right"), 1, len(self.loss) - 1)
        du_dl = (self.u[i] - self.u[i - 1]) / (self.loss[i] - self.loss[i - 1])  # < 0
        C = self.inverse(L)
        slope = du_dl * (C + self.scale)  # dC/du = C + scale
        slope = np.where(L >= self.loss[0], 0.0, slope)
        return np.where(L > self.c, slope, -np.inf)

    def to_dict(self) -> dict:
        return {"law": self.name, "params": self.params(), "fit_info": dict(self.fit_info)}


class JoinedCurve:
    """A law fitted after the transient, with the transient itself measured: from (0, L0)
    through the transient evals to the law's loss at its first fitted point C_f, the
    measured curve (``EmpiricalCurve`` of those points, evals at or below that loss left
    out so that the two pieces meet), then the law from C_f on. Continuous and decreasing;
    its asymptote is the law's."""

    name = "law after the transient, measured evals before"

    def __init__(self, law, transient_compute, transient_loss, first_fitted, initial_loss):
        self.law, self.start = law, float(first_fitted)
        self.joint = float(law.predict(self.start))
        keep = [(c, l) for c, l in zip(transient_compute, transient_loss) if c < self.start and l > self.joint]
        self.head = EmpiricalCurve([c for c, _ in keep] + [self.start], [l for _, l in keep] + [self.joint],
                                   initial_loss)
        self.c, self.fit_info, self.params = law.c, law.fit_info, law.params

    def predict(self, C):
        C = np.asarray(C, float)
        return np.where(C < self.start, self.head.predict(C), self.law.predict(C))

    def inverse(self, L):
        L = np.asarray(L, float)
        return np.where(L > self.joint, self.head.inverse(L), self.law.inverse(L))

    def d_inverse(self, L):
        L = np.asarray(L, float)
        return np.where(L > self.joint, self.head.d_inverse(L), self.law.d_inverse(L))


def _evals(record: dict, keep):
    rows = sorted((r for r in record["evals"] if keep(r["step"])), key=lambda r: r["compute"])
    return np.array([r["compute"] for r in rows], float), np.array([r["loss"] for r in rows], float)


def law_points(record: dict, warmup_steps: int):
    """(compute, loss) of a run's evals after the transient (``TRANSIENT_RULE``)."""
    return _evals(record, lambda step: step > warmup_steps)


def transient_points(record: dict, warmup_steps: int):
    """(compute, loss) of a run's evals inside the transient, the step-0 anchor left out."""
    return _evals(record, lambda step: 0 < step <= warmup_steps)


def fit_laws(records: dict, warmup_steps: int):
    """{shape: law for the planner} and {shape: report entry} from each shape's run record
    (``initial`` and ``evals``). A report entry: params, rms_log_residual, at_bound, used
    ("anchored power law" or "measured curve (fallback)"), why it fell back, and
    ``transient_points``: the evals the planner follows before the law (``JoinedCurve``)."""
    laws, report = {}, {}
    for shape, record in records.items():
        L0 = record["initial"]["loss"]
        compute, loss = law_points(record, warmup_steps)
        early_compute, early_loss = transient_points(record, warmup_steps)
        entry = {"initial_loss": L0, "n_points": int(len(loss)), "transient_rule": TRANSIENT_RULE,
                 "form": "E(C) = c + (L0 - c) (1 + C/d)^-b", "params": None, "rms_log_residual": None,
                 "at_bound": None, "used": None, "problem": None, "transient_points": int(len(early_loss))}
        law = None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fitted = fit_shape_law(compute, loss, initial_loss=L0)
            info = fitted.fit_info
            entry.update(params={k: float(v) for k, v in fitted.params.items()},
                         rms_log_residual=info["rms_log_residual"], at_bound=bool(info["at_bound"]),
                         bound_params=info["at_bound"])
            if not info.get("converged", True):
                entry["problem"] = f"fit did not converge ({info.get('message')})"
            elif info["at_bound"]:
                entry["problem"] = f"parameter(s) {', '.join(info['at_bound'])} at the bound of the fit"
            elif caught:
                entry["problem"] = f"fit warned: {caught[0].message}"
            else:
                law = fitted
                entry["used"] = "anchored power law"
                if len(early_loss):
                    law = JoinedCurve(fitted, early_compute, early_loss, compute.min(), L0)
        except (ValueError, TypeError) as error:
            entry["problem"] = str(error)
        if law is None:
            try:
                law = EmpiricalCurve(np.concatenate([early_compute, compute]), np.concatenate([early_loss, loss]), L0)
                entry["used"] = "measured curve (fallback)"
            except ValueError as error:
                entry["problem"] = f"{entry['problem']}; no fallback: {error}"
        if law is not None:
            laws[shape] = law
        report[shape] = entry
    return laws, report

