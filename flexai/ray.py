"""Ray fractional GPUs that are enforced: ``@flexai.ray.remote(gpu_memory="8GiB",
gpu_compute=30)`` and ``flexai.ray.options(...)`` for Ray tasks and actors.

Ray only books a GPU fraction; nothing stops a task from taking the whole card. Here a task or
actor gets (1) a GPU fraction (``num_gpus``) of at least its compute share and of its memory
over the smallest card that holds it, so Ray never packs more onto a card than it holds, (2)
flexai's memory resource (``flexai_gpu_memory_mib``, declared by ``flexai pool up|join``) so
Ray does not overbook a node, and (3) a ``runtime_env`` whose env_vars preload the installed
libflexai.so with the slice's ``FLEXAI_*`` settings, so inside the worker the quota holds:
allocating past it gets the driver's out-of-memory error. Each worker process is a slice of
its own.

    @flexai.ray.remote(gpu_memory="8GiB", gpu_compute=30, priority="high")
    def train(...): ...

    Trainer = flexai.ray.remote(gpu_memory="4GiB")(TrainerClass)
    ray.remote(f).options(**flexai.ray.options(gpu_memory="2GiB", gpu_compute=10))

The values are checked by libflexai's own parser (flexai.spec) and the variable names come from
its table: this module must never restate them, never start Ray and never load libflexai.so
into the calling process through LD_PRELOAD.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ._ffi import BadValueError, parse_size

__all__ = ["options", "remote"]

_MIB = 2**20


def _slice_variables(gpu_memory: int | str | None, gpu_compute: int | None,
                     priority: str | None, burst: int | None) -> tuple[dict[str, str], int, int]:
    """The slice's ``FLEXAI_*`` variables (checked by the library), memory bytes, compute."""
    from .pool.placement import PRIORITIES
    from .spec import env_of, parse_config, variable

    if gpu_memory is None and gpu_compute is None:
        raise BadValueError("flexai.ray: give gpu_memory and/or gpu_compute (e.g. "
                            "flexai.ray.remote(gpu_memory='8GiB', gpu_compute=30))")
    if priority is not None and priority not in PRIORITIES:
        raise BadValueError(f"flexai.ray: priority {priority!r} is not one of "
                            f"{', '.join(PRIORITIES)} (e.g. priority='high')")
    lib_priority = priority
    if priority is not None and priority not in variable("priority").choices:
        lib_priority = variable("priority").choices[0]  # best-effort runs at the lowest
    memory = gpu_memory if isinstance(gpu_memory, int) or gpu_memory is None \
        else parse_size(str(gpu_memory))
    values = env_of(gpu_memory=memory, gpu_compute=gpu_compute, priority=lib_priority,
                    gpu_compute_burst=burst)
    parse_config(values)  # the library judges every value (BadValueError with an example)
    return values, int(memory or 0), int(gpu_compute or 0)


def _card_sizes(model: str | None) -> list[int] | None:
    """The GPU memory sizes (bytes) of the live nodes that declared flexai's resources (of
    ``model`` when given); None when Ray is not connected or no node did."""
    import ray

    from .pool.member import LABEL_MODEL, RESOURCE_MEMORY, model_key

    if not ray.is_initialized():
        return None
    sizes = []
    for n in ray.nodes():
        res, labels = n.get("Resources") or {}, n.get("Labels") or {}
        if not n.get("Alive") or not res.get("GPU") or RESOURCE_MEMORY not in res:
            continue
        if model is not None and labels.get(LABEL_MODEL) != model_key(model):
            continue
        sizes.append(int(res[RESOURCE_MEMORY] / res["GPU"]) * _MIB)
    return sorted(set(sizes)) or None


def _card_memory(memory: int, model: str | None) -> int | None:
    """The smallest card that holds ``memory`` bytes (None when unknown): the fraction of it
    is the most a task may take of any card it can land on.

    Raises
    ------
    BadValueError
        When Ray knows the cards and none is that large.
    """
    sizes = _card_sizes(model)
    if not sizes:
        return None
    fitting = [s for s in sizes if s >= memory]
    if not fitting:
        raise BadValueError(f"flexai.ray: gpu_memory {memory / 2**30:.3g}GiB is more than any "
                            f"GPU has (largest {sizes[-1] / 2**30:.3g}GiB; e.g. gpu_memory="
                            f"'{max(1, sizes[-1] // 2**31)}GiB')")
    return fitting[0]


