"""Optimizers over the flat parameter buffer, with ``torch.optim`` semantics.

Each optimizer keeps its state (moments, step count) as flat device arrays the size of the parameter
buffer, so one step is a few whole-buffer operations. The reference maths below runs on any
Array-API namespace; when the backend offers a fused kernel (Numba on CPU, one CUDA kernel on GPU)
it is used instead and tested against the reference.

References: Kingma & Ba, "Adam", ICLR 2015; Loshchilov & Hutter, "Decoupled Weight Decay
Regularization" (AdamW), ICLR 2019; Sutskever et al. 2013 (Nesterov momentum as in torch.optim.SGD).
"""
from __future__ import annotations

import abc
import copy
import math
import weakref

from gpunet import checks
from gpunet.backend import namespace


class OptimizerState:
    """Everything an optimizer's updates depend on besides its hyper-parameters, as one value (optax's
    ``ScaleByAdamState``): the number of steps taken and the named state buffers (moments, momentum), each
    shaped like the flat parameter buffer. Snapshots, model files and CUDA-graph replay read and write it
    whole. The buffers are updated in place (the fast paths depend on it)."""

    __slots__ = ("step", "buffers")

    def __init__(self, step=0, buffers=None):
        self.step = int(step)
        self.buffers = {} if buffers is None else dict(buffers)

    @property
    def size(self):
        """The length of the parameter buffer the state belongs to (None before the first bind)."""
        return next(iter(self.buffers.values())).shape[0] if self.buffers else None

    def __repr__(self):
        return f"OptimizerState(step={self.step}, buffers={sorted(self.buffers)})"


