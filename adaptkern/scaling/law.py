"""What every fitted law shares: named parameters, a readable repr, JSON, and bootstrap
uncertainty (parameter intervals, prediction intervals) once ``bootstrap.attach`` ran."""

import json

import numpy as np

from ._checks import check_confidence

_LAWS = {}


class ConvergenceWarning(UserWarning):
    """The optimizer stopped without reporting convergence; the message is the optimizer's."""


class ScalingLaw:
    """Base class of the fitted laws.

    Subclasses set ``name`` (the JSON / CLI key), ``formula`` (for humans) and
    ``param_names``, and implement ``predict``. Attributes after a fit:

    * one float attribute per parameter (``law.E``, ``law.alpha`` ...); ``law.params``
      gives them as a dict;
    * ``fit_info``: number of points, objective value, whether the optimizer converged
      and its message, number of starts, and the bootstrap settings;
    * ``intervals``: ``{parameter: (low, high)}`` percentile bootstrap intervals at level
      ``confidence``, empty without a bootstrap; ``boot_params`` the (n_ok, n_params)
      array of bootstrap refits behind them.
    """

    name = ""
    formula = ""
    param_names = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            _LAWS[cls.name] = cls

    def __init__(self, **params):
        missing = [p for p in self.param_names if p not in params]
        unknown = [p for p in params if p not in self.param_names]
        if missing or unknown:
            raise TypeError(f"{type(self).__name__}: expected parameters {', '.join(self.param_names)}; "
                            f"missing {missing}, unknown {unknown}")
        for key in self.param_names:
            setattr(self, key, float(params[key]))
        self.fit_info = {}
        self.intervals = {}
        self.confidence = None
        self.boot_params = None

    @property
    def params(self) -> dict:
        return {key: getattr(self, key) for key in self.param_names}

    def predict(self, *inputs):
        raise NotImplementedError

    # -- uncertainty -------------------------------------------------------------------

    def replicas(self) -> list:
        """The bootstrap refits as laws of this type (empty without a bootstrap)."""
        if self.boot_params is None:
            return []
        return [type(self)(**dict(zip(self.param_names, row))) for row in self.boot_params]

    def interval(self, fn, confidence=None):
        """Percentile bootstrap interval of any quantity ``fn(law)`` (a number or array
        computed from a law, e.g. ``lambda law: law.compute_optimal(1e21)[0]``).
        ``confidence`` defaults to the level the bootstrap was run at. Returns
        ``(low, high)`` with the shape of ``fn``'s result."""
        if self.boot_params is None or len(self.boot_params) == 0:
            raise ValueError(f"{type(self).__name__}: no bootstrap replicas; fit with n_boot > 0 first")
        level = self.confidence if confidence is None else check_confidence("interval", confidence)
        values = np.stack([np.asarray(fn(law), dtype=np.float64) for law in self.replicas()])
        low, high = percentile_interval(values, level)
        return output(low), output(high)

    def predict_interval(self, *inputs, confidence=None):
        """Bootstrap interval ``(low, high)`` of ``predict(*inputs)`` (same broadcasting)."""
        return self.interval(lambda law: law.predict(*inputs), confidence)

    # -- serialization -----------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "law": self.name,
            "formula": self.formula,
            "params": self.params,
            "intervals": {k: [float(lo), float(hi)] for k, (lo, hi) in self.intervals.items()},
            "confidence": self.confidence,
            "fit_info": _jsonable(self.fit_info),
        }

    def to_json(self, path=None, **kwargs) -> str:
        """The law as JSON (``to_dict``); also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=kwargs.pop("indent", 2), **kwargs)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    @staticmethod
    def from_dict(data: dict) -> "ScalingLaw":
        """Rebuild a law (parameters, intervals, fit info) from ``to_dict``'s output; the
        bootstrap replicas are not stored, so ``interval`` needs a new bootstrap."""
        if not isinstance(data, dict) or data.get("law") not in _LAWS:
            raise ValueError(f"from_dict: data['law'] must be one of {sorted(_LAWS)}")
        law = _LAWS[data["law"]](**data["params"])
        law.intervals = {k: tuple(v) for k, v in data.get("intervals", {}).items()}
        law.confidence = data.get("confidence")
        law.fit_info = dict(data.get("fit_info", {}))
        return law

    @staticmethod
    def from_json(text: str) -> "ScalingLaw":
        return ScalingLaw.from_dict(json.loads(text))

    def __repr__(self):
        parts = []
        for key, value in self.params.items():
            text = f"{key}={value:.4g}"
            if key in self.intervals:
                lo, hi = self.intervals[key]
                text += f" [{lo:.4g}, {hi:.4g}]"
            parts.append(text)
        level = f", {self.confidence:.0%} CI" if self.intervals else ""
        return f"{type(self).__name__}({', '.join(parts)}{level})"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def percentile_interval(values, confidence):
    """Central percentile interval (low, high) at level ``confidence`` over axis 0."""
    tail = 50 * (1 - confidence)
    return np.percentile(values, [tail, 100 - tail], axis=0)


def as_float_array(value):
    """A prediction input as float64 (scalars stay 0-d, so results come back as floats)."""
    return np.asarray(value, dtype=np.float64)


def output(value):
    """Floats for scalar inputs, arrays otherwise."""
    return float(value) if np.ndim(value) == 0 else value