def options(gpu_memory: int | str | None = None, gpu_compute: int | None = None,
            priority: str | None = None, gpu_model: str | None = None,
            burst: int | None = None, **ray_options: Any) -> dict[str, Any]:
    """Ray options for a task or actor running in a flexai slice.

    Parameters
    ----------
    gpu_memory : int or str
        Memory quota (bytes, or a size such as ``"8GiB"``).
    gpu_compute : int
        Compute share in percent of one GPU (1..100).
    priority : str
        ``high``, ``normal``, ``low`` or ``best-effort``.
    gpu_model : str
        Only GPUs of this model (as ``flexai pool status`` shows it).
    burst : int
        Compute the slice may use above its share when the GPU is idle.
    **ray_options
        Any other Ray option (``num_cpus``, ``max_retries``, a ``runtime_env`` whose env_vars
        are merged under flexai's, ...).

    Returns
    -------
    dict
        Keyword arguments for ``ray.remote(...)`` or ``.options(...)``: ``num_gpus``,
        ``resources``, ``runtime_env`` and ``ray_options``.

    Raises
    ------
    BadValueError
        A malformed size, share or priority (the message shows a valid one).
    """
    from .node.launch import slice_env
    from .pool.member import RESOURCE_MEMORY, RESOURCE_MODEL, model_key

    values, memory, compute = _slice_variables(gpu_memory, gpu_compute, priority, burst)
    card = _card_memory(memory, gpu_model)
    if card is None and not compute:
        fraction = 1.0  # memory alone, cards unknown (Ray not connected): a whole GPU is safe
    else:
        fraction = max(compute / 100, memory / card if card else 0.0)
    num_gpus = min(1.0, math.ceil(max(fraction, 0.0001) * 10000) / 10000)
    out = dict(ray_options)
    resources = dict(out.pop("resources", None) or {})
    if memory:
        resources[RESOURCE_MEMORY] = float(math.ceil(memory / _MIB))
    if gpu_model is not None:
        resources[RESOURCE_MODEL + model_key(gpu_model)] = num_gpus
    runtime_env = dict(out.pop("runtime_env", None) or {})
    user_vars = dict(runtime_env.get("env_vars") or {})
    # ${LD_PRELOAD} is expanded by Ray in the worker: libflexai.so goes first, the node's own
    # preloads (if any) stay after it.
    base = {**user_vars, "LD_PRELOAD": user_vars.get("LD_PRELOAD", "${LD_PRELOAD}")}
    runtime_env["env_vars"] = slice_env(base, values)
    out.update(num_gpus=num_gpus, resources=resources, runtime_env=runtime_env)
    return out


class _Remote:
    """A Ray remote function or actor class whose options are resolved when first used (the
    GPU fraction needs the cluster's card sizes, known only once Ray is connected)."""

    def __init__(self, target: Any, flexai_options: dict[str, Any],
                 ray_options: dict[str, Any]) -> None:
        self._target = target
        self._flexai = flexai_options
        self._ray = ray_options
        self._resolved: Any = None
        self.__doc__ = getattr(target, "__doc__", None)
        self.__name__ = getattr(target, "__name__", type(self).__name__)

    def _get(self) -> Any:
        import ray

        if self._resolved is None or (self._resolved[0] is None and ray.is_initialized()):
            opts = options(**self._flexai, **self._ray)
            known = _card_sizes(self._flexai.get("gpu_model"))
            self._resolved = (known, ray.remote(**opts)(self._target))
        return self._resolved[1]

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task (or create the actor) in its slice."""
        return self._get().remote(*args, **kwargs)

    def options(self, **kwargs: Any) -> Any:
        """Ray's ``.options(...)`` on the flexai-configured function or class."""
        return self._get().options(**kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{self.__name__} is a Ray remote function or actor class: call "
                        f"{self.__name__}.remote(...)")


def remote(*args: Any, gpu_memory: int | str | None = None, gpu_compute: int | None = None,
           priority: str | None = None, gpu_model: str | None = None, burst: int | None = None,
           **ray_options: Any) -> Callable[[Any], _Remote] | _Remote:
    """Like ``ray.remote``, for a function or class that runs in a flexai slice (see
    :func:`options` for the parameters). The values are checked at once; the GPU fraction is
    settled at the first ``.remote()`` after Ray is connected (before that, the compute share
    alone decides it, and a memory-only request books a whole GPU).

    Examples
    --------
    >>> @flexai.ray.remote(gpu_memory="8GiB", gpu_compute=30)     # doctest: +SKIP
    ... def step(batch): ...
    >>> ray.get(step.remote(batch))                               # doctest: +SKIP
    """
    flexai_options = {"gpu_memory": gpu_memory, "gpu_compute": gpu_compute,
                      "priority": priority, "gpu_model": gpu_model, "burst": burst}
    _slice_variables(gpu_memory, gpu_compute, priority, burst)  # bad values fail here

    def wrap(target: Any) -> _Remote:
        return _Remote(target, flexai_options, ray_options)

    if len(args) == 1 and not ray_options and callable(args[0]):
        return wrap(args[0])
    if args:
        raise TypeError("flexai.ray.remote takes keyword arguments, e.g. "
                        "@flexai.ray.remote(gpu_memory='8GiB', gpu_compute=30)")
    return wrap