class Optimizer(abc.ABC):
    """Base class: ``bind`` allocates state for a parameter buffer, ``step`` updates it in place."""

    name = "optimizer"
    state_names: tuple[str, ...] = ()

    def __init__(self, lr):
        self.lr = checks.check_hyper("lr", lr, low=0.0, low_open=True)
        #: the step count and state buffers (:class:`OptimizerState`)
        self.opt_state = OptimizerState()
        self._owner = None  # a weak reference to the parameter buffer the state belongs to (None: never bound)
        self._bound_size = None  # the length of the parameter buffer the state was made for
        self._copied_from = None  # a weak reference to the instance this one was copied from (for_params)

    # the two halves of opt_state under their torch.optim-style names
    @property
    def state(self):
        return self.opt_state.buffers

    @state.setter
    def state(self, buffers):
        self.opt_state.buffers = dict(buffers)

    @property
    def step_count(self):
        return self.opt_state.step

    @step_count.setter
    def step_count(self, value):
        self.opt_state.step = int(value)

    def keeps_state(self, params):
        """Whether :meth:`bind` of ``params`` keeps this optimizer's state: the state was made for ``params``
        (or, read from a file and not bound since, for a buffer of their length) and has every buffer. State
        whose parameters are gone (their model was garbage-collected) is never kept for new ones."""
        if self._owner is None:
            mine = self._bound_size == params.shape[0]
        else:
            mine = self._owner() is params
        return mine and self._bound_size == params.shape[0] and all(k in self.state for k in self.state_names)

    def belongs_to_other(self, params):
        """Whether this optimizer's state belongs to another live parameter buffer than ``params``."""
        owner = self._owner() if self._owner is not None else None
        return owner is not None and owner is not params

    def for_params(self, params, current=None):
        """The optimizer that trains ``params`` when this instance is passed to ``fit``.

        An optimizer belongs to the model it first trains (as in PyTorch, where it is built on one model's
        parameters, and Keras, where it is built for one set of variables). Passed to another model while
        that one lives, it is a template: the other model gets its own copy (same class and
        hyper-parameters, fresh state), once: when ``current``, that model's optimizer, is already this
        instance's copy, its state goes on (with the instance's hyper-parameters as they are now). The first
        model keeps the instance and its state untouched. Nothing is changed here: ``fit`` adopts the result."""
        if not self.belongs_to_other(params):
            return self
        twin = copy.copy(self)
        twin.opt_state, twin._owner, twin._bound_size = OptimizerState(), None, None
        origin = getattr(current, "_copied_from", None)
        if origin is not None and origin() is self and not current.belongs_to_other(params):
            twin.opt_state, twin._owner, twin._bound_size = current.opt_state, current._owner, current._bound_size
        twin._copied_from = weakref.ref(self)
        return twin

    def bind(self, params):
        """Allocate zeroed state like ``params`` unless this optimizer's state already belongs to them
        (:meth:`keeps_state`). ``fit`` never binds an instance whose state belongs to another live model
        (:meth:`for_params` gives that model a copy)."""
        if self.keeps_state(params):
            self._owner = weakref.ref(params)
            return
        self._owner = weakref.ref(params)
        xp = namespace(params)
        self.opt_state = OptimizerState(0, {k: xp.zeros_like(params) for k in self.state_names})
        self._bound_size = params.shape[0]

    @abc.abstractmethod
    def step(self, params, grads, ops=None):
        """Update the flat ``params`` in place from the flat ``grads`` (same shape)."""

    @abc.abstractmethod
    def get_config(self) -> dict:
        """Constructor arguments, JSON-serialisable."""

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD``:

    ``g += wd * p``; with momentum ``buf = g`` on the first step, then
    ``buf = momentum * buf + (1 - dampening) * g``; ``g = g + momentum * buf`` (Nesterov) or ``buf``;
    ``p -= lr * g``.
    """

    name = "sgd"

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0):
        super().__init__(lr)
        self.momentum = checks.check_hyper("momentum", momentum, high=1.0)
        self.dampening = checks.check_hyper("dampening", dampening, high=1.0 + 1e-12)
        self.weight_decay = checks.check_hyper("weight_decay", weight_decay)
        self.nesterov = checks.check_bool("nesterov", nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        self.state_names = ("momentum_buffer",) if self.momentum else ()

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "dampening": self.dampening}

    def step(self, params, grads, ops=None):
        first = self.step_count == 0
        self.step_count += 1
        buf = self.state.get("momentum_buffer")
        if ops is not None and ops.sgd is not None:
            ops.sgd(params, grads, buf, lr=self.lr, momentum=self.momentum, dampening=self.dampening,
                    weight_decay=self.weight_decay, nesterov=self.nesterov, first=first)
            return
        g = grads + self.weight_decay * params if self.weight_decay else grads
        if self.momentum:
            if first:
                buf[...] = g
            else:
                buf *= self.momentum
                buf += (1.0 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        params -= self.lr * g


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (coupled L2 ``weight_decay``, optional AMSGrad):

    ``m += (1 - b1)(g - m)``; ``v = b2 v + (1 - b2) g^2``;
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    """

    name = "adam"
    decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(lr)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (checks.check_hyper("beta1", b1, high=1.0), checks.check_hyper("beta2", b2, high=1.0))
        self.eps = checks.check_hyper("eps", eps)
        self.weight_decay = checks.check_hyper("weight_decay", weight_decay)
        self.amsgrad = checks.check_bool("amsgrad", amsgrad)
        self.state_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def get_config(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}

    def step(self, params, grads, ops=None):
        self.step_count += 1
        t = self.step_count
        beta1, beta2 = self.betas
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        vmax = self.state.get("max_exp_avg_sq")
        step_size = self.lr / (1.0 - beta1 ** t)  # lr over the first moment's bias correction
        bc2_sqrt = math.sqrt(1.0 - beta2 ** t)  # square root of the second moment's bias correction
        if ops is not None and ops.adam is not None:
            ops.adam(params, grads, m, v, vmax, lr=self.lr, beta1=beta1, beta2=beta2, eps=self.eps,
                     weight_decay=self.weight_decay, step_size=step_size, bc2_sqrt=bc2_sqrt, amsgrad=self.amsgrad,
                     decoupled=self.decoupled)
            return
        xp = namespace(params)
        g = grads
        if self.decoupled:
            params *= 1.0 - self.lr * self.weight_decay
        elif self.weight_decay:
            g = grads + self.weight_decay * params
        m += (1.0 - beta1) * (g - m)
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        if self.amsgrad:
            vmax[...] = xp.maximum(vmax, v)
            v = vmax
        denom = xp.sqrt(v) / bc2_sqrt + self.eps
        params -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: ``p *= 1 - lr * wd`` before the
    Adam step (default ``weight_decay=0.01``)."""

    name = "adamw"
    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=False):
        super().__init__(lr, betas, eps, weight_decay, amsgrad)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get(optimizer, **overrides) -> Optimizer:
    """An :class:`Optimizer` from an instance or a name (``"sgd"``, ``"adam"``, ``"adamw"``)."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    key = optimizer.strip().lower() if isinstance(optimizer, str) else None
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)} "
                         "or pass an instance such as gpunet.Adam(lr=1e-3)")
    return OPTIMIZERS[key](**overrides)


def from_config(name, config, state=None, step_count=0, backend=None):
    """Rebuild an optimizer saved by :func:`gpunet.saving.save` (host state arrays moved to ``backend``)."""
    opt = get(name, **{k: tuple(v) if k == "betas" else v for k, v in config.items()})
    if state:
        opt.opt_state = OptimizerState(step_count, {k: backend.to_device(v) for k, v in state.items()})
        opt._bound_size = opt.opt_state.size
    return opt
